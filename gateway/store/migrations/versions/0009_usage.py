"""usage: per-office headcount and the regency's holidays (usage figures and the monthly BKD report)

Revision ID: 0009_usage
Revises: 0008_enrolment
Create Date: 2026-12-01

The attendance rate compares how many employees punched on a working day with the office's employee count
(office_headcount, uploaded by BKD as CSV); holidays take days out of the Monday-Friday working week.
See gateway/store/usage.py and docs/bkd-report.md.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009_usage'
down_revision = '0008_enrolment'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'office_headcount',
        sa.Column('office_code', sa.String(length=32), nullable=False),
        sa.Column('as_of', sa.Date(), nullable=False),
        sa.Column('employees', sa.Integer(), nullable=False),
        sa.Column('source', sa.String(length=300), nullable=False),
        sa.Column('imported_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('office_code', 'as_of', name=op.f('pk_office_headcount')),
    )
    op.create_table(
        'holidays',
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('day', name=op.f('pk_holidays')),
    )


def downgrade() -> None:
    op.drop_table('holidays')
    op.drop_table('office_headcount')
