"""central office isolation: punch identity includes the office; device serials bound to one office

Revision ID: 0005_office_bindings
Revises: 0004_punch_occurrence
Create Date: 2026-12-01

uq_punches_key becomes (office_code, device_serial, device_user_id, device_time, occurrence): at the central one
office's punch can no longer be answered "duplicate" because another office sent the same key first. An
office gateway writes its own site code on every punch, so its dedup is unchanged. device_bindings binds
each serial to the office that first reported it (existing punches bind their serial to the office with
the most punches for it; ties go to the earliest punch).

SQLite cannot alter a table constraint, so batch mode copies ``punches``. Dropping the old table would
cascade-delete ``outbox`` rows (foreign_keys is on for the migration's connection and cannot be switched off
inside its transaction), so the outbox is set aside in a temporary table and put back unchanged
(punch ids are copied as they are).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005_office_bindings'
down_revision = '0004_punch_occurrence'
branch_labels = None
depends_on = None

_NEW_KEY = ['office_code', 'device_serial', 'device_user_id', 'device_time', 'occurrence']
_OLD_KEY = ['device_serial', 'device_user_id', 'device_time', 'occurrence']


def _rekey(columns: list[str]) -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'
    if sqlite:
        op.execute('CREATE TEMP TABLE _fpgw_outbox_0005 AS SELECT * FROM outbox')
    with op.batch_alter_table('punches', schema=None) as batch_op:
        batch_op.drop_constraint('uq_punches_key', type_='unique')
        batch_op.create_unique_constraint('uq_punches_key', columns)
    if sqlite:
        op.execute('DELETE FROM outbox')
        op.execute('INSERT INTO outbox SELECT * FROM _fpgw_outbox_0005')
        op.execute('DROP TABLE _fpgw_outbox_0005')


def upgrade() -> None:
    op.create_table(
        'device_bindings',
        sa.Column('serial', sa.String(length=64), nullable=False),
        sa.Column('office_code', sa.String(length=32), nullable=False),
        sa.Column('bound_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('bound_by', sa.String(length=120), nullable=False),
        sa.Column('previous_office_code', sa.String(length=32), nullable=True),
        sa.Column('note', sa.String(length=500), nullable=True),
        sa.Column('conflict_office_code', sa.String(length=32), nullable=True),
        sa.Column('conflict_alerted_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('serial', name=op.f('pk_device_bindings')),
    )
    op.create_index(op.f('ix_device_bindings_office_code'), 'device_bindings', ['office_code'], unique=False)
    _rekey(_NEW_KEY)
    # Bind the serials already stored from forwarded punches (an office gateway's own polls bind nothing:
    # there is one office there). The office with the most punches of a serial wins; ties: the earliest.
    op.execute(sa.text(
        "INSERT INTO device_bindings (serial, office_code, bound_at, bound_by) "
        "SELECT device_serial, office_code, first_at, 'migration:0005' FROM ("
        "  SELECT device_serial, office_code, MIN(received_at) AS first_at, "
        "         ROW_NUMBER() OVER (PARTITION BY device_serial ORDER BY COUNT(*) DESC, MIN(id)) AS rnk "
        "  FROM punches WHERE source = 'forward' GROUP BY device_serial, office_code"
        ") ranked WHERE rnk = 1"))


def downgrade() -> None:
    # Only possible while no two offices hold the same (serial, user, time): that is what 0004_punch_occurrence allowed.
    _rekey(_OLD_KEY)
    op.drop_index(op.f('ix_device_bindings_office_code'), table_name='device_bindings')
    op.drop_table('device_bindings')
