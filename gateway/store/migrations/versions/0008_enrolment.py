"""enrolment: backups of terminals' users and fingerprint templates (sealed), and the audit of every use

Revision ID: 0008_enrolment
Revises: 0007_punch_indexes
Create Date: 2026-12-01

Issue 12. Templates and passwords are stored only as sealed envelopes (gateway/enrol/crypto.py); the key
is never in the database. (0007 is another change of the same session; the chain is re-linked at merge.)
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008_enrolment'
down_revision = '0007_punch_indexes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'enrol_snapshot',
        sa.Column('id', big_id, autoincrement=True, nullable=False),
        sa.Column('device_id', sa.String(length=64), nullable=False),
        sa.Column('serial', sa.String(length=64), nullable=False),
        sa.Column('taken_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('algorithm', sa.Integer(), nullable=False),
        sa.Column('user_layout', sa.Integer(), nullable=False),
        sa.Column('users', sa.Integer(), nullable=False),
        sa.Column('templates', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_enrol_snapshot')),
    )
    op.create_index(op.f('ix_enrol_snapshot_device_id_taken_at'), 'enrol_snapshot', ['device_id', 'taken_at'],
                    unique=False)
    op.create_table(
        'enrol_user',
        sa.Column('snapshot_id', big_id, nullable=False),
        sa.Column('uid', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('privilege', sa.Integer(), nullable=False),
        sa.Column('card', sa.BigInteger(), nullable=False),
        sa.Column('group_id', sa.String(length=16), nullable=False),
        sa.Column('has_password', sa.Boolean(), nullable=False),
        sa.Column('secret', sa.LargeBinary(), nullable=True),
        sa.Column('key_id', sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(['snapshot_id'], ['enrol_snapshot.id'],
                                name=op.f('fk_enrol_user_snapshot_id_enrol_snapshot'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('snapshot_id', 'uid', name=op.f('pk_enrol_user')),
    )
    op.create_table(
        'enrol_template',
        sa.Column('snapshot_id', big_id, nullable=False),
        sa.Column('uid', sa.Integer(), nullable=False),
        sa.Column('finger', sa.Integer(), nullable=False),
        sa.Column('valid', sa.Integer(), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('key_id', sa.String(length=16), nullable=False),
        sa.Column('blob', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['snapshot_id'], ['enrol_snapshot.id'],
                                name=op.f('fk_enrol_template_snapshot_id_enrol_snapshot'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('snapshot_id', 'uid', 'finger', name=op.f('pk_enrol_template')),
    )
    op.create_table(
        'enrol_audit',
        sa.Column('id', big_id, autoincrement=True, nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('actor', sa.String(length=64), nullable=False),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('device_id', sa.String(length=64), nullable=False),
        sa.Column('users', sa.Integer(), nullable=False),
        sa.Column('templates', sa.Integer(), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('detail', sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_enrol_audit')),
    )
    op.create_index(op.f('ix_enrol_audit_device_id_at'), 'enrol_audit', ['device_id', 'at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_enrol_audit_device_id_at'), table_name='enrol_audit')
    op.drop_table('enrol_audit')
    op.drop_table('enrol_template')
    op.drop_table('enrol_user')
    op.drop_index(op.f('ix_enrol_snapshot_device_id_taken_at'), table_name='enrol_snapshot')
    op.drop_table('enrol_snapshot')
