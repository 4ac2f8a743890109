"""CRL revision: a CRL is stale when a revocation came after it.

Every change of a certificate's revocation state bumps its CA's
revocation_revision in the same transaction; each CRL records the revision
it was built from. A crash between a revocation and the CRL re-issue leaves
a CRL whose revision is behind its CA's, which start-up, the maintenance
sweep and the next request for the CRL all notice (issue 18).

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
    op.add_column("authorities", sa.Column("revocation_revision", sa.BigInteger, nullable=False, server_default="0"))
    # Existing CRLs count as current: nothing marked them stale before.
    op.add_column("crls", sa.Column("revocation_revision", sa.BigInteger, nullable=False, server_default="0"))
    # The sweep looks for old 'signing' rows every minute on every worker: a
    # partial index holds only the few rows in flight, so neither the sweep
    # nor issuance pays for the table's size.
    signing = sa.text("status = 'signing'")
    op.create_index(
        "ix_certificates_signing", "certificates", ["created_at"], sqlite_where=signing, postgresql_where=signing
    )


def downgrade() -> None:
    op.drop_index("ix_certificates_signing", "certificates")
    with op.batch_alter_table("crls") as batch:
        batch.drop_column("revocation_revision")
    with op.batch_alter_table("authorities") as batch:
        batch.drop_column("revocation_revision")
