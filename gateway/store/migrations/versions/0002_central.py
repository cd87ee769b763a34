"""central mode: gateway registry, ingest receipts, feed-order guard on punches (PostgreSQL)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

#: Must equal gateway.store.central.FEED_LOCK_KEY (kept literal: migrations are frozen history).
FEED_LOCK_KEY = 0x46505746


def upgrade() -> None:
    op.create_table('gateways',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('office_code', sa.String(length=32), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_batch_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_health_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('remote_addr', sa.String(length=64), nullable=True),
    sa.Column('hostname', sa.String(length=200), nullable=True),
    sa.Column('version', sa.String(length=50), nullable=True),
    sa.Column('outbox_depth', sa.Integer(), nullable=True),
    sa.Column('oldest_unforwarded_s', sa.Float(), nullable=True),
    sa.Column('punches_received', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_gateways'))
    )
    op.create_table('ingest_batches',
    sa.Column('gateway', sa.String(length=100), nullable=False),
    sa.Column('batch_id', sa.String(length=100), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('punch_count', sa.Integer(), nullable=False),
    sa.Column('new_count', sa.Integer(), nullable=False),
    sa.Column('rejected_count', sa.Integer(), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('gateway', 'batch_id', name=op.f('pk_ingest_batches'))
    )
    with op.batch_alter_table('ingest_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ingest_batches_received_at'), ['received_at'], unique=False)

    if op.get_bind().dialect.name == 'postgresql':
        # Feed-order guard: every statement inserting punches first takes one transaction-scoped
        # advisory lock, BEFORE the row defaults draw ids from the sequence. Inserting transactions
        # therefore take ids and commit one after the other, so ids become visible in increasing
        # order and a reader paging "id > cursor" can never step over a row committed later.
        # (SQLite needs nothing: it has one writer at a time.)
        op.execute(f"""
            CREATE FUNCTION fpgw_punches_feed_order() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_advisory_xact_lock({FEED_LOCK_KEY});
                RETURN NULL;
            END $$""")
        op.execute("CREATE TRIGGER punches_feed_order BEFORE INSERT ON punches "
                   "FOR EACH STATEMENT EXECUTE FUNCTION fpgw_punches_feed_order()")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER IF EXISTS punches_feed_order ON punches")
        op.execute("DROP FUNCTION IF EXISTS fpgw_punches_feed_order()")
    with op.batch_alter_table('ingest_batches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ingest_batches_received_at'))
    op.drop_table('ingest_batches')
    op.drop_table('gateways')
