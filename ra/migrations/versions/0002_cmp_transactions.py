"""CMP transactions and the senderNonces seen.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cmp_transactions",
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("sender", sa.String(length=80), nullable=False),
        sa.Column("body_type", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("cert_req_id", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(length=36), nullable=True),
        sa.Column("ca", sa.String(length=64), nullable=True),
        sa.Column("certificate_serial", sa.String(length=42), nullable=True),
        sa.Column("certificate", sa.LargeBinary(), nullable=True),
        sa.Column("cert_hash", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("transaction_id", "sender"),
    )
    op.create_index("ix_cmp_transactions_status_expires", "cmp_transactions", ["status", "expires_at"], unique=False)
    op.create_table(
        "cmp_nonces",
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce"),
    )
    op.create_index("ix_cmp_nonces_seen", "cmp_nonces", ["seen_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_cmp_nonces_seen", table_name="cmp_nonces")
    op.drop_table("cmp_nonces")
    op.drop_index("ix_cmp_transactions_status_expires", table_name="cmp_transactions")
    op.drop_table("cmp_transactions")
