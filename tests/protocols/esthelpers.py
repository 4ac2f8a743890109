"""Client-side pieces for the EST tests: CSRs, Basic headers, reply decoding."""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(
    key: ec.EllipticCurvePrivateKey | None = None,
    *,
    subject: x509.Name | None = None,
    cn: str = "ucpe",
    sans: Iterable[x509.GeneralName] = (),
    extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
    challenge_password: bytes | None = None,
) -> bytes:
    """A DER PKCS#10 request signed with key."""
    key = key or new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    sans = list(sans)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    if challenge_password is not None:
        builder = builder.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, challenge_password)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def certs_of(body: bytes) -> list[x509.Certificate]:
    """The certificates of a base64 certs-only reply (RFC 7030 §4.1.3)."""
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))


def multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(content type, decoded payload) of each part of a multipart reply."""
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body, policy=email.policy.HTTP
    )
    assert message.is_multipart()
    return [(part.get_content_type() + _params(part), part.get_payload(decode=True)) for part in message.iter_parts()]


def _params(part: email.message.Message) -> str:
    smime = part.get_param("smime-type")
    return f"; smime-type={smime}" if smime else ""
