"""The checks every CMP message passes before its body is read (RFC 9483
§3.1–§3.5): header values, protection (MAC or signature, RFC 9483 §3.2,
RFC 9481), the retransmission of a transaction's last message, and the
senderNonce replay check. CmpServer (server.py) inherits them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocols.cmp import codec
from protocols.cmp.bodies import FailInfo
from protocols.cmp.context import CmpPolicy, MacGuard, Route, ServerIdentity, Transactions
from protocols.cmp.protection import (
    MacAlgorithm,
    ProtectionError,
    is_mac_protected,
    verify_mac_protection,
    verify_signature_protection,
)
from protocols.cmp.refusals import CmpRefusal
from ra.requests import CurrentCertificate, Evidence, SharedSecretReference, TrustedRa, VendorCertificate

# RFC 9483 §3.1 asks for 128-bit values; the store keeps up to 64 octets.
MAX_ID_SIZE = 64

# Messages that belong to a transaction whose reply the store keeps.
TRANSACTION_MESSAGES = frozenset({"ir", "cr", "p10cr", "kur", "certConf", "pollReq", "rr"})


@dataclass
class Exchange:
    """One request as verified so far, and how its reply is protected."""

    message: codec.PkiMessage
    route: Route
    identity: ServerIdentity
    peer: str | None
    sender: str = ""  # transaction identity: "kid:<hex>" or "cert:<sha256 hex>"
    secret: bytes | None = field(default=None, repr=False)
    mac: MacAlgorithm | None = None
    evidence: tuple[Evidence, ...] = ()
    trusted_ra: x509.Certificate | None = None  # signed by an RA of policy.trusted_ras
    request_hash: bytes = b""  # SHA-256 of the request as received: spots a retransmission

    @property
    def transaction_id(self) -> bytes:
        return self.message.header.transaction_id or b""


class MessageChecks:
    """What CmpServer checks of every message; its fields are CmpServer's."""

    clock: Callable[[], datetime]
    policy: CmpPolicy
    transactions: Transactions
    mac_secret: Callable[[str, bool], bytes | None]
    mac_guard: MacGuard | None

    # -- checks common to every message (RFC 9483 §3.1–§3.5) -------------------------

    def _check(self, exchange: Exchange) -> bytes | None:
        """Refuse what fails a common check; the retained reply if the message
        is a retransmission of its transaction's last message."""
        header = exchange.message.header
        if header.pvno not in (2, 3):
            raise CmpRefusal(FailInfo.UNSUPPORTED_VERSION, "pvno %d is not supported" % header.pvno)
        if not header.transaction_id or not header.sender_nonce:
            raise CmpRefusal(FailInfo.BAD_REQUEST, "transactionID and senderNonce are required (RFC 9483 §3.1)")
        if len(header.transaction_id) > MAX_ID_SIZE or len(header.sender_nonce) > MAX_ID_SIZE:
            raise CmpRefusal(FailInfo.BAD_REQUEST, "transactionID or senderNonce longer than %d octets" % MAX_ID_SIZE)
        if header.message_time is not None:
            skew = abs(header.message_time - self.clock())
            if skew > self.policy.message_time_tolerance:
                raise CmpRefusal(FailInfo.BAD_TIME, "messageTime is %d s off" % skew.total_seconds())
        self._verify_protection(exchange)
        if exchange.message.body_type in TRANSACTION_MESSAGES and exchange.sender:
            # RFC 4210 §5.1.1, RFC 9483 §3.5: a client whose reply was lost
            # sends the same message again (same senderNonce) and must get
            # the same answer. Only the sender that protected the original
            # (verified just above) gets it back; nothing changes state.
            retained = self.transactions.retained_reply(exchange.transaction_id, exchange.sender, exchange.request_hash)
            if retained is not None:
                return retained
        if not self.transactions.first_use_of_nonce(header.sender_nonce):
            raise CmpRefusal(FailInfo.BAD_SENDER_NONCE, "senderNonce was used before (replay)")
        return None

    def _verify_protection(self, exchange: Exchange) -> None:
        message = exchange.message
        header = message.header
        if header.protection_alg is None:
            if message.body_type == "genm" and self.policy.allow_unprotected_genm:
                exchange.sender = "none"
                return
            raise CmpRefusal(FailInfo.BAD_MESSAGE_CHECK, "message is not protected (RFC 9483 §3.2)")
        try:
            if is_mac_protected(message):
                self._verify_mac(exchange)
                return
            signer = verify_signature_protection(message)
        except ProtectionError as exc:
            raise CmpRefusal(exc.fail_info, exc.reason) from None
        except codec.CmpDecodeError as exc:
            raise CmpRefusal(exc.fail_info, exc.reason) from None
        signer_der = signer.public_bytes(serialization.Encoding.DER)
        exchange.sender = "cert:" + hashlib.sha256(signer_der).hexdigest()
        chain = message.extra_certs
        if self.policy.trusted_ra(signer) is not None:
            moment = self.clock()
            if not signer.not_valid_before_utc <= moment <= signer.not_valid_after_utc:
                raise CmpRefusal(FailInfo.SIGNER_NOT_TRUSTED, "the trusted RA's certificate is not valid now")
            exchange.trusted_ra = signer
        if message.body_type in ("kur", "rr"):
            # RFC 4210 §5.3.5, RFC 9483 §4.1.3/§4.2: protected with the certificate to update or revoke.
            exchange.evidence = (CurrentCertificate(chain[0], tuple(chain[1:])),)
        elif exchange.trusted_ra is not None:
            # RFC 9483 §5.2: an RA forwards the request under its own protection
            # and vouches for the device the template names.
            exchange.evidence = (TrustedRa(signer),)
        else:
            # TS 33.310 §9.5.3: the vendor IDevID and its chain (the core also
            # recognises a certificate of ours, for cr with an operator certificate).
            exchange.evidence = (VendorCertificate(tuple(chain)),)

    def _continues(self, exchange: Exchange, sender: str) -> bool:
        return self.transactions.get(exchange.transaction_id, sender) is not None

    def _verify_mac(self, exchange: Exchange) -> None:
        header = exchange.message.header
        reference = (header.sender_kid or b"").decode("utf-8", "replace")
        guard, peer = self.mac_guard, exchange.peer
        if guard is not None:
            # Issue 10, finding 6b: each wrong guess costs the server a key
            # derivation, so after too many failures for this senderKID or
            # from this address the MAC is not even computed.
            wait = guard.refused(reference, peer)
            if wait is not None:
                raise CmpRefusal(
                    FailInfo.BAD_MESSAGE_CHECK,
                    "too many failed MACs for this senderKID or from this address; retry in %d s" % wait,
                )
        within = exchange.message.body_type in ("certConf", "pollReq")
        secret = self.mac_secret(reference, within) if reference else None
        if secret is None and reference and not within and self._continues(exchange, "kid:" + (header.sender_kid or b"").hex()[:72]):
            # The retransmission of a request that took the credential's last use.
            secret = self.mac_secret(reference, True)
        if secret is None:
            if guard is not None:
                guard.failed(None, peer)
            raise CmpRefusal(FailInfo.BAD_MESSAGE_CHECK, "no usable shared secret for senderKID %r" % reference[:64])
        try:
            exchange.mac = verify_mac_protection(exchange.message, secret, self.policy.max_mac_iterations)
        except ProtectionError as exc:
            if guard is not None and exc.fail_info == FailInfo.BAD_MESSAGE_CHECK:
                guard.failed(reference, peer)
            raise
        exchange.secret = secret
        exchange.sender = "kid:" + (header.sender_kid or b"").hex()[:72]
        exchange.evidence = (SharedSecretReference(reference),)
