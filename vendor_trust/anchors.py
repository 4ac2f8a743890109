"""Vendor trust anchors, vendor CRLs, and validation of IDevID chains (flows F1, F5).

The admin registers each device vendor with its roots (`vendors add`); a
device proves who it is with its vendor certificate (IEEE 802.1AR IDevID) and
the intermediates it sends. `VendorTrust.validate` finds a path to a stored
anchor, applies the 802.1AR-aware profile of trust_path.py and the CRLs the
admin loaded (trust_crls.py), and reads the device serial (identity.py).

Anchors are cached per instance for `cache_seconds`, so a request does not
re-read them; CRL rows are read on every validation (one small query), so a
newly loaded CRL applies at once on every worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Connection, Engine, Select, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from storage import db
from storage.db import now, utc
from vendor_trust.identity import DeviceIdentity, read_identity
from vendor_trust.schema import vendor_anchors, vendor_crls, vendors
from vendor_trust.trust_crls import (
    ParsedCrl,
    RevocationChecker,
    parse_crl,
    refusal_to_replace,
    signed_by,
)
from vendor_trust.trust_errors import (
    BadIdentity,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CrlRefused,
    DuplicateAnchor,
    DuplicateVendor,
    NotACaCertificate,
    TrustConfigError,
    UnknownAnchor,
    UnknownVendor,
    UntrustedChain,
    VendorTrustError,
)
from vendor_trust.trust_names import describe
from vendor_trust.trust_path import (
    MALFORMED,
    MAX_CHAIN_LENGTH,
    Anchor,
    candidate_paths,
    check_algorithms,
    check_anchor_certificate,
    check_structure,
    check_validity,
    fingerprint,
)

__all__ = [
    "AnchorInfo", "CrlInfo", "DeviceIdentity", "VendorInfo", "VendorTrust", "check_anchor_certificate",
    # The errors, so that callers need one import.
    "BadIdentity", "CertificateExpired", "CertificateNotYetValid", "CertificateRevoked", "CrlRefused",
    "DuplicateAnchor", "DuplicateVendor", "NotACaCertificate", "TrustConfigError", "UnknownAnchor",
    "UnknownVendor", "UntrustedChain", "VendorTrustError",
]

log = logging.getLogger(__name__)

MAX_VENDOR_NAME = 64  # vendors.name is String(64)


@dataclass(frozen=True)
class VendorInfo:
    name: str
    anchors: int
    crls: int
    created_at: datetime


@dataclass(frozen=True)
class AnchorInfo:
    vendor: str
    fingerprint: str  # SHA-256 of the DER, lower-case hex
    subject: str
    certificate: x509.Certificate
    added_at: datetime


@dataclass(frozen=True)
class CrlInfo:
    vendor: str
    issuer: str
    issuer_key_id: str
    crl_number: int | None
    this_update: datetime
    next_update: datetime | None
    revoked: int  # entries listed
    # Whether the signature was checked when loading (issuer an anchor or
    # given); otherwise it is checked against the path at validation time.
    verified: bool


@dataclass(frozen=True)
class _AnchorIndex:
    loaded: float
    by_subject: dict[x509.Name, tuple[Anchor, ...]]
    by_fingerprint: dict[str, Anchor]


def normalise_fingerprint(text: str) -> str:
    return text.strip().lower().replace(":", "").replace(" ", "")


class VendorTrust:
    """Vendors, their anchors and CRLs over the instance's shared engine."""

    def __init__(self, engine: Engine, *, cache_seconds: float = 10.0, allow_sha1: bool = False) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self.allow_sha1 = allow_sha1
        self._index: _AnchorIndex | None = None
        self._revocation = RevocationChecker(engine)

    # -- vendors -----------------------------------------------------------------

    def add_vendor(self, name: str, *, exist_ok: bool = False) -> VendorInfo:
        _check_vendor_name(name)
        try:
            with db.begin(self.engine) as conn:
                if conn.execute(select(vendors.c.id).where(vendors.c.name == name)).first() is None:
                    conn.execute(insert(vendors).values(name=name, created_at=now()))
                elif not exist_ok:
                    raise DuplicateVendor(f"vendor {name!r} exists already")
        except IntegrityError:
            if not exist_ok:
                raise DuplicateVendor(f"vendor {name!r} exists already") from None
        return self._vendor_info(name)

    def remove_vendor(self, name: str) -> None:
        """Removes the vendor with its anchors and CRLs: its devices are no longer trusted."""
        with db.begin(self.engine) as conn:
            vendor_id = _vendor_id(conn, name)
            # Explicit rather than relying on ON DELETE CASCADE, which SQLite
            # applies only when the connection enabled foreign keys.
            conn.execute(delete(vendor_anchors).where(vendor_anchors.c.vendor_id == vendor_id))
            conn.execute(delete(vendor_crls).where(vendor_crls.c.vendor_id == vendor_id))
            conn.execute(delete(vendors).where(vendors.c.id == vendor_id))
        self.invalidate_cache()

    def list_vendors(self) -> list[VendorInfo]:
        anchor_counts = (
            select(vendor_anchors.c.vendor_id, func.count().label("n")).group_by(vendor_anchors.c.vendor_id).subquery()
        )
        crl_counts = select(vendor_crls.c.vendor_id, func.count().label("n")).group_by(vendor_crls.c.vendor_id).subquery()
        query = (
            select(vendors.c.name, vendors.c.created_at, anchor_counts.c.n.label("anchors"), crl_counts.c.n.label("crls"))
            .outerjoin(anchor_counts, anchor_counts.c.vendor_id == vendors.c.id)
            .outerjoin(crl_counts, crl_counts.c.vendor_id == vendors.c.id)
            .order_by(vendors.c.name)
        )
        with db.connect(self.engine) as conn:
            return [
                VendorInfo(row.name, row.anchors or 0, row.crls or 0, utc(row.created_at))
                for row in conn.execute(query)
            ]

    def _vendor_info(self, name: str) -> VendorInfo:
        for info in self.list_vendors():
            if info.name == name:
                return info
        raise UnknownVendor(f"no vendor named {name!r}")

    # -- anchors -----------------------------------------------------------------

    def add_anchor(self, vendor: str, certificate: x509.Certificate) -> AnchorInfo:
        return self.add_anchors(vendor, [certificate])[0]

    def add_anchors(self, vendor: str, certificates: Sequence[x509.Certificate]) -> list[AnchorInfo]:
        """All or none: every certificate must be a CA certificate not yet an anchor."""
        for certificate in certificates:
            check_anchor_certificate(certificate)
        prints = [fingerprint(c) for c in certificates]
        if len(set(prints)) != len(prints):
            raise DuplicateAnchor("the same certificate is given twice")
        added = now()
        try:
            with db.begin(self.engine) as conn:
                vendor_id = _vendor_id(conn, vendor)
                taken = conn.execute(
                    select(vendor_anchors.c.fingerprint, vendors.c.name)
                    .join(vendors, vendors.c.id == vendor_anchors.c.vendor_id)
                    .where(vendor_anchors.c.fingerprint.in_(prints))
                ).first()
                if taken is not None:
                    raise DuplicateAnchor(f"certificate {taken.fingerprint} is already an anchor of vendor {taken.name!r}")
                for certificate, print_ in zip(certificates, prints):
                    conn.execute(
                        insert(vendor_anchors).values(
                            vendor_id=vendor_id,
                            fingerprint=print_,
                            subject=certificate.subject.rfc4514_string(),
                            certificate=certificate.public_bytes(Encoding.DER),
                            added_at=added,
                        )
                    )
        except IntegrityError:
            raise DuplicateAnchor("one of the certificates became an anchor concurrently") from None
        self.invalidate_cache()
        return [
            AnchorInfo(vendor, p, c.subject.rfc4514_string(), c, added) for c, p in zip(certificates, prints)
        ]

    def remove_anchor(self, fingerprint_hex: str) -> AnchorInfo:
        wanted = normalise_fingerprint(fingerprint_hex)
        with db.begin(self.engine) as conn:
            row = conn.execute(_anchor_query().where(vendor_anchors.c.fingerprint == wanted)).first()
            if row is None:
                raise UnknownAnchor(f"no trust anchor with fingerprint {wanted}")
            conn.execute(delete(vendor_anchors).where(vendor_anchors.c.fingerprint == wanted))
        self.invalidate_cache()
        return _anchor_info(row)

    def anchors(self, vendor: str | None = None) -> list[AnchorInfo]:
        query = _anchor_query().order_by(vendors.c.name, vendor_anchors.c.added_at)
        with db.connect(self.engine) as conn:
            if vendor is not None:
                _vendor_id(conn, vendor)
                query = query.where(vendors.c.name == vendor)
            return [_anchor_info(row) for row in conn.execute(query)]

    def invalidate_cache(self) -> None:
        self._index = None

    def _anchor_index(self) -> _AnchorIndex:
        index = self._index
        if index is not None and time.monotonic() - index.loaded < self.cache_seconds:
            return index
        by_subject: dict[x509.Name, list[Anchor]] = {}
        by_fingerprint: dict[str, Anchor] = {}
        with db.connect(self.engine) as conn:
            rows = conn.execute(_anchor_query()).all()
        for row in rows:
            try:
                certificate = x509.load_der_x509_certificate(bytes(row.certificate))
                subject = certificate.subject
            except ValueError as exc:
                # One damaged row must not make every vendor untrusted.
                log.error("stored trust anchor %s of %r cannot be read: %s", row.fingerprint, row.vendor, exc)
                continue
            anchor = Anchor(row.vendor, row.fingerprint, certificate)
            by_subject.setdefault(subject, []).append(anchor)
            by_fingerprint[row.fingerprint] = anchor
        index = _AnchorIndex(time.monotonic(), {k: tuple(v) for k, v in by_subject.items()}, by_fingerprint)
        self._index = index
        return index

    # -- CRLs --------------------------------------------------------------------

    def load_crl(self, vendor: str, data: bytes, *, issuer: x509.Certificate | None = None) -> CrlInfo:
        """Store a vendor CRL (PEM or DER), replacing the older one of the same issuer.

        When the CRL's issuer is one of the vendor's anchors, or `issuer` is
        given, its signature must verify now; otherwise it is checked against
        the issuing certificate of each path at validation time. A CRL older
        than the stored one is refused, unless `issuer` shows the stored one forged.
        """
        parsed = parse_crl(data)
        verified = self._verify_at_load(vendor, parsed, issuer)
        info = CrlInfo(
            vendor, parsed.crl.issuer.rfc4514_string(), parsed.issuer_key_id, parsed.crl_number,
            parsed.this_update, parsed.next_update, len(parsed.crl), verified,
        )
        values: dict[str, Any] = dict(
            issuer=info.issuer,
            # crlNumber may reach 20 octets (RFC 5280 §5.2.3), more than the
            # column holds; comparisons use the stored DER, so None is safe.
            crl_number=parsed.crl_number if parsed.crl_number is not None and parsed.crl_number < 2**63 else None,
            this_update=parsed.this_update,
            next_update=parsed.next_update,
            der=parsed.der,
            loaded_at=now(),
        )
        try:
            with db.begin(self.engine) as conn:
                vendor_id = _vendor_id(conn, vendor)
                key = (vendor_crls.c.vendor_id == vendor_id) & (vendor_crls.c.issuer_key_id == parsed.issuer_key_id)
                stored = conn.execute(select(vendor_crls.c.der).where(key)).first()
                if stored is None:
                    conn.execute(insert(vendor_crls).values(vendor_id=vendor_id, issuer_key_id=parsed.issuer_key_id, **values))
                    return info
                old = parse_crl(bytes(stored.der))
                if old.der == parsed.der:
                    return info
                # A stored CRL that the issuer certificate given shows to be
                # forged must not keep the genuine one out, whatever its number.
                forged_old = issuer is not None and not signed_by(old.crl, issuer)
                refusal = None if forged_old else refusal_to_replace(parsed, old)
                if refusal is not None:
                    raise CrlRefused(f"CRL of {info.issuer} not loaded: {refusal}")
                conn.execute(update(vendor_crls).where(key).values(**values))
        except IntegrityError:
            raise CrlRefused("another CRL of the same issuer was loaded concurrently; load again") from None
        return info

    def _verify_at_load(self, vendor: str, parsed: ParsedCrl, issuer: x509.Certificate | None) -> bool:
        if issuer is not None:
            if not signed_by(parsed.crl, issuer):
                raise CrlRefused(f"the CRL is not signed by {describe(issuer)}")
            return True
        candidates = [a.certificate for a in self.anchors(vendor) if a.certificate.subject == parsed.crl.issuer]
        if not candidates:
            return False
        if not any(signed_by(parsed.crl, c) for c in candidates):
            raise CrlRefused(
                f"the CRL names {vendor!r}'s anchor {parsed.crl.issuer.rfc4514_string()!r} "
                "as issuer but its signature does not verify against it"
            )
        return True

    # -- validation ----------------------------------------------------------------

    def validate(self, chain: Sequence[x509.Certificate], *, at: datetime | None = None) -> DeviceIdentity:
        """Validate an IDevID chain (device certificate first, then intermediates
        in any order) to a stored vendor anchor; the identity it certifies.

        Raises UntrustedChain, CertificateExpired, CertificateRevoked or
        BadIdentity (each with `.reason`), and no other exception for any
        input certificate; a failing database raises SQLAlchemy's errors,
        which the core answers with system_unavailable.
        """
        when = now() if at is None else (at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at)
        if not chain:
            raise UntrustedChain("no device certificate")
        if len(chain) > MAX_CHAIN_LENGTH:
            raise UntrustedChain(f"more than {MAX_CHAIN_LENGTH} certificates in the chain")
        try:
            return self._validate(chain[0], chain[1:], when)
        except MALFORMED as exc:
            raise UntrustedChain(f"malformed certificate in the chain: {exc}") from None

    def _validate(self, leaf: x509.Certificate, rest: Sequence[x509.Certificate], at: datetime) -> DeviceIdentity:
        index = self._anchor_index()
        if fingerprint(leaf) in index.by_fingerprint:
            raise UntrustedChain(f"the device certificate {describe(leaf)} is itself a trust anchor")
        first_error: VendorTrustError | None = None
        for path, anchor in candidate_paths(leaf, rest, index.by_subject):
            try:
                check_structure(path, anchor)
                check_algorithms(path, allow_sha1=self.allow_sha1)
                # Revocation before validity: a revoked certificate says more
                # about the device than an expired one.
                self._revocation.check(path, anchor.certificate, at)
                check_validity(path, at)
            except VendorTrustError as exc:
                first_error = first_error or exc
                continue
            serial, source = read_identity(leaf)
            return DeviceIdentity(serial, anchor.vendor, source, leaf, (*path, anchor.certificate))
        if first_error is not None:
            raise first_error
        raise UntrustedChain(
            f"no path from {describe(leaf)} to a trusted vendor anchor: its issuer "
            f"'{leaf.issuer.rfc4514_string()}' is not an anchor, not among the certificates "
            "sent, or did not sign it"
        )


def _check_vendor_name(name: str) -> None:
    if not name or name != name.strip() or len(name) > MAX_VENDOR_NAME or not name.isprintable():
        raise TrustConfigError(
            f"vendor name must be 1 to {MAX_VENDOR_NAME} printable characters without surrounding spaces: {name!r}"
        )


def _vendor_id(conn: Connection, name: str) -> int:
    vendor_id = conn.execute(select(vendors.c.id).where(vendors.c.name == name)).scalar()
    if vendor_id is None:
        raise UnknownVendor(f"no vendor named {name!r}")
    return int(vendor_id)


def _anchor_query() -> Select[Any]:
    return select(
        vendors.c.name.label("vendor"),
        vendor_anchors.c.fingerprint,
        vendor_anchors.c.subject,
        vendor_anchors.c.certificate,
        vendor_anchors.c.added_at,
    ).join(vendors, vendors.c.id == vendor_anchors.c.vendor_id)


def _anchor_info(row: Any) -> AnchorInfo:
    return AnchorInfo(
        vendor=row.vendor,
        fingerprint=row.fingerprint,
        subject=row.subject,
        certificate=x509.load_der_x509_certificate(bytes(row.certificate)),
        added_at=utc(row.added_at),
    )
