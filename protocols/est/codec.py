"""EST bodies (RFC 7030 §4, clarified by RFC 8951 §3): bytes ⇄ values, sans-I/O.

Requests: a PKCS#10 CSR in base64. Real clients differ, so decode_body
accepts line breaks and any whitespace, PEM armour, a missing or a present
Content-Transfer-Encoding, and (RFC 8951 §3.2 says base64, but some clients
send binary) a raw DER body when it is unmistakably one DER SEQUENCE.
Replies: certs-only CMS, CsrAttrs and the serverkeygen multipart, base64 in
lines. Every failure of a client's bytes is an EstCodecError, nothing else.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from asn1crypto import core as asn1
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AttributeOID, ExtensionOID

MAX_BODY_BYTES = 128 * 1024  # a base64 CSR, armour and line breaks included
MAX_CSR_BYTES = 64 * 1024
LINE_LENGTH = 64  # STANDARDS.md: libest's client needs 64-character lines
# RFC 2045 §6.8: base64 content is broken into lines ending in CRLF, the MIME
# canonical form (and what the multipart of RFC 7030 §4.4.2 must use between
# parts anyway). OpenSSL's EVP_DecodeUpdate (libest), Python and coreutils
# skip the CR, so CRLF costs no client anything LF would not.
CRLF = b"\r\n"

CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"  # RFC 7030 §4.1.3, §4.2.3
CSRATTRS = "application/csrattrs"  # RFC 7030 §4.5.2
PKCS8 = "application/pkcs8"  # RFC 7030 §4.4.2

ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
CHALLENGE_PASSWORD = AttributeOID.CHALLENGE_PASSWORD.dotted_string  # 1.2.840.113549.1.9.7

_PEM_LABELS = (b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")
_PEM_LINE = re.compile(rb"-----(BEGIN|END) ([A-Z0-9 ]{1,40})-----")
_WHITESPACE = re.compile(rb"[ \t\r\n\v\f]+")


class EstCodecError(ValueError):
    """A request body that is not what RFC 7030 asks for; answered 400."""


# -- requests -------------------------------------------------------------------------


def _der_length_matches(data: bytes) -> bool:
    """True when data is exactly one DER SEQUENCE (tag, length, content)."""
    if len(data) < 2 or data[0] != 0x30:
        return False
    first = data[1]
    if first < 0x80:
        return 2 + first == len(data)
    count = first & 0x7F
    if count == 0 or count > 4 or len(data) < 2 + count:
        return False
    length = int.from_bytes(data[2 : 2 + count], "big")
    return 2 + count + length == len(data)


def _strip_armour(text: bytes) -> bytes:
    lines = _PEM_LINE.findall(text)
    if not lines:
        return text
    labels = {label for _, label in lines}
    if len(lines) != 2 or lines[0][0] != b"BEGIN" or lines[1][0] != b"END" or len(labels) != 1:
        raise EstCodecError("the PEM armour is not one BEGIN/END pair")
    if labels.pop() not in _PEM_LABELS:
        raise EstCodecError("the PEM armour is not a CERTIFICATE REQUEST")
    begin = text.index(b"-----BEGIN")
    end = text.index(b"-----END")
    body_start = text.index(b"-----", begin + 10) + 5
    if end < body_start:
        raise EstCodecError("the PEM armour is not one BEGIN/END pair")
    return text[body_start:end]


def decode_body(data: bytes, content_transfer_encoding: str | None = None) -> bytes:
    """The DER inside an EST request body (RFC 7030 §4.2.1, RFC 8951 §3.2).

    RFC 8951 §3.2 makes base64 the only encoding and the header optional;
    whitespace, line breaks and PEM armour around it are accepted. A body
    that is one well-formed DER SEQUENCE is taken as binary (clients that
    follow RFC 7030's original "binary" reading, e.g. some curl scripts).
    """
    if len(data) > MAX_BODY_BYTES:
        raise EstCodecError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    encoding = (content_transfer_encoding or "").strip().lower()
    if encoding not in ("", "base64", "binary", "8bit", "7bit"):
        raise EstCodecError(f"unsupported Content-Transfer-Encoding {content_transfer_encoding!r}")
    if _der_length_matches(data):
        der = data
    else:
        text = _WHITESPACE.sub(b"", _strip_armour(data))
        if not text:
            raise EstCodecError("the body is empty")
        if len(text) % 4:
            # Some clients drop the padding; put it back (RFC 4648 §3.2).
            text += b"=" * (-len(text) % 4)
        try:
            der = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise EstCodecError("the body is not base64") from None
    if not der:
        raise EstCodecError("the body is empty")
    if len(der) > MAX_CSR_BYTES:
        raise EstCodecError(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    return der


@dataclass(frozen=True)
class CsrFacts:
    """What an EST server needs from a PKCS#10 request (RFC 2986)."""

    der: bytes
    subject: x509.Name
    sans: tuple[x509.GeneralName, ...]
    extensions: tuple[x509.Extension[x509.ExtensionType], ...]
    public_key: CertificatePublicKeyTypes
    signature_valid: bool  # the CSR's self-signature: proof of possession
    # RFC 7030 §3.5: the base64 tls-unique of the session, when the client binds.
    challenge_password: str | None


def parse_csr(der: bytes) -> CsrFacts:
    """A PKCS#10 request's facts (RFC 2986 §4; RFC 7030 §4.2.1, §3.5)."""
    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        raise EstCodecError(f"not a PKCS#10 certificate request: {_short(exc)}") from None
    try:
        public_key = csr.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise EstCodecError(f"unsupported public key in the CSR: {_short(exc)}") from None
    try:
        valid = csr.is_signature_valid
    except (UnsupportedAlgorithm, ValueError):
        valid = False  # nothing we can verify proves possession
    try:
        extensions = tuple(csr.extensions)
        subject = csr.subject
        # Force the lazy parse of every name now, not in the core.
        subject.rfc4514_string()
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise EstCodecError(f"the CSR does not parse: {_short(exc)}") from None
    sans: tuple[x509.GeneralName, ...] = ()
    for extension in extensions:
        if extension.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            sans = tuple(extension.value)
    return CsrFacts(
        der=der,
        subject=subject,
        sans=sans,
        extensions=extensions,
        public_key=public_key,
        signature_valid=bool(valid),
        challenge_password=_challenge_password(csr),
    )


def _challenge_password(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        value = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except x509.AttributeNotFound:
        return None
    except (ValueError, TypeError) as exc:
        raise EstCodecError(f"the CSR's attributes do not parse: {_short(exc)}") from None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise EstCodecError("the challengePassword is not text") from None


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


# -- replies ----------------------------------------------------------------------------


def b64_lines(der: bytes, line_length: int | None = LINE_LENGTH) -> bytes:
    """base64 in lines of line_length characters, each ending CRLF (RFC 2045
    §6.8); None: one line with no break (strongSwan 5.9.8's `pki --est`
    cannot decode base64 with line breaks, STANDARDS.md)."""
    text = base64.b64encode(der)
    if line_length is None:
        return text
    if line_length < 4 or line_length % 4:
        raise ValueError("line_length must be a positive multiple of 4")
    return b"".join(text[i : i + line_length] + CRLF for i in range(0, len(text), line_length))


def certs_only(certificates: Sequence[x509.Certificate]) -> bytes:
    """A certs-only CMS SignedData, DER (RFC 7030 §4.1.3, RFC 5751 §3.2.2)."""
    if not certificates:
        raise ValueError("a certs-only message needs a certificate")
    return pkcs7.serialize_certificates(list(certificates), serialization.Encoding.DER)


class _Attribute(asn1.Sequence):  # type: ignore[misc]
    # RFC 7030 §4.5.2 (RFC 8951 §3.3): Attribute { type, values SET OF ANY }
    _fields: ClassVar = [("type", asn1.ObjectIdentifier), ("values", asn1.SetOf, {"spec": asn1.Any})]


class _AttrOrOid(asn1.Choice):  # type: ignore[misc]
    _alternatives: ClassVar = [("oid", asn1.ObjectIdentifier), ("attribute", _Attribute)]


class _CsrAttrs(asn1.SequenceOf):  # type: ignore[misc]
    _child_spec: ClassVar = _AttrOrOid


@dataclass(frozen=True)
class CsrAttribute:
    """An attribute with values for CsrAttrs: values are DER-encoded ASN.1."""

    oid: str
    values: tuple[bytes, ...]


def csrattrs(items: Sequence[str | CsrAttribute]) -> bytes:
    """CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID, DER (RFC 7030 §4.5.2,
    ASN.1 as corrected by RFC 8951 §3.3). A str is a bare OID."""
    children = []
    for item in items:
        if isinstance(item, str):
            children.append(_AttrOrOid(name="oid", value=asn1.ObjectIdentifier(item)))
        else:
            values = asn1.SetOf([asn1.Any.load(v) for v in item.values], spec=asn1.Any)
            attribute = _Attribute({"type": asn1.ObjectIdentifier(item.oid), "values": values})
            children.append(_AttrOrOid(name="attribute", value=attribute))
    return bytes(_CsrAttrs(children).dump(force=True))


def parse_csrattrs(der: bytes) -> list[str | CsrAttribute]:
    """The inverse of csrattrs(), for clients and tests (RFC 7030 §4.5.2)."""
    try:
        parsed = _CsrAttrs.load(der, strict=True)
        out: list[str | CsrAttribute] = []
        for child in parsed:
            if child.name == "oid":
                out.append(child.chosen.dotted)
            else:
                attribute = child.chosen
                values = tuple(bytes(v.dump()) for v in attribute["values"])
                out.append(CsrAttribute(attribute["type"].dotted, values))
        return out
    except (ValueError, TypeError, KeyError) as exc:
        raise EstCodecError(f"not a CsrAttrs: {_short(exc)}") from None


def oid_der(oid: str) -> bytes:
    """An OBJECT IDENTIFIER's DER, for CsrAttribute values (e.g. a named curve)."""
    return bytes(asn1.ObjectIdentifier(oid).dump())


def integer_der(value: int) -> bytes:
    """An INTEGER's DER, for CsrAttribute values (e.g. an RSA key size)."""
    return bytes(asn1.Integer(value).dump())


def serverkeygen_multipart(
    key_pkcs8_der: bytes, certs_only_der: bytes, line_length: int | None = LINE_LENGTH
) -> tuple[str, bytes]:
    """(Content-Type with its boundary, body) of a serverkeygen reply
    (RFC 7030 §4.4.2): the PKCS#8 private key, then the certificate as
    certs-only CMS, each part base64 with Content-Transfer-Encoding."""
    boundary = "est-" + secrets.token_hex(16)
    marker = b"--" + boundary.encode("ascii")
    parts = []
    for content_type, der in ((PKCS8, key_pkcs8_der), (CERTS_ONLY, certs_only_der)):
        encoded = b64_lines(der, line_length)
        if not encoded.endswith(CRLF):
            encoded += CRLF
        parts.append(
            marker + CRLF
            + b"Content-Type: " + content_type.encode("ascii") + CRLF
            + b"Content-Transfer-Encoding: base64" + CRLF
            + CRLF
            + encoded
        )
    body = b"".join(parts) + marker + b"--" + CRLF
    return f"multipart/mixed; boundary={boundary}", body


__all__ = [
    "CERTS_ONLY",
    "CHALLENGE_PASSWORD",
    "CSRATTRS",
    "ID_EC_PUBLIC_KEY",
    "LINE_LENGTH",
    "MAX_BODY_BYTES",
    "MAX_CSR_BYTES",
    "PKCS8",
    "RSA_ENCRYPTION",
    "CsrAttribute",
    "CsrFacts",
    "EstCodecError",
    "b64_lines",
    "certs_only",
    "csrattrs",
    "decode_body",
    "integer_der",
    "oid_der",
    "parse_csr",
    "parse_csrattrs",
    "serverkeygen_multipart",
]
