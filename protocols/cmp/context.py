"""What the composition root hands the CMP server: the transaction store it
talks to, the identity that signs replies, the route a path label selects,
and the server's policy (RFC 9483 §3, §6.1)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from cryptography import x509

from protocols.cmp import der, macs
from protocols.cmp.protection import Signer


class Transactions(Protocol):
    """What the server needs of ra.transactions.CmpTransactions."""

    def first_use_of_nonce(self, nonce: bytes) -> bool: ...
    def begin(self, transaction_id: bytes, sender: str, body_type: str) -> bool: ...
    def get(self, transaction_id: bytes, sender: str) -> Any: ...
    def record_issued(self, transaction_id: bytes, sender: str, *, ca: str | None, certificate: bytes,
                      serial: int, cert_req_id: int, implicit_confirm: bool) -> bool: ...
    def record_pending(self, transaction_id: bytes, sender: str, request_id: str, cert_req_id: int) -> bool: ...
    def record_rejected(self, transaction_id: bytes, sender: str) -> bool: ...
    def record_done(self, transaction_id: bytes, sender: str) -> bool: ...
    def confirm(self, transaction_id: bytes, sender: str) -> bool: ...
    def reject_confirmation(self, transaction_id: bytes, sender: str) -> bool: ...
    def expire_unconfirmed(self) -> int: ...
    def retain_reply(self, transaction_id: bytes, sender: str, request_hash: bytes, reply: bytes) -> None: ...
    def last_reply(self, transaction_id: bytes, sender: str) -> bytes | None: ...
    def retained_reply(self, transaction_id: bytes, sender: str, request_hash: bytes) -> bytes | None: ...


class MacGuard(Protocol):
    """Counts failed shared-secret MACs by senderKID and by source address
    (the store-backed limiter, wired by the composition root), so that a
    guesser is refused before the key derivation a wrong guess costs."""

    def refused(self, reference: str, peer: str | None) -> int | None:
        """Seconds to wait when the reference or the address has failed too often; None otherwise."""
        ...

    def failed(self, reference: str | None, peer: str | None) -> None:
        """Count one failure (reference None: no secret behind the senderKID)."""
        ...


@dataclass(frozen=True)
class ServerIdentity:
    """The key that signs replies and its certificates (RFC 9483 §3.2, §3.3)."""

    signer: Signer
    certificate: x509.Certificate
    chain: tuple[bytes, ...]  # DER: the protection certificate first, then its chain

    @property
    def sender(self) -> bytes:
        # GeneralName directoryName [4] (RFC 5280 §4.2.1.6), explicit: Name is a CHOICE.
        return der.wrap(0xA4, self.certificate.subject.public_bytes())

    @property
    def key_id(self) -> bytes:
        try:
            return self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(self.certificate.public_key()).digest


@dataclass(frozen=True)
class CmpPolicy:
    message_time_tolerance: timedelta = timedelta(minutes=10)  # RFC 9483 §3.1 messageTime
    # RFC 4210 §5.1.1.1; granted only when the issuing profile allows it too
    # (the core's Issued.implicit_confirm).
    allow_implicit_confirm: bool = True
    # RFC 9483 §3.2 asks for protection on every message; an unprotected genm
    # is answered only where the operator opts in ([cmp]).
    allow_unprotected_genm: bool = False
    max_mac_iterations: int = macs.MAX_ITERATIONS  # PBM / PBMAC1 iterationCount cap
    # RFC 9483 §5.2, RFC 4211 §4: RAs whose signature-protected requests may
    # carry raVerified POP; matched by certificate or by public key, no chain.
    trusted_ras: tuple[x509.Certificate, ...] = ()

    def trusted_ra(self, signer: x509.Certificate) -> x509.Certificate | None:
        """The configured RA certificate the signer is, by DER or by SPKI."""
        for ra in self.trusted_ras:
            if ra == signer or ra.public_key() == signer.public_key():
                return ra
        return None


@dataclass(frozen=True)
class Route:
    """What a path label selects: an issuing CA and/or a profile (RFC 9483 §6.1)."""

    ca: str | None = None
    profile: str | None = None
