"""Revocation and CRLs (RFC 5280 §5) for every CA of the instance."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from cryptography import x509

from ca import signing
from storage import db
from ca.issuer import CertificateAuthorities, IssuanceError, UnknownAuthority
from storage.db import NotFound, now
from ca.store import CertificateRecord, CrlRecord
from hsm import HsmError

# RFC 5280 §5.3.1 CRLReason names, as the CLI and the store spell them.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}


class RevocationError(ValueError):
    """The revocation asked for is not possible."""


def reason_name(text: str) -> str:
    """Canonical reason name from any case and with '-' or '_' ignored."""
    wanted = text.replace("-", "").replace("_", "").lower()
    for name in REASONS:
        if name.lower() == wanted:
            return name
    raise RevocationError(
        f"unknown revocation reason {text!r} (one of: {', '.join(REASONS)}, removeFromCRL)"
    )


@dataclass(frozen=True)
class CrlPolicy:
    validity: timedelta = timedelta(days=1)
    # A CRL older than this is re-issued on the next request ("on schedule"
    # without a scheduler: every node serves a fresh one).
    refresh: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class ReconcileAction:
    """One repair made after a crash, for the audit log (issue 18)."""

    kind: str  # "possibly-issued-revoked" | "stale-crl-reissued"
    ca: str
    serial: int | None
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    device: str | None = None


# Called inside the transaction that makes the repair, so the repair and its
# audit record land together or not at all (ca cannot import ra/audit).
ReconcileHook = Callable[[ReconcileAction], None]


class Revocations:
    def __init__(
        self,
        cas: CertificateAuthorities,
        policy: CrlPolicy = CrlPolicy(),
        *,
        on_reconcile: ReconcileHook | None = None,
    ) -> None:
        self.cas = cas
        self.store = cas.store
        self.policy = policy
        self.on_reconcile = on_reconcile
        # One re-issue per CA at a time in this process: the threads of a
        # worker that all find the CRL stale wait for one CRL, not sign N.
        self._publishing: dict[str, threading.Lock] = {}
        self._publishing_guard = threading.Lock()

    def revoke(
        self,
        serial: int,
        reason: str,
        *,
        ca: str | None = None,
        at: datetime | None = None,
    ) -> CertificateRecord:
        """Revoke (or put on hold, or release a hold with 'removeFromCRL').

        The CRL is marked stale in the same transaction and re-issued before
        it is next served or by the maintenance sweep, whichever comes first:
        one CRL for a burst of revocations, and a crash cannot lose it.
        """
        if reason.replace("-", "").replace("_", "").lower() == "removefromcrl":
            return self.release_hold(serial, ca=ca)
        reason = reason_name(reason)
        record = self._record(serial, ca)
        if reason == "certificateHold":
            allowed: tuple[str, ...] = ("valid",)
            status = "hold"
        else:
            # RFC 5280 §5.3.1: a held certificate may be revoked for good. A
            # 'signing' row may have been signed by the token: revocable
            # (Boulder treats precertificates as issued for revocation).
            allowed = ("valid", "hold", "signing")
            status = "revoked"
        if record.status not in allowed:
            raise RevocationError(
                f"certificate {record.serial_hex} is {record.status}; cannot set {reason}"
            )
        self.store.set_revocation(
            record.authority_id,
            serial,
            status=status,
            revoked_at=at or now(),
            reason=reason,
            allowed_from=allowed,
        )
        db.crash_point("revoke.marked")
        return self._record(serial, record.authority)

    def release_hold(self, serial: int, *, ca: str | None = None) -> CertificateRecord:
        record = self._record(serial, ca)
        if record.status != "hold":
            raise RevocationError(f"certificate {record.serial_hex} is {record.status}, not on hold")
        self.store.set_revocation(
            record.authority_id, serial, status="valid", revoked_at=None, reason=None,
            allowed_from=("hold",),
        )
        return self._record(serial, record.authority)

    def _record(self, serial: int, ca: str | None) -> CertificateRecord:
        try:
            return self.store.certificate(serial, ca)
        except NotFound:
            where = f" under CA {ca!r}" if ca else ""
            raise RevocationError(f"no certificate with serial {serial:x}{where}") from None

    # -- CRLs ------------------------------------------------------------------

    def publish_crl(self, ca: str, *, why: str = "requested") -> CrlRecord:
        """Sign and store a new full CRL for CA `ca` (RFC 5280 §5.1).

        `why` is "stale" when a revocation came after the latest CRL: the
        re-issue is then a repair and is reported to on_reconcile in the
        transaction that saves the CRL.
        """
        authority = self.cas.authority(ca)
        if authority.record.kind == "external":
            raise UnknownAuthority(f"CA {ca!r} has no key here; it publishes its own CRL")
        contents = self.store.crl_contents(authority.record.id)
        number = self.store.next_crl_number(authority.record.id)
        db.crash_point("crl.numbered")
        this_update = now().replace(microsecond=0)
        next_update = this_update + self.policy.validity
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(authority.certificate.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(authority.ski),
                critical=False,
            )
        )
        for serial, revoked_at, reason in contents.entries:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(revoked_at.replace(microsecond=0))
            )
            # RFC 5280 §5.3.1: unspecified SHOULD be expressed by omitting the reason.
            if reason and reason != "unspecified":
                entry = entry.add_extension(x509.CRLReason(REASONS[reason]), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        try:
            signer = self.cas.token.signer(authority.record.key_label, authority.algorithm)
            tbs = signing.tbs_crl(builder, authority.algorithm)
            crl_der = signing.sign_tbs(tbs, signer)
        except HsmError as exc:
            raise IssuanceError(f"cannot sign the CRL of {ca!r}: {exc}") from None
        crl = x509.load_der_x509_crl(crl_der)
        if not crl.is_signature_valid(authority.certificate.public_key()):  # type: ignore[arg-type]
            raise IssuanceError(f"the token produced a bad CRL signature for {ca!r}")
        record = CrlRecord(
            crl_number=number, this_update=this_update, next_update=next_update, der=crl_der,
            revocation_revision=contents.revision,
        )
        db.crash_point("crl.signed")
        with db.unit_of_work(self.store.engine):
            self.store.save_crl(authority.record.id, record)
            if why == "stale" and self.on_reconcile is not None:
                self.on_reconcile(ReconcileAction(
                    kind="stale-crl-reissued", ca=ca, serial=None,
                    reason="a revocation came after the latest CRL",
                    details={"crl_number": number, "revocation_revision": contents.revision,
                             "entries": len(contents.entries)},
                ))
        return record

    def crl_due(self, ca: str) -> str | None:
        """Why CA `ca` needs a new CRL now ("missing", "stale", "due"), or None."""
        authority_id = self.cas.authority(ca).record.id
        return self._due(self.store.latest_crl(authority_id), authority_id)

    def _due(self, latest: CrlRecord | None, authority_id: int) -> str | None:
        if latest is None:
            return "missing"
        if latest.revocation_revision < self.store.revocation_revision(authority_id):
            return "stale"
        if now() - latest.this_update >= self.policy.refresh:
            return "due"
        return None

    def refresh_crl(self, ca: str) -> CrlRecord | None:
        """Re-issue the CRL of `ca` when missing, stale or due; the new one, or None."""
        with self._lock_for(ca):
            why = self.crl_due(ca)
            return None if why is None else self.publish_crl(ca, why=why)

    def current_crl(self, ca: str) -> CrlRecord:
        """The CRL to serve: never behind a revocation, never older than refresh."""
        authority_id = self.cas.authority(ca).record.id
        latest = self.store.latest_crl(authority_id)
        if self._due(latest, authority_id) is None and latest is not None:
            return latest
        with self._lock_for(ca):
            # Another thread may have re-issued it while this one waited.
            latest = self.store.latest_crl(authority_id)
            why = self._due(latest, authority_id)
            if why is None and latest is not None:
                return latest
            return self.publish_crl(ca, why=why or "missing")

    def _lock_for(self, ca: str) -> threading.Lock:
        with self._publishing_guard:
            return self._publishing.setdefault(ca, threading.Lock())
