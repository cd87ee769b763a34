"""central mode: office name and silent-gateway alert state in the gateway registry

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('gateways', schema=None) as batch_op:
        batch_op.add_column(sa.Column('office_name', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('silent_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('silent_notified_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('gateways', schema=None) as batch_op:
        batch_op.drop_column('silent_notified_at')
        batch_op.drop_column('silent_since')
        batch_op.drop_column('office_name')
