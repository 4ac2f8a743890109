"""Revocation and CRLs (RFC 5280 §5) for every CA of the instance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from ca import signing
from ca.issuer import CertificateAuthorities, IssuanceError, UnknownAuthority
from ca.db import NotFound, now
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


class Revocations:
    def __init__(self, cas: CertificateAuthorities, policy: CrlPolicy = CrlPolicy()) -> None:
        self.cas = cas
        self.store = cas.store
        self.policy = policy

    def revoke(
        self,
        serial: int,
        reason: str,
        *,
        ca: str | None = None,
        at: datetime | None = None,
    ) -> CertificateRecord:
        """Revoke (or put on hold, or release a hold with 'removeFromCRL')."""
        if reason.replace("-", "").replace("_", "").lower() == "removefromcrl":
            return self.release_hold(serial, ca=ca)
        reason = reason_name(reason)
        record = self._record(serial, ca)
        if reason == "certificateHold":
            allowed: tuple[str, ...] = ("valid",)
            status = "hold"
        else:
            # RFC 5280 §5.3.1: a held certificate may be revoked for good.
            allowed = ("valid", "hold")
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
        self.publish_crl(record.authority)
        return self._record(serial, record.authority)

    def release_hold(self, serial: int, *, ca: str | None = None) -> CertificateRecord:
        record = self._record(serial, ca)
        if record.status != "hold":
            raise RevocationError(f"certificate {record.serial_hex} is {record.status}, not on hold")
        self.store.set_revocation(
            record.authority_id, serial, status="valid", revoked_at=None, reason=None,
            allowed_from=("hold",),
        )
        self.publish_crl(record.authority)
        return self._record(serial, record.authority)

    def _record(self, serial: int, ca: str | None) -> CertificateRecord:
        try:
            return self.store.certificate(serial, ca)
        except NotFound:
            where = f" under CA {ca!r}" if ca else ""
            raise RevocationError(f"no certificate with serial {serial:x}{where}") from None

    # -- CRLs ------------------------------------------------------------------

    def publish_crl(self, ca: str) -> CrlRecord:
        """Sign and store a new full CRL for CA `ca` (RFC 5280 §5.1)."""
        authority = self.cas.authority(ca)
        if authority.record.kind == "external":
            raise UnknownAuthority(f"CA {ca!r} has no key here; it publishes its own CRL")
        number = self.store.next_crl_number(authority.record.id)
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
        for serial, revoked_at, reason in self.store.revoked_entries(authority.record.id):
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
            crl_number=number, this_update=this_update, next_update=next_update, der=crl_der
        )
        self.store.save_crl(authority.record.id, record)
        return record

    def current_crl(self, ca: str) -> CrlRecord:
        """The latest CRL, re-issued first when older than the refresh interval."""
        authority = self.cas.authority(ca)
        latest = self.store.latest_crl(authority.record.id)
        if latest is None or now() - latest.this_update >= self.policy.refresh:
            return self.publish_crl(ca)
        return latest
