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

import sqlalchemy as sa
from alembic import op

revision = '0004_punch_occurrence'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('punches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('occurrence', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.drop_constraint('uq_punches_key', type_='unique')
        batch_op.create_unique_constraint('uq_punches_key', ['device_serial', 'device_user_id', 'device_time',
                                                             'occurrence'])
    op.execute("UPDATE punches SET occurrence = 1 "
               "WHERE flags LIKE '%rtc_reset%' OR flags LIKE '%impossible_date%'")


def downgrade() -> None:
    # Only possible while no two rows differ by occurrence alone (the old key could not hold them).
    with op.batch_alter_table('punches', schema=None) as batch_op:
        batch_op.drop_constraint('uq_punches_key', type_='unique')
        batch_op.create_unique_constraint('uq_punches_key', ['device_serial', 'device_user_id', 'device_time'])
        batch_op.drop_column('occurrence')
