"""ra tables (SQLAlchemy Core); migrations in ra/migrations, version table
alembic_version_ra."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, LargeBinary, MetaData, String, Table, Text

metadata = MetaData()
TZ = DateTime(timezone=True)

# Every request the core answered with "pending", and every transaction it
# issued for, so a retry gets the same answer (idempotency) and an admin can
# approve or reject what waits.
enrolment_requests = Table(
    "enrolment_requests",
    metadata,
    Column("id", String(36), primary_key=True),  # UUID, shown to admins and devices
    Column("transaction_key", String(255), nullable=False, unique=True),  # protocol:transaction id
    Column("protocol", String(16), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("device_serial", String(128)),
    Column("ca", String(64)),
    Column("profile", String(64)),
    Column("status", String(16), nullable=False),  # pending | approved | rejected | issued | failed
    Column("request", LargeBinary, nullable=False),  # the whole request (JSON + DER parts)
    # SHA-256 of the requested SPKI: a retry must ask for the same key.
    Column("key_fingerprint", String(64)),
    Column("certificate_serial", String(42)),
    Column("reject_reason", String(32)),
    Column("reject_text", Text),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    Column("decided_by", String(128)),
    Index("ix_enrolment_requests_status", "status"),
    Index("ix_enrolment_requests_device", "device_serial"),
)

# Append-only audit log, each record chained to the previous by SHA-256.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", TZ, nullable=False),
    Column("actor", String(128), nullable=False),  # device serial, admin name, or "anonymous"
    Column("protocol", String(16), nullable=False),
    Column("operation", String(32), nullable=False),
    Column("device", String(128)),
    Column("evidence", Text, nullable=False),  # JSON list of what authenticated the request
    Column("outcome", String(16), nullable=False),  # issued | pending | rejected | revoked | admin | noise
    Column("reason", String(64)),
    Column("serial", String(42)),
    Column("details", Text, nullable=False),  # JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_device", "device"),
)

# The head of the audit chain: one row, updated in the same transaction as
# each append, so concurrent writers serialise on it.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# Refusals nobody authenticated (issue 10, 6c), counted instead of chained:
# one row per (interval, source, protocol, reason), so a flood of bad
# requests costs a bounded number of rows (ra/noise.py). `sealed` is set once
# the interval's summary has joined the hash chain.
audit_noise = Table(
    "audit_noise",
    metadata,
    Column("interval_start", BigInteger, primary_key=True),  # epoch seconds, a multiple of the interval
    Column("source", String(64), primary_key=True),  # the peer address, or "*" past the per-interval cap
    Column("protocol", String(16), primary_key=True),
    Column("reason", String(32), primary_key=True),  # a closed set; anything else is "other"
    Column("count", BigInteger, nullable=False),
    Column("first_seen", TZ, nullable=False),
    Column("last_seen", TZ, nullable=False),
    Column("sample", String(256), nullable=False),  # the first refusal's details, cut
    Column("sealed", Boolean, nullable=False),
)

# Fixed-window counters for rate limits (per device, global).
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("window_start", BigInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)

# CMP transactions (RFC 4210 §5.1.1, RFC 9483 §3.5): one row per
# transactionID and sender, so the certConf may reach any worker or node.
cmp_transactions = Table(
    "cmp_transactions",
    metadata,
    Column("transaction_id", String(128), primary_key=True),  # hex
    Column("sender", String(80), primary_key=True),  # "kid:<hex>" or "cert:<sha256 hex>"
    Column("body_type", String(8), nullable=False),  # ir | cr | kur | p10cr | rr
    Column("status", String(24), nullable=False),  # open | awaiting_confirm | confirmed | rejected | pending | revoked
    Column("cert_req_id", Integer),
    Column("request_id", String(36)),  # the core's pending request, while waiting
    Column("ca", String(64)),
    Column("certificate_serial", String(42)),
    Column("certificate", LargeBinary),  # DER, for certHash under any hashAlg
    Column("cert_hash", String(128)),  # SHA-256 of the DER, hex
    Column("created_at", TZ, nullable=False),
    Column("expires_at", TZ, nullable=False),
    # The transaction's last reply and the SHA-256 of the request it answered:
    # a retransmission (lost reply) gets the same bytes again.
    Column("request_hash", String(64)),
    Column("reply", LargeBinary),
    Index("ix_cmp_transactions_status_expires", "status", "expires_at"),
    Index("ix_cmp_transactions_serial", "certificate_serial"),
)

# Every senderNonce a CMP request carried (RFC 4210 §5.1.1): a second use is
# a replay (badSenderNonce). Rows older than the messageTime window go.
cmp_nonces = Table(
    "cmp_nonces",
    metadata,
    Column("nonce", String(128), primary_key=True),  # hex
    Column("seen_at", TZ, nullable=False),
    Index("ix_cmp_nonces_seen", "seen_at"),
)
