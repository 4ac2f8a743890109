"""What only the EST layer can check about a request (RFC 7030 §3.2.3,
§3.5, §4.2.2), and its transaction identity. Each failure is an
EstRefusal carrying the HTTP status it is answered with."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from protocols.est.codec import CsrFacts
from ra.requests import HttpBasic

REALM = 'Basic realm="ztpki EST"'  # RFC 7030 §3.2.3, RFC 7617 §2

ServerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class EstRefusal(Exception):
    """A request refused at the EST level; answered with a text reason."""

    def __init__(self, status: int, reason: str, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.reason = reason
        self.text = text
        self.headers = headers or {}


def basic_credentials(authorization: str | None) -> HttpBasic | None:
    """RFC 7617 §2: Basic base64(user-id ":" password), UTF-8 (§2.1)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise EstRefusal(401, "bad_credential", "only HTTP Basic authentication is supported", {"WWW-Authenticate": REALM})
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise EstRefusal(401, "bad_credential", "malformed Basic credentials", {"WWW-Authenticate": REALM}) from None
    username, colon, password = decoded.partition(":")
    if not colon or not username or len(username) > 128 or len(password) > 256:
        raise EstRefusal(401, "bad_credential", "malformed Basic credentials", {"WWW-Authenticate": REALM})
    return HttpBasic(username, password)


def check_channel_binding(facts: CsrFacts, tls_unique: bytes | None) -> None:
    """RFC 7030 §3.5: a challengePassword, when the session has tls-unique,
    must be its base64. Never required: TLS 1.3 and a terminating proxy
    have none (STANDARDS.md), and then the attribute is ignored."""
    if facts.challenge_password is None or tls_unique is None:
        return
    expected = base64.b64encode(tls_unique)
    if not hmac.compare_digest(facts.challenge_password.strip().encode("utf-8"), expected):
        raise EstRefusal(403, "channel_binding", "the challengePassword is not this TLS session's tls-unique")


def check_reenrolment(facts: CsrFacts, current: x509.Certificate) -> None:
    """RFC 7030 §4.2.2: the CSR's subject and SANs are those of the
    certificate being renewed; that certificate authenticates a TLS client.
    (Unexpired, unrevoked and the device's own: the core checks those.)"""
    try:
        usages = current.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    except ValueError:
        raise EstRefusal(403, "not_authorized", "the client certificate's extensions do not parse") from None
    if usages is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise EstRefusal(403, "not_authorized", "the client certificate has no clientAuth extended key usage")
    if facts.subject != current.subject:
        raise EstRefusal(400, "bad_request", "simplereenroll: the CSR subject differs from the current certificate's")
    try:
        current_sans = set(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        current_sans = set()
    if set(facts.sans) != current_sans:
        raise EstRefusal(400, "bad_request", "simplereenroll: the CSR SANs differ from the current certificate's")


def fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def transaction_id(
    operation: str,
    facts: CsrFacts,
    chain: tuple[x509.Certificate, ...] | None,
    basic: HttpBasic | None,
    server_key: ServerKey | None,
) -> str:
    """The same request from the same client gets the same id (RFC 7030
    §4.2.3: a client polls by resending). The Basic password is part of it,
    so a resend with a wrong password is a new transaction and meets the
    credential check; ztpki passwords carry 144 random bits, so the hash
    reveals nothing guessable. serverkeygen keys are never kept, so each
    call is its own transaction."""
    digest = hashlib.sha256()
    for part in (operation.encode("ascii"), facts.der):
        digest.update(len(part).to_bytes(4, "big") + part)
    if chain is not None:
        digest.update(b"tls" + bytes.fromhex(fingerprint(chain[0])))
    if basic is not None:
        secret = f"{basic.username}\0{basic.password}".encode()
        digest.update(b"basic" + len(secret).to_bytes(4, "big") + secret)
    if server_key is not None:
        spki = server_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest.update(b"key" + spki)
    return digest.hexdigest()
