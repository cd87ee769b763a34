"""quarantine: input a terminal or an export sent that could not be read as a punch, kept with its raw text

Revision ID: 0006_quarantine
Revises: 0005_office_bindings
Create Date: 2026-12-01

Serial-line clocks, USB-stick exports and SOAP answers can carry rows no format reads. They are never dropped
silently: each is kept here with the raw text, the reason and where it came from, and counted per device.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006_quarantine'
down_revision = '0005_office_bindings'
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'quarantine',
        sa.Column('id', big_id, autoincrement=True, nullable=False),
        sa.Column('device_id', sa.String(length=64), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('raw', sa.Text(), nullable=False),
        sa.Column('reason', sa.String(length=500), nullable=False),
        sa.Column('origin', sa.String(length=500), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_quarantine')),
    )
    op.create_index(op.f('ix_quarantine_device_id_received_at'), 'quarantine', ['device_id', 'received_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_quarantine_device_id_received_at'), table_name='quarantine')
    op.drop_table('quarantine')
