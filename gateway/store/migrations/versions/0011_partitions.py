"""punches partitioned by month on PostgreSQL (issue 15); SQLite unchanged

Revision ID: 0011_partitions
Revises: 0010_dashboard_accounts
Create Date: 2026-12-02

PostgreSQL only (SQLite keeps its one table: an office's years fit it, and it has no partitioning). The plain
``punches`` table is replaced by one PARTITIONED BY RANGE (device_time), with one partition per month in the
schema ``fpgw_partitions`` (``punches_YYYY_MM``) and a DEFAULT partition (``punches_default``) that takes any
row no month partition covers, so no insert ever fails. gateway.store.partitions keeps months ahead, moves
default rows into new months and archives old months; docs/scale-out.md explains the design.

- The partition key is ``device_time``: it is part of the punch's identity (uq_punches_key), so the key stays
  unique across partitions and ON CONFLICT keeps deduplicating. ``local_time`` (nullable, not in the key) and
  ``received_at`` (a resend would not conflict) cannot be.
- A partitioned table's unique constraints must hold the partition key: the primary key becomes
  (id, office_code, device_time) - id first, so the feed's ``id > cursor ORDER BY id`` and the outbox's
  lookups still walk it; office_code, so the same key is valid under Citus (distributed by office_code).
  ids still come from the same sequence (punches_id_seq), so every id and feed cursor stays valid.
- The feed-order trigger (0002, 0007) is a statement-level BEFORE INSERT trigger: PostgreSQL fires it for an
  INSERT into the partitioned parent, which is where every fpgw insert goes.

Existing rows are copied (``INSERT ... SELECT`` in id order) under an ACCESS EXCLUSIVE lock: the central and its
gateways wait (their outboxes keep everything) for the copy and the index builds. Cost and how to plan it for a
big table: docs/scale-out.md "Migrating an existing central".
"""
from __future__ import annotations

from datetime import UTC, date, datetime

from alembic import op
from sqlalchemy import text

revision = '0011_partitions'
down_revision = '0010_dashboard_accounts'
branch_labels = None
depends_on = None

#: Literal copies (migrations are frozen history) of gateway.store.partitions.SCHEMA / DEFAULT_PARTITION /
#: MONTHS_AHEAD and of gateway.store.central.FEED_LOCK_KEY's trigger name.
_SCHEMA = 'fpgw_partitions'
_DEFAULT = 'punches_default'
_MONTHS_AHEAD = 3
_OLD = 'punches_before_0011'
_INDEXES = {'ix_punches_device_id_utc_time': '(device_id, utc_time)',
            'ix_punches_local_time_employee_id': '(local_time, employee_id)'}
_KEY = '(office_code, device_serial, device_time, device_user_id, occurrence)'


def _add_months(month: date, n: int) -> date:
    total = month.year * 12 + month.month - 1 + n
    return date(total // 12, total % 12 + 1, 1)


def _bounds(month: date) -> tuple[str, str]:
    return f"{month:%Y-%m}-01 00:00:00", f"{_add_months(month, 1):%Y-%m}-01 00:00:00"


def _retire_old_names(table: str) -> None:
    """Rename the old table and its constraints/indexes out of the way (index names are schema-wide)."""
    op.execute(f'ALTER TABLE punches RENAME TO {table}')
    op.execute(f'ALTER TABLE {table} RENAME CONSTRAINT pk_punches TO pk_{table}')
    op.execute(f'ALTER TABLE {table} RENAME CONSTRAINT uq_punches_key TO uq_{table}_key')
    for name in _INDEXES:
        op.execute(f'ALTER INDEX {name} RENAME TO {name.replace("punches", table, 1)}')
    op.execute(f'DROP TRIGGER IF EXISTS punches_feed_order ON {table}')


def _columns(table: str) -> str:
    rows = op.get_bind().execute(text(
        "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum"), {"t": table}).scalars().all()
    return ', '.join(rows)


def _finish(table: str) -> None:
    """Copy the old rows in id order, hand the sequence over, drop the old table, re-create the trigger."""
    columns = _columns(table)
    op.execute(f'INSERT INTO punches ({columns}) SELECT {columns} FROM {table} ORDER BY id')
    op.execute('ALTER SEQUENCE punches_id_seq OWNED BY punches.id')
    op.execute(f'DROP TABLE {table}')
    op.execute("CREATE TRIGGER punches_feed_order BEFORE INSERT ON punches "
               "FOR EACH STATEMENT EXECUTE FUNCTION fpgw_punches_feed_order()")
    op.execute('ANALYZE punches')


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('LOCK TABLE punches IN ACCESS EXCLUSIVE MODE')
    _retire_old_names(_OLD)
    op.execute(f'CREATE SCHEMA IF NOT EXISTS {_SCHEMA}')
    op.execute(f'CREATE TABLE punches (LIKE {_OLD} INCLUDING DEFAULTS) PARTITION BY RANGE (device_time)')
    op.execute('ALTER TABLE punches ADD CONSTRAINT pk_punches PRIMARY KEY (id, office_code, device_time)')
    op.execute(f'ALTER TABLE punches ADD CONSTRAINT uq_punches_key UNIQUE {_KEY}')
    for name, columns in _INDEXES.items():
        op.execute(f'CREATE INDEX {name} ON punches {columns}')
    op.execute(f'CREATE TABLE {_SCHEMA}.{_DEFAULT} PARTITION OF punches DEFAULT')
    # One partition per month the stored punches have (a well-formed device month up to MONTHS_AHEAD ahead:
    # a clock in 2099 stays in the default partition), and the current month and MONTHS_AHEAD after it.
    this_month = datetime.now(UTC).date().replace(day=1)
    last = _add_months(this_month, _MONTHS_AHEAD)
    stored = op.get_bind().execute(text(
        f"SELECT DISTINCT left(device_time, 7) FROM {_OLD} "
        r"WHERE device_time ~ '^[0-9]{4}-(0[1-9]|1[0-2])-'")).scalars().all()
    months = {date(int(m[:4]), int(m[5:7]), 1) for m in stored}
    months |= {_add_months(this_month, n) for n in range(_MONTHS_AHEAD + 1)}
    for month in sorted(m for m in months if m <= last):
        low, high = _bounds(month)
        op.execute(f"CREATE TABLE {_SCHEMA}.punches_{month:%Y_%m} PARTITION OF punches "
                   f"FOR VALUES FROM ('{low}') TO ('{high}')")
    _finish(_OLD)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('LOCK TABLE punches IN ACCESS EXCLUSIVE MODE')
    _retire_old_names('punches_partitioned')
    op.execute('CREATE TABLE punches (LIKE punches_partitioned INCLUDING DEFAULTS)')
    op.execute('ALTER TABLE punches ADD CONSTRAINT pk_punches PRIMARY KEY (id)')
    op.execute(f'ALTER TABLE punches ADD CONSTRAINT uq_punches_key UNIQUE {_KEY}')
    for name, columns in _INDEXES.items():
        op.execute(f'CREATE INDEX {name} ON punches {columns}')
    _finish('punches_partitioned')  # drops the partitions with their parent
    op.execute(f'DROP SCHEMA IF EXISTS {_SCHEMA} CASCADE')
