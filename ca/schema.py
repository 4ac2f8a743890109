"""The store's tables (SQLAlchemy Core). Alembic migrations in ca/migrations
create and evolve them; this module is what the code reads and writes.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# One row per CA certificate this instance holds or signs with.
authorities = Table(
    "authorities",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # root | issuing
    Column("parent_id", Integer, ForeignKey("authorities.id")),
    Column("key_label", String(128), nullable=False),
    Column("sign_algorithm", String(32), nullable=False),
    Column("certificate", LargeBinary, nullable=False),
    Column("ocsp_key_label", String(128)),
    Column("ocsp_certificate", LargeBinary),
    Column("crl_number", BigInteger, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Bumped with every change of a certificate's revocation state, in the
    # same transaction: a CRL built from an older revision is stale.
    Column("revocation_revision", BigInteger, nullable=False, default=0),
)

# Every certificate the token may have signed. A row exists in state
# 'signing' before the token is asked, so a crash can never leave a
# signature the store does not know about (record before sign).
certificates = Table(
    "certificates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("authority_id", Integer, ForeignKey("authorities.id"), nullable=False),
    Column("serial", String(42), nullable=False),  # lower-case hex, no leading zeros
    # signing | valid | revoked | hold | failed. A 'revoked' row without der
    # was left 'signing' by a crash: possibly signed, never delivered.
    Column("status", String(16), nullable=False),
    Column("subject", Text, nullable=False),
    Column("sans", Text, nullable=False),  # JSON list of "type:value"
    Column("device_id", String(128)),
    Column("profile", String(64), nullable=False),
    Column("not_before", DateTime(timezone=True), nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=False),
    Column("tbs", LargeBinary, nullable=False),
    Column("der", LargeBinary),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revocation_reason", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("authority_id", "serial", name="uq_certificates_authority_serial"),
    Index("ix_certificates_serial", "serial"),
    Index("ix_certificates_subject", "subject"),
    Index("ix_certificates_device", "device_id"),
    Index("ix_certificates_not_after", "not_after"),
    Index(
        "ix_certificates_signing", "created_at",
        sqlite_where=text("status = 'signing'"), postgresql_where=text("status = 'signing'"),
    ),
)

crls = Table(
    "crls",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("authority_id", Integer, ForeignKey("authorities.id"), nullable=False),
    Column("crl_number", BigInteger, nullable=False),
    Column("this_update", DateTime(timezone=True), nullable=False),
    Column("next_update", DateTime(timezone=True), nullable=False),
    Column("der", LargeBinary, nullable=False),
    Column("revocation_revision", BigInteger, nullable=False, default=0),  # the CA's, when built
    UniqueConstraint("authority_id", "crl_number", name="uq_crls_authority_number"),
)
