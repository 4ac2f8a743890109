"""The last reply of each CMP transaction and the hash of the request it
answered: a retransmitted request (the reply was lost) gets the same reply
again (RFC 4210 §5.1.1 transactions; RFC 9483 §3.5, §6).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cmp_transactions") as batch:
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("reply", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cmp_transactions") as batch:
        batch.drop_column("reply")
        batch.drop_column("request_hash")
