"""punch indexes: the ones the queries use, each inserted at its end; the outbox without a foreign key

Revision ID: 0007_punch_indexes
Revises: 0006_quarantine
Create Date: 2026-12-01

Measured with benchmarks/bench_store.py (issue 14): storing punches was bound by index maintenance. A poll of
1,000 punches from 300 users dirtied a page per user in uq_punches_key (user before time) and in
ix_punches_employee_id_utc_time, and PostgreSQL checked the outbox's foreign key row by row.

- uq_punches_key becomes (office_code, device_serial, device_time, device_user_id, occurrence): the same
  columns, so the same identity and the same ON CONFLICT target; a device's new punches now land at the end
  of its range.
- ix_punches_utc_time and ix_punches_office_code_utc_time are dropped: no query filters or sorts on them
  (`fpgw punches` sorts on an expression, the feed on id; every punch of a gateway has the same office).
- ix_punches_employee_id_utc_time becomes ix_punches_local_time_employee_id: date filters are on local_time
  (whole office-local days), which had no index; the employee is read from the same index.
- outbox.punch_id loses its foreign key (see gateway.store.schema.outbox for why that is safe).

SQLite cannot alter a constraint, so batch mode copies the tables. The outbox goes first: once it has no
foreign key, copying ``punches`` (dropping the old table) cannot cascade into it (migration 0005's note).
The feed-order trigger (migration 0002, PostgreSQL) is replaced here too: see gateway.store.central.
"""
from __future__ import annotations

from alembic import op

revision = '0007_punch_indexes'
down_revision = '0006_quarantine'
branch_labels = None
depends_on = None

_NEW_KEY = ['office_code', 'device_serial', 'device_time', 'device_user_id', 'occurrence']
_OLD_KEY = ['office_code', 'device_serial', 'device_user_id', 'device_time', 'occurrence']
_OLD_INDEXES = {'ix_punches_utc_time': ['utc_time'], 'ix_punches_office_code_utc_time': ['office_code', 'utc_time'],
                'ix_punches_employee_id_utc_time': ['employee_id', 'utc_time']}
_FK = 'fk_outbox_punch_id_punches'
#: Must equal gateway.store.central.FEED_LOCK_KEY (kept literal: migrations are frozen history).
_FEED_LOCK_KEY = 0x46505746


def _feed_trigger(lock_call: str) -> None:
    op.execute(f"""
        CREATE OR REPLACE FUNCTION fpgw_punches_feed_order() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM {lock_call}({_FEED_LOCK_KEY});
            RETURN NULL;
        END $$""")


def _rekey(columns: list[str]) -> None:
    with op.batch_alter_table('punches', schema=None) as batch_op:
        batch_op.drop_constraint('uq_punches_key', type_='unique')
        batch_op.create_unique_constraint('uq_punches_key', columns)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == 'postgresql'
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_constraint(_FK, type_='foreignkey')
    for name in _OLD_INDEXES:
        op.drop_index(name, table_name='punches')
    _rekey(_NEW_KEY)
    op.create_index('ix_punches_local_time_employee_id', 'punches', ['local_time', 'employee_id'], unique=False)
    if postgresql:
        # Writers take the feed lock SHARED (they no longer wait for each other); a feed reader takes it
        # exclusively for the instant of its snapshot (gateway.store.central, "Feed cursor").
        _feed_trigger('pg_advisory_xact_lock_shared')


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == 'postgresql'
    if postgresql:
        _feed_trigger('pg_advisory_xact_lock')
    op.drop_index('ix_punches_local_time_employee_id', table_name='punches')
    _rekey(_OLD_KEY)
    for name, columns in _OLD_INDEXES.items():
        op.create_index(name, 'punches', columns, unique=False)
    # Outbox rows whose punch is gone (possible without the key) would fail the restored constraint.
    op.execute('DELETE FROM outbox WHERE punch_id NOT IN (SELECT id FROM punches)')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_foreign_key(_FK, 'punches', ['punch_id'], ['id'], ondelete='CASCADE')
