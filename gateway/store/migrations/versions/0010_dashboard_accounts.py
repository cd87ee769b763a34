"""dashboard: login accounts and sessions of the regency dashboard, and the terminals' history at the central

Revision ID: 0010_dashboard_accounts
Revises: 0009_usage
Create Date: 2026-12-01

The central's dashboard (gateway.central.dashboard) needs read-only accounts for BKD staff and office-scoped
accounts for each SKPD, their sessions, and a history of each terminal (state changes, problems, alerts) recorded
as office gateways forward health reports: the central kept only the latest state until now.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010_dashboard_accounts'
down_revision = '0009_usage'
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'dashboard_accounts',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('password_hash', sa.String(length=300), nullable=False),
        sa.Column('office_code', sa.String(length=32), nullable=True),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dashboard_accounts')),
        sa.UniqueConstraint('username', name=op.f('uq_dashboard_accounts_username')),
    )
    op.create_table(
        'dashboard_sessions',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('account_id', sa.Integer(), nullable=False),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['dashboard_accounts.id'],
                                name=op.f('fk_dashboard_sessions_account_id_dashboard_accounts'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_dashboard_sessions')),
    )
    op.create_index(op.f('ix_dashboard_sessions_account_id'), 'dashboard_sessions', ['account_id'], unique=False)
    op.create_index(op.f('ix_dashboard_sessions_expires_at'), 'dashboard_sessions', ['expires_at'], unique=False)
    op.create_table(
        'device_events',
        sa.Column('id', big_id, autoincrement=True, nullable=False),
        sa.Column('office_code', sa.String(length=32), nullable=False),
        sa.Column('device_id', sa.String(length=64), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('severity', sa.String(length=16), nullable=True),
        sa.Column('detail', sa.String(length=500), nullable=False),
        sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_device_events')),
    )
    op.create_index(op.f('ix_device_events_office_code_device_id_at'), 'device_events',
                    ['office_code', 'device_id', 'at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_device_events_office_code_device_id_at'), table_name='device_events')
    op.drop_table('device_events')
    op.drop_index(op.f('ix_dashboard_sessions_expires_at'), table_name='dashboard_sessions')
    op.drop_index(op.f('ix_dashboard_sessions_account_id'), table_name='dashboard_sessions')
    op.drop_table('dashboard_sessions')
    op.drop_table('dashboard_accounts')
