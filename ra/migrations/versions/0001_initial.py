"""Enrolment requests, audit log, rate counters.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('audit_log',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('protocol', sa.String(length=16), nullable=False),
    sa.Column('operation', sa.String(length=32), nullable=False),
    sa.Column('device', sa.String(length=128), nullable=True),
    sa.Column('evidence', sa.Text(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('serial', sa.String(length=42), nullable=True),
    sa.Column('details', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    op.create_index('ix_audit_device', 'audit_log', ['device'], unique=False)
    op.create_table('enrolment_requests',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('transaction_key', sa.String(length=255), nullable=False),
    sa.Column('protocol', sa.String(length=16), nullable=False),
    sa.Column('operation', sa.String(length=16), nullable=False),
    sa.Column('device_serial', sa.String(length=128), nullable=True),
    sa.Column('ca', sa.String(length=64), nullable=True),
    sa.Column('profile', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('request', sa.LargeBinary(), nullable=False),
    sa.Column('key_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('certificate_serial', sa.String(length=42), nullable=True),
    sa.Column('reject_reason', sa.String(length=32), nullable=True),
    sa.Column('reject_text', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_by', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('transaction_key')
    )
    op.create_index('ix_enrolment_requests_device', 'enrolment_requests', ['device_serial'], unique=False)
    op.create_index('ix_enrolment_requests_status', 'enrolment_requests', ['status'], unique=False)
    op.create_table('rate_counters',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('window_start', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key', 'window_start')
    )

    # The chain starts from a fixed genesis hash.
    op.bulk_insert(
        sa.table("audit_head", sa.column("id", sa.Integer), sa.column("seq", sa.BigInteger), sa.column("hash", sa.String)),
        [{"id": 1, "seq": 0, "hash": "0" * 64}],
    )


def downgrade() -> None:
    op.drop_table('rate_counters')
    op.drop_index('ix_enrolment_requests_status', table_name='enrolment_requests')
    op.drop_index('ix_enrolment_requests_device', table_name='enrolment_requests')
    op.drop_table('enrolment_requests')
    op.drop_index('ix_audit_device', table_name='audit_log')
    op.drop_table('audit_log')
    op.drop_table('audit_head')
