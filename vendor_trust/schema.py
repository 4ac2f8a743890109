"""vendor_trust tables (SQLAlchemy Core); migrations in vendor_trust/migrations,
version table alembic_version_vendor_trust. No foreign keys to other packages'
tables: devices are referred to by serial, certificates by serial."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
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
)

metadata = MetaData()
TZ = DateTime(timezone=True)

vendors = Table(
    "vendors",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", TZ, nullable=False),
)

# Trust anchors (vendor roots) of each vendor.
vendor_anchors = Table(
    "vendor_anchors",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("vendor_id", Integer, ForeignKey("vendors.id", ondelete="CASCADE"), nullable=False),
    Column("fingerprint", String(64), nullable=False, unique=True),  # SHA-256 hex of the DER
    Column("subject", Text, nullable=False),
    Column("certificate", LargeBinary, nullable=False),
    Column("added_at", TZ, nullable=False),
)

# CRLs of vendor CAs loaded by the admin; the latest per issuer key counts.
vendor_crls = Table(
    "vendor_crls",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("vendor_id", Integer, ForeignKey("vendors.id", ondelete="CASCADE"), nullable=False),
    Column("issuer_key_id", String(128), nullable=False),  # hex AKI, or SHA-256 of the issuer name
    Column("issuer", Text, nullable=False),
    Column("crl_number", BigInteger),
    Column("this_update", TZ, nullable=False),
    Column("next_update", TZ),
    Column("der", LargeBinary, nullable=False),
    Column("loaded_at", TZ, nullable=False),
    UniqueConstraint("vendor_id", "issuer_key_id", name="uq_vendor_crls_issuer"),
)

# The device registry.
devices = Table(
    "devices",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("serial", String(128), nullable=False, unique=True),
    Column("vendor", String(64)),
    Column("model", String(128)),
    Column("mac", String(32)),
    Column("imei", String(32)),
    Column("hnb_id", String(64)),
    Column("tenant", String(64)),
    Column("profile", String(64)),
    Column("public_key", LargeBinary),  # SubjectPublicKeyInfo DER registered by the production line
    Column("state", String(16), nullable=False),  # registered | active | blocked
    Column("blocked_reason", String(64)),
    Column("blocked_at", TZ),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    Index("ix_devices_mac", "mac"),
    Index("ix_devices_imei", "imei"),
    Index("ix_devices_hnb_id", "hnb_id"),
    Index("ix_devices_vendor", "vendor"),
)

# Enrolment credentials: MAC secrets (CMP PBM/PBMAC1) sealed by a token key,
# EST passwords as scrypt hashes.
credentials = Table(
    "credentials",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("reference", String(128), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # mac | password
    Column("device_serial", String(128)),
    Column("batch", String(64)),
    Column("profile", String(64)),
    Column("sealed_secret", LargeBinary),
    Column("password_hash", String(256)),
    Column("expires_at", TZ),
    Column("max_uses", Integer),
    Column("uses", Integer, nullable=False, default=0),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created_at", TZ, nullable=False),
    Column("last_used_at", TZ),
    Index("ix_credentials_device", "device_serial"),
    Index("ix_credentials_batch", "batch"),
)

# One-time enrolment PINs (SCEP challengePassword).
pins = Table(
    "pins",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("device_serial", String(128), nullable=False),
    Column("pin_hash", String(256), nullable=False),
    Column("state", String(16), nullable=False),  # active | used | locked | revoked
    Column("failures", Integer, nullable=False, default=0),
    Column("expires_at", TZ, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("used_at", TZ),
    Index("ix_pins_device", "device_serial"),
)
