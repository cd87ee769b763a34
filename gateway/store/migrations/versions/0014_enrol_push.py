"""enrol_push: what push terminals uploaded of their users and templates (sealed), their enrolment mirror

Revision ID: 0014_enrol_push
Revises: 0011_partitions
Create Date: 2026-12-02

A push (ADMS) terminal uploads its users (USER lines) and fingerprint templates (FP / BIODATA lines) itself;
the receiver keeps the latest of each per terminal here, templates and passwords sealed by gateway/enrol/crypto.py,
and a backup of the terminal is a snapshot of these rows (gateway/enrol/push.py). finger -1 is the user record.

Before this revision the receiver kept whole OPERLOG uploads raw in kv rows ``push_op:<serial>:<time>``, user
passwords and template bytes included. The upgrade removes those lines from them (USER / FP / BIODATA / FACE /
USERPIC / BIOPHOTO), keeping the operation lines; the terminals upload their users and templates again on
request (`fpgw enrol backup DEVICE`), and then they are stored sealed.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014_enrol_push'
down_revision = '0011_partitions'
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
    _strip_raw_enrolment_lines()


def _strip_raw_enrolment_lines() -> None:
    kv = sa.table('kv', sa.column('key', sa.String), sa.column('value', sa.Text))
    conn = op.get_bind()
    secret_kinds = ("USER", "FP", "BIODATA", "FACE", "USERPIC", "BIOPHOTO")
    for key, value in conn.execute(sa.select(kv.c.key, kv.c.value).where(kv.c.key.like('push_op:%'))).all():
        if not key.startswith('push_op:'):
            continue
        kept = [line for line in (value or "").split("\n")
                if line.split(" ", 1)[0].split("\t", 1)[0].upper() not in secret_kinds]
        if kept:
            conn.execute(sa.update(kv).where(kv.c.key == key).values(value="\n".join(kept)))
        else:
            conn.execute(sa.delete(kv).where(kv.c.key == key))


def downgrade() -> None:
    op.drop_table('enrol_push')
