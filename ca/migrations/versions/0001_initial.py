"""Authorities, certificates and CRLs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "authorities",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("authorities.id")),
        sa.Column("key_label", sa.String(128), nullable=False),
        sa.Column("sign_algorithm", sa.String(32), nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
        sa.Column("ocsp_key_label", sa.String(128)),
        sa.Column("ocsp_certificate", sa.LargeBinary),
        sa.Column("crl_number", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("authority_id", sa.Integer, sa.ForeignKey("authorities.id"), nullable=False),
        sa.Column("serial", sa.String(42), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("sans", sa.Text, nullable=False),
        sa.Column("device_id", sa.String(128)),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("not_before", TZ, nullable=False),
        sa.Column("not_after", TZ, nullable=False),
        sa.Column("tbs", sa.LargeBinary, nullable=False),
        sa.Column("der", sa.LargeBinary),
        sa.Column("revoked_at", TZ),
        sa.Column("revocation_reason", sa.String(32)),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("authority_id", "serial", name="uq_certificates_authority_serial"),
    )
    op.create_index("ix_certificates_serial", "certificates", ["serial"])
    op.create_index("ix_certificates_subject", "certificates", ["subject"])
    op.create_index("ix_certificates_device", "certificates", ["device_id"])
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])
    op.create_table(
        "crls",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("authority_id", sa.Integer, sa.ForeignKey("authorities.id"), nullable=False),
        sa.Column("crl_number", sa.BigInteger, nullable=False),
        sa.Column("this_update", TZ, nullable=False),
        sa.Column("next_update", TZ, nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("authority_id", "crl_number", name="uq_crls_authority_number"),
    )


def downgrade() -> None:
    op.drop_table("crls")
    op.drop_index("ix_certificates_not_after", "certificates")
    op.drop_index("ix_certificates_device", "certificates")
    op.drop_index("ix_certificates_subject", "certificates")
    op.drop_index("ix_certificates_serial", "certificates")
    op.drop_table("certificates")
    op.drop_table("authorities")
