"""punch identity: punches.occurrence keeps apart records with the same user and the same untrusted time

A terminal whose clock died stamps every punch 2000-01-01 00:00:00; two real punches of one person then
had the same key (device_serial, device_user_id, device_time) and were stored once. The key gains
``occurrence`` (gateway.models.Punch.occurrence). Existing punches with an untrusted time (flags
rtc_reset / impossible_date) become occurrence 1, what the gateway now gives the first such record, so a
re-read of a log after the upgrade maps them to the rows already stored (no duplicate).

Revision ID: 0004_punch_occurrence
Revises: 0003
Create Date: 2026-12-01
"""
from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = '0004_punch_occurrence'
down_revision = '0003'
branch_labels = None
depends_on = None


def _rebuild_keeping_outbox(change: Callable[[], None]) -> None:
    """Run a change that rebuilds ``punches`` without losing the outbox.

    On SQLite, batch mode rebuilds the table (copy, DROP, rename). With foreign keys on (gateway.store.db
    sets them, and the PRAGMA cannot change inside the migration's transaction), DROP TABLE punches
    deletes its rows first and ON DELETE CASCADE would empty the outbox: the queue of punches not yet
    accepted by BKD. So the outbox is kept aside and put back (punch ids survive the copy).
    """
    if op.get_bind().dialect.name != 'sqlite':
        change()
        return
    op.execute("CREATE TEMP TABLE _fpgw_outbox_keep AS SELECT * FROM outbox")
    change()
    op.execute("DELETE FROM outbox")
    op.execute("INSERT INTO outbox SELECT * FROM _fpgw_outbox_keep")
    op.execute("DROP TABLE _fpgw_outbox_keep")


def upgrade() -> None:
    def change() -> None:
        with op.batch_alter_table('punches', schema=None) as batch_op:
            batch_op.add_column(sa.Column('occurrence', sa.BigInteger(), nullable=False, server_default='0'))
            batch_op.drop_constraint('uq_punches_key', type_='unique')
            batch_op.create_unique_constraint('uq_punches_key', ['device_serial', 'device_user_id', 'device_time',
                                                                 'occurrence'])
    _rebuild_keeping_outbox(change)
    op.execute("UPDATE punches SET occurrence = 1 "
               "WHERE flags LIKE '%rtc_reset%' OR flags LIKE '%impossible_date%'")


def downgrade() -> None:
    # Only possible while no two rows differ by occurrence alone (the old key could not hold them).
    def change() -> None:
        with op.batch_alter_table('punches', schema=None) as batch_op:
            batch_op.drop_constraint('uq_punches_key', type_='unique')
            batch_op.create_unique_constraint('uq_punches_key', ['device_serial', 'device_user_id', 'device_time'])
            batch_op.drop_column('occurrence')
    _rebuild_keeping_outbox(change)
