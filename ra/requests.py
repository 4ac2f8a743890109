"""What crosses the boundary between the protocols and the enrolment core.

A protocol module turns its wire message (plus transport facts) into an
EnrolmentRequest carrying typed Evidence, hands it to the core, and turns
the Decision back into its own reply. The protocol has verified what only
it can verify (the CMP MAC or signature, the PKCS#10 self-signature, the TLS
handshake) and says so in the evidence; the core decides what that evidence
may obtain.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes


class Protocol(str, enum.Enum):
    CMP = "cmp"
    EST = "est"
    SCEP = "scep"
    ACTIVATION = "activation"
    CLI = "cli"


class Operation(str, enum.Enum):
    INITIAL = "initial"  # first certificate of a device (ir, simpleenroll, PKCSReq)
    RENEWAL = "renewal"  # same key or new key, authenticated by the current certificate
    REKEY = "rekey"  # kur: new key, authenticated by the current certificate
    REVOCATION = "revocation"  # rr


# -- evidence ------------------------------------------------------------------


@dataclass(frozen=True)
class VendorCertificate:
    """The device signed the request with its factory key (IDevID, IEEE 802.1AR).

    chain: the IDevID first, then whatever intermediates the device sent.
    The protocol verified the signature over the message with chain[0].
    """

    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class TlsClientCertificate:
    """The TLS peer proved possession of chain[0]'s key in the handshake."""

    chain: tuple[x509.Certificate, ...]
    # RFC 7030 §3.5: tls-unique of the session, when the transport has one.
    channel_binding: bytes | None = None


@dataclass(frozen=True)
class SharedSecretReference:
    """The protocol checked a MAC keyed by the secret of this credential
    (CMP senderKID with PBM/PBMAC1). The core decides what it may obtain."""

    reference: str


@dataclass(frozen=True)
class OneTimePin:
    """A one-time enrolment PIN (SCEP challengePassword, activation)."""

    pin: str = field(repr=False)


@dataclass(frozen=True)
class CurrentCertificate:
    """The request is signed with the key of a certificate this PKI issued
    (CMP kur/rr protection, EST re-enrol over TLS, SCEP renewal)."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class TrustedRa:
    """An RA the protocol is configured to trust forwarded this request and
    vouches for the device (RFC 9483 §5.2; CMP [cmp] trusted_ra_certificates).

    The protocol verified the message signature with `certificate` and found
    it in its configured list; the device is the one the request names (the
    template's serialNumber or CN), and must be registered and not blocked.
    """

    certificate: x509.Certificate


@dataclass(frozen=True)
class HttpBasic:
    """HTTP Basic credentials (EST fallback, RFC 7030 §3.2.3)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class VerifiedOneTimePin:
    """A one-time PIN the core checked before storing the request; the PIN
    itself is not kept (it was used up by that check)."""


@dataclass(frozen=True)
class VerifiedHttpBasic:
    """HTTP Basic credentials the core checked before storing the request;
    the password is not kept."""

    username: str


Evidence = Union[
    VendorCertificate,
    TlsClientCertificate,
    SharedSecretReference,
    OneTimePin,
    CurrentCertificate,
    TrustedRa,
    HttpBasic,
    VerifiedOneTimePin,
    VerifiedHttpBasic,
]


# -- the request -----------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentRequest:
    protocol: Protocol
    operation: Operation
    public_key: CertificatePublicKeyTypes | None
    # The protocol verified proof of possession of public_key (CSR signature,
    # CRMF POPO signature); False means the core must refuse with bad_pop.
    pop_verified: bool
    subject: x509.Name = field(default_factory=lambda: x509.Name([]))
    sans: tuple[x509.GeneralName, ...] = ()
    extensions: tuple[x509.Extension[x509.ExtensionType], ...] = ()
    evidence: tuple[Evidence, ...] = ()
    ca: str | None = None  # from the path label, or None for the default
    profile: str | None = None  # from the path label, or None: the device's profile
    # The protocol's transaction identity (CMP transactionID, SCEP
    # transactionID, EST: a hash of the request). Retrying the same
    # transaction returns the same decision, never a second certificate.
    transaction_id: str | None = None
    # Serial claimed by the device where the protocol carries one (SCEP
    # subject serialNumber, activation); authenticated evidence wins.
    claimed_device: str | None = None
    # For revocation: the certificate to revoke and the reason asked for.
    revoke_serial: int | None = None
    revoke_reason: str | None = None
    # The issuer the request names with the serial (CMP certDetails issuer,
    # RFC 9483 §4.2), as Name DER; when given it must be the certificate's.
    revoke_issuer: bytes | None = None
    # The server made the key pair (EST serverkeygen) and does not keep it:
    # such a request cannot wait for manual approval.
    server_generated_key: bool = False
    peer: str | None = None  # remote address, for audit and rate limits
    received_at: datetime | None = None


# -- the decision --------------------------------------------------------------------


class RejectReason(str, enum.Enum):
    NOT_AUTHORIZED = "not_authorized"
    BAD_POP = "bad_pop"
    BAD_REQUEST = "bad_request"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_BLOCKED = "device_blocked"
    POLICY_VIOLATION = "policy_violation"
    BAD_CREDENTIAL = "bad_credential"
    UNTRUSTED_CERTIFICATE = "untrusted_certificate"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_EXPIRED = "certificate_expired"
    TRANSACTION_IN_USE = "transaction_in_use"
    REQUEST_REJECTED = "request_rejected"  # an admin rejected the pending request
    SYSTEM_UNAVAILABLE = "system_unavailable"


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # issuing CA up to the root
    ca_certificates: tuple[x509.Certificate, ...]  # to publish (CMP caPubs: the root)
    device: str | None = None
    # The issuing profile lets the protocol skip the client's confirmation
    # when the client asks (CMP implicitConfirm, RFC 4210 §5.1.1.1).
    implicit_confirm: bool = False


@dataclass(frozen=True)
class Revoked:
    serial: int


@dataclass(frozen=True)
class Pending:
    request_id: str
    retry_after: int  # seconds


@dataclass(frozen=True)
class Rejected:
    reason: RejectReason
    text: str
    retry_after: int | None = None  # set with SYSTEM_UNAVAILABLE (overload)


Decision = Union[Issued, Revoked, Pending, Rejected]
