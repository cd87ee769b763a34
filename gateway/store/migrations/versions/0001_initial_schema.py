"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('office_code', sa.String(length=32), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=True),
    sa.Column('device_serial', sa.String(length=64), nullable=True),
    sa.Column('problem', sa.String(length=32), nullable=False),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('details', sa.Text(), nullable=False),
    sa.Column('muted', sa.Boolean(), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alerts_delivered_at'), ['delivered_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_alerts_device_id_created_at'), ['device_id', 'created_at'], unique=False)

    op.create_table('device_users',
    sa.Column('device_serial', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('uid', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('privilege', sa.Integer(), nullable=False),
    sa.Column('card', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('device_serial', 'user_id', name=op.f('pk_device_users'))
    )
    op.create_table('devices',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('office_code', sa.String(length=32), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('location', sa.String(length=200), nullable=False),
    sa.Column('address', sa.String(length=255), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('transport', sa.String(length=8), nullable=False),
    sa.Column('serial', sa.String(length=64), nullable=True),
    sa.Column('firmware', sa.String(length=100), nullable=True),
    sa.Column('platform', sa.String(length=100), nullable=True),
    sa.Column('device_name', sa.String(length=100), nullable=True),
    sa.Column('mac', sa.String(length=32), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_ok_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_full_read_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_record_count', sa.Integer(), nullable=True),
    sa.Column('last_user_count', sa.Integer(), nullable=True),
    sa.Column('records_cap', sa.Integer(), nullable=True),
    sa.Column('users_cap', sa.Integer(), nullable=True),
    sa.Column('last_punch_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_new_punch_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('clock_skew_s', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_devices')),
    sa.UniqueConstraint('office_code', 'device_id', name=op.f('uq_devices_office_code_device_id'))
    )
    op.create_table('kv',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_kv'))
    )
    op.create_table('punches',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('office_code', sa.String(length=32), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('device_serial', sa.String(length=64), nullable=False),
    sa.Column('device_user_id', sa.String(length=64), nullable=False),
    sa.Column('device_time', sa.String(length=19), nullable=False),
    sa.Column('local_time', sa.DateTime(), nullable=True),
    sa.Column('utc_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('state', sa.Integer(), nullable=False),
    sa.Column('state_name', sa.String(length=16), nullable=False),
    sa.Column('verify', sa.Integer(), nullable=False),
    sa.Column('verify_name', sa.String(length=24), nullable=False),
    sa.Column('uid', sa.Integer(), nullable=False),
    sa.Column('workcode', sa.Integer(), nullable=False),
    sa.Column('raw_time', sa.BigInteger(), nullable=False),
    sa.Column('employee_id', sa.String(length=64), nullable=True),
    sa.Column('flags', sa.String(length=200), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_punches')),
    sa.UniqueConstraint('device_serial', 'device_user_id', 'device_time', name='uq_punches_key')
    )
    with op.batch_alter_table('punches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_punches_device_id_utc_time'), ['device_id', 'utc_time'], unique=False)
        batch_op.create_index(batch_op.f('ix_punches_employee_id_utc_time'), ['employee_id', 'utc_time'], unique=False)
        batch_op.create_index(batch_op.f('ix_punches_office_code_utc_time'), ['office_code', 'utc_time'], unique=False)
        batch_op.create_index(batch_op.f('ix_punches_utc_time'), ['utc_time'], unique=False)

    op.create_table('device_health',
    sa.Column('device_pk', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_since', sa.DateTime(timezone=True), nullable=False),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_ok_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_failure_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error_kind', sa.String(length=32), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('problems', sa.Text(), nullable=False),
    sa.Column('last_new_punch_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_probe_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('muted_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('mute_reason', sa.String(length=200), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.pk'], name=op.f('fk_device_health_device_pk_devices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('device_pk', name=op.f('pk_device_health'))
    )
    op.create_table('device_identities',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('device_pk', sa.Integer(), nullable=False),
    sa.Column('serial', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=255), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('firmware', sa.String(length=100), nullable=True),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.pk'], name=op.f('fk_device_identities_device_pk_devices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_identities')),
    sa.UniqueConstraint('device_pk', 'serial', 'address', 'port', name=op.f('uq_device_identities_device_pk_serial_address_port'))
    )
    op.create_table('outbox',
    sa.Column('punch_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['punch_id'], ['punches.id'], name=op.f('fk_outbox_punch_id_punches'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('punch_id', name=op.f('pk_outbox'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_state_next_attempt_at'), ['state', 'next_attempt_at'], unique=False)

    op.create_table('poll_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('device_pk', sa.Integer(), nullable=False),
    sa.Column('serial', sa.String(length=64), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('records_on_device', sa.Integer(), nullable=True),
    sa.Column('records_read', sa.Integer(), nullable=False),
    sa.Column('new_records', sa.Integer(), nullable=False),
    sa.Column('bytes_read', sa.BigInteger(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.pk'], name=op.f('fk_poll_runs_device_pk_devices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_poll_runs'))
    )
    with op.batch_alter_table('poll_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_poll_runs_device_pk_started_at'), ['device_pk', 'started_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('poll_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_poll_runs_device_pk_started_at'))

    op.drop_table('poll_runs')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_state_next_attempt_at'))

    op.drop_table('outbox')
    op.drop_table('device_identities')
    op.drop_table('device_health')
    with op.batch_alter_table('punches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_punches_utc_time'))
        batch_op.drop_index(batch_op.f('ix_punches_office_code_utc_time'))
        batch_op.drop_index(batch_op.f('ix_punches_employee_id_utc_time'))
        batch_op.drop_index(batch_op.f('ix_punches_device_id_utc_time'))

    op.drop_table('punches')
    op.drop_table('kv')
    op.drop_table('devices')
    op.drop_table('device_users')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alerts_device_id_created_at'))
        batch_op.drop_index(batch_op.f('ix_alerts_delivered_at'))

    op.drop_table('alerts')
