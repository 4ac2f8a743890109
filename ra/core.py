"""The enrolment core: the one place a request becomes a certificate, a
pending request or a refusal.

    authenticate → idempotency (scoped by identity) → rate limit → device
    → authorize → policy → approve (auto / pending) → issue → audit

Every outcome, refusals included, leaves an audit record. Nothing is kept
in process memory: the store holds the transaction, so any worker answers
a retry the same way.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.csr import check_requested_extensions
from ca.issuer import CertificateAuthorities, IssuanceError, UnknownAuthority, UnknownProfile
from ca.lint import LintError
from ca.profiles import PolicyViolation, Profile
from ca.revocation import RevocationError, Revocations
from storage.db import NotFound, StoreError
from ca.template import IssuanceOrder
from hsm import HsmError
from ra.authenticate import Authenticated, Authenticator, Refusal
from ra.policy import check_device_sans, device_subject
from ra.requests import (
    Decision,
    EnrolmentRequest,
    Issued,
    Operation,
    Pending,
    Rejected,
    RejectReason,
    Revoked,
)

log = logging.getLogger("ztpki.ra")


@dataclass(frozen=True)
class CorePolicy:
    per_device_limit: int = 10  # requests per device per window
    per_device_window: int = 60
    global_limit: int = 200  # requests per global window, all devices
    global_window: int = 1
    poll_interval: int = 30  # seconds a device should wait before polling a pending request


class EnrolmentCore:
    def __init__(
        self,
        *,
        cas: CertificateAuthorities,
        revocations: Revocations,
        trust: Any,
        registry: Any,
        credentials: Any,
        pins: Any,
        audit: Any,
        pending: Any,
        limiter: Any,
        policy: CorePolicy = CorePolicy(),
    ) -> None:
        self.cas = cas
        self.revocations = revocations
        self.registry = registry
        self.audit = audit
        self.pending = pending
        self.limiter = limiter
        self.policy = policy
        self.authenticator = Authenticator(cas, trust, credentials, pins)

    # -- the pipeline ------------------------------------------------------------

    def decide(self, request: EnrolmentRequest) -> Decision:
        """Decide one request; never raises for anything a client can cause."""
        auth: Authenticated | None = None
        try:
            # Authentication comes before any lookup that can return a
            # certificate, and the lookup is scoped by who authenticated: a
            # transactionID travels in clear and proves nothing (RFC 4210
            # §5.1.1), so another party reusing it starts its own transaction.
            auth = self.authenticator.authenticate(request)
            replay = self._replayed(request, auth)
            if replay is not None:
                return replay
            # The global budget is counted only for authenticated requests:
            # counted before, anyone with a self-signed certificate could
            # spend it and make every device hear "busy".
            self._admit("global", self.policy.global_limit, self.policy.global_window, commit=True)
            self.authenticator.spend(auth)
            device = self._device(request, auth)
            self._admit(f"device:{device.serial}", self.policy.per_device_limit, self.policy.per_device_window)
            if request.operation is Operation.REVOCATION:
                return self._revoke(request, auth, device)
            profile = self._authorize(request, auth, device)
            order = self._order(request, profile, device)
            if profile.approval == "manual":
                if request.server_generated_key:
                    # The key is not kept, so an approval later could only
                    # certify a key nobody holds (RFC 7030 §4.4).
                    raise Refusal(RejectReason.POLICY_VIOLATION,
                                  f"profile {profile.name!r} needs approval; a key made by the server cannot wait for it")
                return self._hold(request, auth, device.serial, order)
            return self._issue(request, auth, order)
        except Refusal as refusal:
            return self._refuse(request, auth, refusal)
        except (StoreError, HsmError, IssuanceError) as exc:
            log.exception("enrolment failed on the system side")
            busy = Refusal(RejectReason.SYSTEM_UNAVAILABLE, f"temporarily unable to issue: {exc}", 30)
            return self._refuse(request, auth, busy)

    def _admit(self, key: str, limit: int, window: int, *, commit: bool = False) -> None:
        retry_after = self.limiter.hit([(key, limit, window)], commit=commit)
        if retry_after is not None:
            raise Refusal(RejectReason.SYSTEM_UNAVAILABLE, "busy: retry later", retry_after)

    def _transaction_key(self, request: EnrolmentRequest, auth: Authenticated) -> str | None:
        """The decision record's key: the client's transaction id within the
        authenticated identity (Boulder keys every order by account)."""
        if not request.transaction_id:
            return None
        scope = hashlib.sha256(auth.scope.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"{request.protocol.value}:{request.transaction_id[:200]}@{scope}"

    def _replayed(self, request: EnrolmentRequest, auth: Authenticated) -> Decision | None:
        """A retried transaction of the same identity gets its first answer
        again (never a second certificate)."""
        key = self._transaction_key(request, auth)
        if key is None:
            return None
        record = self.pending.by_transaction(key)
        if record is None:
            return None
        if record.key_fingerprint and record.key_fingerprint != _key_fingerprint(request):
            raise Refusal(RejectReason.TRANSACTION_IN_USE, "transaction id in use by another request")
        return self.result_of(record.id)

    def _device(self, request: EnrolmentRequest, auth: Authenticated) -> Any:
        serial = auth.device
        if serial is None:
            # A batch credential: the device names itself in the request.
            serial = request.claimed_device or _serial_from_subject(request.subject)
            if not serial:
                raise Refusal(RejectReason.BAD_REQUEST, "the request does not name the device")
        elif request.claimed_device and request.claimed_device != serial:
            raise Refusal(RejectReason.NOT_AUTHORIZED, f"credential of {serial} used for {request.claimed_device}")
        device = self.registry.get(serial)
        if device is None:
            device = self._auto_register(request, auth, serial)
        if auth.batch is not None and getattr(device, "batch", auth.batch) not in (None, auth.batch):
            raise Refusal(RejectReason.NOT_AUTHORIZED, f"device {serial} is not in batch {auth.batch}")
        if device.state == "blocked":
            raise Refusal(RejectReason.DEVICE_BLOCKED, f"device {serial} is blocked")
        return device

    def _auto_register(self, request: EnrolmentRequest, auth: Authenticated, serial: str) -> Any:
        profile_name = request.profile
        profile = self._profile_or_none(profile_name)
        if auth.kind == "vendor-certificate" and profile is not None and profile.auto_register:
            return self.registry.register(serial=serial, vendor=auth.vendor, profile=profile.name)
        raise Refusal(RejectReason.UNKNOWN_DEVICE, f"device {serial} is not in the registry")

    def _profile_or_none(self, name: str | None) -> Profile | None:
        if name is None:
            return None
        try:
            return self.cas.profile(name)
        except UnknownProfile:
            return None

    def _authorize(self, request: EnrolmentRequest, auth: Authenticated, device: Any) -> Profile:
        if request.operation in (Operation.RENEWAL, Operation.REKEY) and auth.kind != "current-certificate":
            raise Refusal(RejectReason.NOT_AUTHORIZED, "renewal needs the current certificate")
        name = device.profile or auth.profile
        if name is None:
            # DESIGN F3: a device assigned to no profile gets nothing.
            raise Refusal(RejectReason.NOT_AUTHORIZED, f"device {device.serial} has no profile assigned")
        if request.profile and request.profile != name:
            raise Refusal(RejectReason.NOT_AUTHORIZED, f"device {device.serial} may not use profile {request.profile!r}")
        if auth.profile and auth.profile != name:
            raise Refusal(RejectReason.NOT_AUTHORIZED, f"credential is for profile {auth.profile!r}, not {name!r}")
        try:
            return self.cas.profile(name)
        except UnknownProfile as exc:
            raise Refusal(RejectReason.NOT_AUTHORIZED, str(exc)) from None

    def _order(self, request: EnrolmentRequest, profile: Profile, device: Any) -> IssuanceOrder:
        if request.public_key is None:
            raise Refusal(RejectReason.BAD_REQUEST, "the request carries no public key")
        if not request.pop_verified:
            raise Refusal(RejectReason.BAD_POP, "proof of possession of the key was not verified")
        try:
            if profile.excess_extensions == "refuse":
                check_requested_extensions(x509.Extensions(list(request.extensions)), profile)
            profile.check_public_key(request.public_key)
        except PolicyViolation as exc:
            raise Refusal(RejectReason.POLICY_VIOLATION, str(exc)) from None
        registered = device.public_key
        if registered is not None and registered != _spki(request.public_key):
            # The production line registered the device's key: only that key.
            raise Refusal(RejectReason.POLICY_VIOLATION, "the key is not the one registered for the device")
        sans = check_device_sans(request.sans, device, profile)
        return IssuanceOrder(
            ca=request.ca or self.cas.default_ca or "",
            profile=profile.name,
            subject=device_subject(device.serial, device.tenant, profile),
            public_key=request.public_key,
            sans=sans,
            device_id=device.serial,
        )

    # -- outcomes ------------------------------------------------------------------

    def _issue(self, request: EnrolmentRequest, auth: Authenticated, order: IssuanceOrder) -> Decision:
        from ra.serialize import encode_request

        try:
            issued = self.cas.issue(order)
        except (PolicyViolation, LintError) as exc:
            raise Refusal(RejectReason.POLICY_VIOLATION, str(exc)) from None
        except UnknownAuthority as exc:
            raise Refusal(RejectReason.NOT_AUTHORIZED, str(exc)) from None
        key = self._transaction_key(request, auth)
        if key is not None:
            self.pending.record_decision(
                key, protocol=request.protocol.value, operation=request.operation.value,
                device_serial=order.device_id, ca=order.ca, profile=order.profile,
                status="issued", certificate_serial=format(issued.serial, "x"),
                key_fingerprint=_key_fingerprint(request), request_bytes=encode_request(request),
            )
        if order.device_id:
            self.registry.mark_active(order.device_id)
        self._audit(request, auth, order.device_id, "issued", None, issued.serial)
        root = issued.chain[-1]
        return Issued(
            certificate=issued.certificate, chain=issued.chain, ca_certificates=(root,), device=order.device_id,
            implicit_confirm=self._implicit_confirm(order.profile),
        )

    def _implicit_confirm(self, profile_name: str | None) -> bool:
        profile = self._profile_or_none(profile_name)
        return profile is not None and profile.implicit_confirm

    def _hold(self, request: EnrolmentRequest, auth: Authenticated, serial: str, order: IssuanceOrder) -> Decision:
        from ra.serialize import encode_request

        record = self.pending.begin(
            self._transaction_key(request, auth) or f"{request.protocol.value}:auto:{_key_fingerprint(request)}",
            protocol=request.protocol.value, operation=request.operation.value, device_serial=serial,
            ca=order.ca, profile=order.profile, request_bytes=encode_request(request),
            key_fingerprint=_key_fingerprint(request),
        )
        self._audit(request, auth, serial, "pending", None, None, {"request_id": record.id})
        return Pending(request_id=record.id, retry_after=self.policy.poll_interval)

    def _revoke(self, request: EnrolmentRequest, auth: Authenticated, device: Any) -> Decision:
        serial = request.revoke_serial
        if serial is None:
            raise Refusal(RejectReason.BAD_REQUEST, "no certificate named to revoke")
        try:
            record = self.cas.store.certificate(serial)
        except NotFound:
            raise Refusal(RejectReason.BAD_REQUEST, f"no certificate {serial:x}") from None
        if request.revoke_issuer is not None:
            issuer = self.cas.authority(record.authority).certificate.subject.public_bytes()
            if request.revoke_issuer != issuer:
                raise Refusal(RejectReason.BAD_REQUEST, f"no certificate {serial:x} from the issuer named")
        if record.device_id != device.serial:
            raise Refusal(RejectReason.NOT_AUTHORIZED, f"certificate {serial:x} is not device {device.serial}'s")
        try:
            self.revocations.revoke(serial, request.revoke_reason or "unspecified", ca=record.authority)
        except RevocationError as exc:
            raise Refusal(RejectReason.BAD_REQUEST, str(exc)) from None
        self._audit(request, auth, device.serial, "revoked", request.revoke_reason, serial)
        return Revoked(serial=serial)

    def _refuse(self, request: EnrolmentRequest, auth: Authenticated | None, refusal: Refusal,
                *, approved: bool = False) -> Rejected:
        try:
            if auth is None and not approved:
                # Nobody authenticated: counted per source and reason, not
                # chained, so a flood cannot fill the disk (issue 10, 6c).
                self.audit.note_noise(protocol=request.protocol.value, source=request.peer, reason=refusal.reason.value,
                                      detail={"operation": request.operation.value, "text": refusal.text,
                                              "claimed": request.claimed_device, "transaction": request.transaction_id})
            else:
                self._audit(request, auth, auth.device if auth else request.claimed_device,
                            "rejected", refusal.reason.value, None, {"text": refusal.text})
        except StoreError:
            log.exception("could not write the audit record of a refusal")
        return Rejected(reason=refusal.reason, text=refusal.text, retry_after=refusal.retry_after)

    def _audit(self, request: EnrolmentRequest, auth: Authenticated | None, device: str | None,
               outcome: str, reason: str | None, serial: int | None, details: dict[str, Any] | None = None) -> None:
        evidence = [type(e).__name__ for e in request.evidence]
        if auth is not None:
            evidence = [f"{auth.kind}:{auth.detail}"] + evidence
        self.audit.append(
            actor=device or "anonymous",
            protocol=request.protocol.value,
            operation=request.operation.value,
            device=device,
            evidence=evidence,
            outcome=outcome,
            reason=reason,
            serial=format(serial, "x") if serial is not None else None,
            details={**(details or {}), "transaction": request.transaction_id, "peer": request.peer},
        )

    # -- pending requests ----------------------------------------------------------

    def result_of(self, request_id: str) -> Decision:
        """What a device polling a pending request gets (CMP pollReq, SCEP
        CertPoll, EST retry): the certificate once approved, never a second one."""
        record = self.pending.get(request_id)
        if record is None:
            return Rejected(RejectReason.BAD_REQUEST, f"no request {request_id}")
        if record.status == "approved":
            return self.issue_approved(request_id)
        if record.status == "issued" and record.certificate_serial:
            stored = self.cas.store.certificate(int(record.certificate_serial, 16), record.ca)
            certificate = x509.load_der_x509_certificate(stored.der or b"")
            chain = self.cas.authority(record.ca).chain
            return Issued(
                certificate=certificate, chain=chain, ca_certificates=(chain[-1],), device=record.device_serial,
                implicit_confirm=self._implicit_confirm(record.profile),
            )
        if record.status == "rejected":
            return Rejected(RejectReason.REQUEST_REJECTED, record.reject_text or "rejected by an administrator")
        if record.status == "failed":
            return Rejected(RejectReason(record.reject_reason or "system_unavailable"), record.reject_text or "failed")
        return Pending(request_id=record.id, retry_after=self.policy.poll_interval)

    def issue_approved(self, request_id: str) -> Decision:
        """Issue for an approved request; idempotent (mark_issued decides once)."""
        from ra.serialize import decode_request

        record = self.pending.get(request_id)
        if record is None or record.status not in ("approved", "issued"):
            return self.result_of(request_id) if record else Rejected(RejectReason.BAD_REQUEST, "no such request")
        if record.status == "issued":
            return self.result_of(request_id)
        request = decode_request(record.request)
        try:
            device = self.registry.get(record.device_serial)
            if device is None or device.state == "blocked":
                raise Refusal(RejectReason.DEVICE_BLOCKED, f"device {record.device_serial} is blocked or gone")
            profile = self.cas.profile(record.profile)
            order = self._order(request, profile, device)
            issued = self.cas.issue(order)
        except Refusal as refusal:
            self.pending.mark_failed(request_id, refusal.reason.value, refusal.text)
            return self._refuse(request, None, refusal, approved=True)
        final = self.pending.mark_issued(request_id, format(issued.serial, "x"))
        if final.certificate_serial != format(issued.serial, "x"):
            # Another worker issued first; ours is revoked so one certificate stands.
            self.revocations.revoke(issued.serial, "superseded", ca=order.ca)
            return self.result_of(request_id)
        self.registry.mark_active(device.serial)
        self._audit(request, None, device.serial, "issued", "approved", issued.serial, {"request_id": request_id})
        return self.result_of(request_id)


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _key_fingerprint(request: EnrolmentRequest) -> str:
    if request.public_key is None:
        return ""
    return hashlib.sha256(_spki(request.public_key)).hexdigest()[:32]


def _serial_from_subject(subject: x509.Name) -> str | None:
    for oid in (x509.oid.NameOID.SERIAL_NUMBER, x509.oid.NameOID.COMMON_NAME):
        values = subject.get_attributes_for_oid(oid)
        if values and isinstance(values[0].value, str):
            return values[0].value
    return None
