"""enrol_push: what push terminals uploaded of their users and templates (sealed), their enrolment mirror

Revision ID: 0014_enrol_push
Revises: 0010_dashboard_accounts
Create Date: 2026-12-02

A push (ADMS) terminal uploads its users (USER lines) and fingerprint templates (FP / BIODATA lines) itself;
the receiver keeps the latest of each per terminal here, templates and passwords sealed by gateway/enrol/crypto.py,
and a backup of the terminal is a snapshot of these rows (gateway/enrol/push.py). finger -1 is the user record.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014_enrol_push'
down_revision = '0010_dashboard_accounts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'enrol_push',
        sa.Column('serial', sa.String(length=64), nullable=False),
        sa.Column('pin', sa.String(length=64), nullable=False),
        sa.Column('finger', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('privilege', sa.Integer(), nullable=False),
        sa.Column('card', sa.BigInteger(), nullable=False),
        sa.Column('group_id', sa.String(length=16), nullable=False),
        sa.Column('valid', sa.Integer(), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('key_id', sa.String(length=16), nullable=False),
        sa.Column('blob', sa.LargeBinary(), nullable=True),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('serial', 'pin', 'finger', name=op.f('pk_enrol_push')),
    )


def downgrade() -> None:
    op.drop_table('enrol_push')
