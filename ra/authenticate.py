"""Evidence → who is asking (step one of the core's pipeline).

Each kind of evidence names a device, or a batch credential that covers
devices named elsewhere in the request. Nothing here decides what the
device may obtain; it only establishes identity, or refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Protocol as TypingProtocol
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ca.issuer import CertificateAuthorities
from storage.db import NotFound
from ra.requests import (
    CurrentCertificate,
    EnrolmentRequest,
    Evidence,
    HttpBasic,
    OneTimePin,
    RejectReason,
    SharedSecretReference,
    TlsClientCertificate,
    TrustedRa,
    VendorCertificate,
)


class Refusal(Exception):
    """A request the core refuses; carries the reason every protocol maps."""

    def __init__(self, reason: RejectReason, text: str, retry_after: int | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text
        self.retry_after = retry_after


@dataclass(frozen=True)
class Authenticated:
    """Who the evidence proves the requester to be."""

    kind: str  # vendor-certificate | current-certificate | mac | password | pin | trusted-ra
    device: str | None  # device serial, when the evidence is bound to one
    batch: str | None = None  # batch credential: the device comes from the request
    vendor: str | None = None
    profile: str | None = None  # a credential restricted to one profile
    current_serial: int | None = None  # for renewal: the certificate presented
    detail: str = ""  # for the audit record (reference, fingerprint)
    # Who proved possession, in full (a certificate's whole SHA-256, a
    # credential's reference): what retries and transactions are scoped by.
    principal: str = ""
    # Credentials whose use is spent only once the request is not a retry
    # (Authenticator.spend): a resend must not use up a one-time credential.
    spends: tuple[str, ...] = ()

    @property
    def scope(self) -> str:
        """A stable name for the authenticated identity (kind and principal)."""
        return f"{self.kind}:{self.principal or self.detail}"


class VendorValidator(TypingProtocol):
    def validate(self, chain: Sequence[x509.Certificate], *, at: datetime | None = None) -> object: ...


def _fingerprint(certificate: x509.Certificate) -> str:
    return _full_fingerprint(certificate)[:16]


def _full_fingerprint(certificate: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return certificate.fingerprint(hashes.SHA256()).hex()


def issued_by_us(cas: CertificateAuthorities, certificate: x509.Certificate) -> str | None:
    """The name of our CA that issued this certificate, if any."""
    try:
        issuer = certificate.issuer
    except ValueError:
        # cryptography reads the issuer lazily: a client's certificate whose
        # issuer does not parse is none of ours (the vendor path refuses it).
        return None
    for record in cas.store.list_authorities():
        if record.kind != "issuing":
            continue
        authority = cas.authority(record.name)
        if issuer != authority.certificate.subject:
            continue
        try:
            certificate.verify_directly_issued_by(authority.certificate)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return record.name
    return None


class Authenticator:
    def __init__(self, cas: CertificateAuthorities, trust: VendorValidator, credentials: object, pins: object) -> None:
        self.cas = cas
        self.trust = trust
        self.credentials = credentials
        self.pins = pins

    def authenticate(self, request: EnrolmentRequest) -> Authenticated:
        """Every piece of evidence presented must hold, and the strongest
        names who is asking; a request with none is refused.

        Evidence that fails (revoked, expired, untrusted, a wrong password)
        fails the request with its own reason: a weaker piece that would pass
        is never a fallback (an EST client presenting a revoked certificate
        and a good password is refused). Strongest first, so a failing
        certificate is refused before a password is checked or a PIN redeemed.

        A credential with uses is checked but not spent here: the core spends
        each (spend) once it knows the request is not a retry."""
        if not request.evidence:
            raise Refusal(RejectReason.NOT_AUTHORIZED, "the request carries no authentication")
        proven = [self._one(evidence, request) for evidence in sorted(request.evidence, key=_strength)]
        devices = {found.device for found in proven if found.device is not None}
        if len(devices) > 1:
            raise Refusal(RejectReason.NOT_AUTHORIZED, "the evidence names different devices: " + ", ".join(sorted(devices)))
        # Every credential presented is spent, not only the strongest: a
        # one-time password sent beside a certificate is used up too.
        return replace(proven[0], spends=tuple(ref for found in proven for ref in found.spends))

    def spend(self, auth: Authenticated) -> None:
        """Use each presented credential once, now that the request is new (not a retry)."""
        for reference in auth.spends:
            if not self.credentials.consume(reference):  # type: ignore[attr-defined]
                raise Refusal(RejectReason.BAD_CREDENTIAL, f"credential {reference} is used up or expired")

    def _one(self, evidence: Evidence, request: EnrolmentRequest) -> Authenticated:
        if isinstance(evidence, (VendorCertificate, TlsClientCertificate)):
            chain = evidence.chain
            if not chain:
                raise Refusal(RejectReason.BAD_REQUEST, "an empty certificate chain")
            # EST re-enrolment: the TLS client certificate is one of ours.
            ours = issued_by_us(self.cas, chain[0])
            if ours is not None:
                return self._current(chain[0], ours)
            return self._vendor(chain)
        if isinstance(evidence, CurrentCertificate):
            ours = issued_by_us(self.cas, evidence.certificate)
            if ours is None:
                raise Refusal(RejectReason.UNTRUSTED_CERTIFICATE, "the certificate was not issued by this PKI")
            return self._current(evidence.certificate, ours)
        if isinstance(evidence, SharedSecretReference):
            return self._mac(evidence.reference)
        if isinstance(evidence, HttpBasic):
            return self._password(evidence)
        if isinstance(evidence, OneTimePin):
            return self._pin(evidence, request)
        if isinstance(evidence, TrustedRa):
            # The protocol matched the signer against its configured RAs; the
            # RA vouches for the device the request names, which the core's
            # device step requires to be registered and not blocked.
            return Authenticated(
                kind="trusted-ra", device=None, detail=_fingerprint(evidence.certificate),
                principal=_full_fingerprint(evidence.certificate),
            )
        raise Refusal(RejectReason.BAD_REQUEST, f"unsupported evidence {type(evidence).__name__}")

    def _vendor(self, chain: Sequence[x509.Certificate]) -> Authenticated:
        from vendor_trust.anchors import VendorTrustError

        try:
            identity = self.trust.validate(chain)
        except VendorTrustError as exc:
            # Each error names its reason: untrusted_certificate,
            # certificate_expired, certificate_revoked or bad_request.
            raise Refusal(RejectReason(exc.reason), str(exc)) from None
        serial = getattr(identity, "serial")
        vendor = getattr(identity, "vendor")
        return Authenticated(
            kind="vendor-certificate", device=serial, vendor=vendor, detail=_fingerprint(chain[0]),
            principal=_full_fingerprint(chain[0]),
        )

    def _current(self, certificate: x509.Certificate, ca: str) -> Authenticated:
        try:
            record = self.cas.store.certificate(certificate.serial_number, ca)
        except NotFound:
            raise Refusal(RejectReason.UNTRUSTED_CERTIFICATE, "the certificate is not in the store") from None
        if record.status in ("revoked", "hold"):
            raise Refusal(RejectReason.CERTIFICATE_REVOKED, f"certificate {record.serial_hex} is revoked")
        if record.status != "valid":
            raise Refusal(RejectReason.UNTRUSTED_CERTIFICATE, f"certificate {record.serial_hex} was never issued")
        now = datetime.now(timezone.utc)
        if not record.not_before <= now < record.not_after:
            raise Refusal(RejectReason.CERTIFICATE_EXPIRED, f"certificate {record.serial_hex} is not valid now")
        if record.device_id is None:
            raise Refusal(RejectReason.NOT_AUTHORIZED, f"certificate {record.serial_hex} belongs to no device")
        return Authenticated(
            kind="current-certificate",
            device=record.device_id,
            current_serial=record.serial,
            detail=record.serial_hex,
            principal=f"{ca}:{record.serial_hex}",
        )

    def _mac(self, reference: str) -> Authenticated:
        from vendor_trust.credentials import BadCredential

        try:
            # Used up is not yet a refusal: a retry of the request that took
            # the last use gets its first answer (spend refuses the rest).
            credential = self.credentials.mac_secret(reference, allow_used_up=True)  # type: ignore[attr-defined]
        except BadCredential as exc:
            raise Refusal(RejectReason.BAD_CREDENTIAL, str(exc)) from None
        return Authenticated(
            kind="mac",
            device=credential.device_serial,
            batch=credential.batch,
            profile=credential.profile,
            detail=reference,
            principal=reference,
            spends=(reference,),
        )

    def _password(self, evidence: HttpBasic) -> Authenticated:
        from vendor_trust.credentials import BadCredential

        try:
            info = self.credentials.verify_password(  # type: ignore[attr-defined]
                evidence.username, evidence.password, allow_used_up=True
            )
        except BadCredential as exc:
            raise Refusal(RejectReason.BAD_CREDENTIAL, str(exc)) from None
        return Authenticated(
            kind="password",
            device=info.device_serial,
            batch=info.batch,
            profile=info.profile,
            detail=evidence.username,
            principal=evidence.username,
            spends=(evidence.username,),
        )

    def _pin(self, evidence: OneTimePin, request: EnrolmentRequest) -> Authenticated:
        from vendor_trust.pins import PinRejected

        device = request.claimed_device
        if not device:
            raise Refusal(RejectReason.BAD_REQUEST, "a PIN needs the device's serial in the request")
        try:
            self.pins.redeem(device, evidence.pin)  # type: ignore[attr-defined]
        except PinRejected as exc:
            raise Refusal(RejectReason.BAD_CREDENTIAL, f"PIN refused: {exc}") from None
        return Authenticated(kind="pin", device=device, detail="pin", principal=device)


_ORDER = {
    CurrentCertificate: 0,
    VendorCertificate: 1,
    TlsClientCertificate: 2,
    SharedSecretReference: 3,
    HttpBasic: 4,
    OneTimePin: 5,
    TrustedRa: 6,
}


def _strength(evidence: Evidence) -> int:
    return _ORDER.get(type(evidence), 9)
