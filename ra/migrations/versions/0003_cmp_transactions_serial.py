"""An index on the CMP transactions' certificate serial: before a
transaction's revocation (certConf rejection, confirmation timeout) the store
checks that no other transaction confirmed the same certificate.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_cmp_transactions_serial", "cmp_transactions", ["certificate_serial"])


def downgrade() -> None:
    op.drop_index("ix_cmp_transactions_serial", table_name="cmp_transactions")
