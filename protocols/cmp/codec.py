"""DER ⇄ PKIMessage (RFC 4210 §5.1, RFC 9480 §2), sans-I/O.

Decoding splits the message with der.py, decodes the header with der.py
(header.header_from_der) and the body with pyasn1 (certificates inside the
body kept opaque, asn1.py), keeps extraCerts as
DER for cryptography to load when asked, and slices the ProtectedPart input
from the received bytes instead of re-encoding it (RFC 4210 §5.1.3; LIMITS.md
"What bounds an enrolment"). Every failure is a CmpDecodeError carrying what
could be read of the header, so the error reply can still echo transactionID
and senderNonce (RFC 9483 §3.6.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error

from protocols.cmp import asn1, der
from protocols.cmp.bodies import FailInfo
from protocols.cmp.header import PkiHeader, encode_header, header_from_der

# RFC 9483 §6.1 sets no size; 256 KiB holds a reply with a long chain in
# extraCerts and caPubs many times over and bounds the work per request.
MAX_MESSAGE_SIZE = 256 * 1024

# RFC 4210 §5.1.2 PKIBody tag numbers, for naming a body without decoding it.
BODY_TYPES = tuple(named.name for named in asn1.OpaquePKIBody.componentType.namedTypes)
BODY_TAGS = {name: number for number, name in enumerate(BODY_TYPES)}
_BODY_TAGSETS = tuple(named.asn1Object.tagSet for named in asn1.OpaquePKIBody.componentType.namedTypes)

_TAG_PROTECTION = der.CLASS_CONTEXT | der.CONSTRUCTED | 0  # [0] PKIProtection
_TAG_EXTRA_CERTS = der.CLASS_CONTEXT | der.CONSTRUCTED | 1  # [1] extraCerts
_TAG_BIT_STRING = 0x03

# What pyasn1 raises on malformed input besides its own error: mutated DER
# can reach int()/str() conversions and codecs inside it.
_PYASN1_FAILURES = (PyAsn1Error, ValueError, TypeError, IndexError, KeyError, UnicodeError)


class CmpDecodeError(Exception):
    """The bytes are not an acceptable PKIMessage (answered with badDataFormat).

    transaction_id, sender_nonce and sender_kid are whatever a best-effort
    scan of the header could read, for the error reply to echo.
    """

    def __init__(
        self,
        reason: str,
        transaction_id: bytes | None = None,
        sender_nonce: bytes | None = None,
        sender_kid: bytes | None = None,
        fail_info: FailInfo = FailInfo.BAD_DATA_FORMAT,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fail_info = fail_info
        self.transaction_id = transaction_id
        self.sender_nonce = sender_nonce
        self.sender_kid = sender_kid


@dataclass(frozen=True)
class PkiMessage:
    """A decoded PKIMessage (RFC 4210 §5.1).

    body is the pyasn1 value of the chosen PKIBody alternative (asn1.py specs:
    certificates inside are opaque DER). protected_part is the exact DER input
    of the protection (RFC 4210 §5.1.3), taken from the received bytes.
    """

    header: PkiHeader
    body_type: str
    body: Any = field(repr=False, compare=False)
    protection: bytes | None
    extra_certs_der: tuple[bytes, ...]
    protected_part: bytes = field(repr=False)
    header_der: bytes = field(repr=False)
    body_der: bytes = field(repr=False)

    @cached_property
    def extra_certs(self) -> tuple[x509.Certificate, ...]:
        """extraCerts loaded and fully read (RFC 4210 §5.1 extraCerts; load_certificate)."""
        try:
            return tuple(load_certificate(cert) for cert in self.extra_certs_der)
        except CertificateUnreadable as exc:
            raise CmpDecodeError(
                "extraCerts holds a certificate that does not parse: %s" % exc.reason,
                self.header.transaction_id,
                self.header.sender_nonce,
                self.header.sender_kid,
                exc.fail_info,
            ) from None


class CertificateUnreadable(ValueError):
    """A client's certificate with a field that cannot be read."""

    def __init__(self, reason: str, fail_info: FailInfo = FailInfo.BAD_DATA_FORMAT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fail_info = fail_info


# What cryptography raises for a certificate it loaded but cannot read a
# field of: it parses names, extensions and the key lazily, on first access.
_UNREADABLE = (
    ValueError, TypeError, x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType,
)


def load_certificate(data: bytes) -> x509.Certificate:
    """Load a certificate a client sent and read every field the server, the
    core and chain validation look at (names, validity, extensions, key).

    cryptography defers parsing these until first access, so a certificate
    with, say, an issuer attribute of an unexpected tag loads and then raises
    ValueError wherever `.issuer` is first read (in the core, in chain
    validation). Reading them once here makes anything in the client's bytes
    a typed refusal: badDataFormat for bytes that do not parse, badAlg for a
    key of an unsupported algorithm (RFC 9483 §3.6.4).
    """
    try:
        certificate = x509.load_der_x509_certificate(data)
        _ = (
            certificate.issuer.rfc4514_string(),
            certificate.subject.rfc4514_string(),
            certificate.serial_number,
            certificate.not_valid_before_utc,
            certificate.not_valid_after_utc,
            certificate.signature_algorithm_oid,
            [extension.value for extension in certificate.extensions],
        )
    except _UNREADABLE as exc:
        raise CertificateUnreadable(_short(exc)) from None
    try:
        certificate.public_key()
    except UnsupportedAlgorithm as exc:
        raise CertificateUnreadable("unsupported public key: %s" % _short(exc), FailInfo.BAD_ALG) from None
    except _UNREADABLE as exc:
        raise CertificateUnreadable("public key does not parse: %s" % _short(exc)) from None
    return certificate


def scan_header_ids(data: bytes) -> tuple[bytes | None, bytes | None, bytes | None]:
    """Best effort: (transactionID, senderNonce, senderKID) of a PKIHeader (RFC 4210 §5.1.1).

    Reads only the outer DER layers, so it works on messages whose body or
    later header fields are broken.
    """
    found: dict[int, bytes] = {}
    try:
        # Declared lengths may run past a truncated buffer; read what is there.
        top = der.read_header(data, 0)
        header = der.read_header(data, top.content)
        if top.tag != der.TAG_SEQUENCE or header.tag != der.TAG_SEQUENCE:
            return None, None, None
        pos, end = header.content, min(header.end, len(data))
        while pos < end:
            item = der.read_tlv(data, pos, end)
            pos = item.end
            number = item.tag & 0x1F
            if item.tag & 0xC0 == der.CLASS_CONTEXT and number in (2, 4, 5):
                inner = der.read_tlv(data, item.content, item.end)
                if inner.tag == der.TAG_OCTET_STRING:
                    found[number] = inner.value(data)
    except der.DerError:
        pass
    return found.get(4), found.get(5), found.get(2)


def _short(exc: Exception) -> str:
    # pyasn1 puts whole schema dumps into its messages; the reason ends up in
    # logs and statusString, so keep its head only.
    text = str(exc).split("\n", 1)[0]
    return text if len(text) <= 160 else text[:157] + "..."


def _fail(data: bytes, reason: str) -> CmpDecodeError:
    transaction_id, sender_nonce, sender_kid = scan_header_ids(data)
    return CmpDecodeError(reason, transaction_id, sender_nonce, sender_kid)


def _split(data: bytes) -> tuple[der.Tlv, der.Tlv, der.Tlv | None, der.Tlv | None]:
    parts = der.read_sequence(data, "PKIMessage")
    if len(parts) < 2:
        raise der.DerError("PKIMessage needs header and body")
    header, body, rest = parts[0], parts[1], parts[2:]
    if header.tag != der.TAG_SEQUENCE:
        raise der.DerError("header is not a SEQUENCE")
    protection = extra = None
    if rest and rest[0].tag == _TAG_PROTECTION:
        protection, rest = rest[0], rest[1:]
    if rest and rest[0].tag == _TAG_EXTRA_CERTS:
        extra, rest = rest[0], rest[1:]
    if rest:
        raise der.DerError("unexpected element after the body")
    return header, body, protection, extra


def _protection_bits(data: bytes, element: der.Tlv) -> bytes:
    # PKIProtection ::= BIT STRING (RFC 4210 §5.1.3); MACs and signatures are
    # whole octets, so any unused bit means a broken message.
    bits = der.read_tlv(data, element.content, element.end)
    if bits.tag != _TAG_BIT_STRING or bits.end != element.end:
        raise der.DerError("protection is not a BIT STRING")
    value = bits.value(data)
    if not value or value[0] != 0:
        raise der.DerError("protection is not a whole number of octets")
    return value[1:]


def _extra_certs(data: bytes, element: der.Tlv) -> tuple[bytes, ...]:
    # extraCerts [1] SEQUENCE SIZE (1..MAX) OF CMPCertificate (RFC 4210 §5.1);
    # each a Certificate SEQUENCE, loaded later by cryptography.
    seq = der.read_tlv(data, element.content, element.end)
    if seq.tag != der.TAG_SEQUENCE or seq.end != element.end:
        raise der.DerError("extraCerts is not a SEQUENCE")
    certs = der.children(data, seq)
    if not certs:
        raise der.DerError("extraCerts is empty")
    if any(cert.tag != der.TAG_SEQUENCE for cert in certs):
        raise der.DerError("extraCerts holds something that is not a certificate")
    return tuple(cert.slice(data) for cert in certs)


def decode_message(data: bytes) -> PkiMessage:
    """Decode a DER PKIMessage (RFC 4210 §5.1; RFC 9480 §2 syntax).

    Raises CmpDecodeError for anything that is not an acceptable message.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise _fail(data, "message larger than %d bytes" % MAX_MESSAGE_SIZE)
    try:
        header_tlv, body_tlv, protection_tlv, extra_tlv = _split(data)
        der.check_depth(data, header_tlv)
        der.check_depth(data, body_tlv)
        protection = _protection_bits(data, protection_tlv) if protection_tlv else None
        extra = _extra_certs(data, extra_tlv) if extra_tlv else ()
    except der.DerError as exc:
        raise _fail(data, str(exc)) from None
    header_der = header_tlv.slice(data)
    body_der = body_tlv.slice(data)
    try:
        header = header_from_der(header_der)
    except (ValueError, UnicodeError) as exc:
        raise _fail(data, "bad PKIHeader: %s" % _short(exc)) from None
    try:
        body_asn1, rest = decoder.decode(body_der, asn1Spec=asn1.OpaquePKIBody())
        if rest:
            raise ValueError("trailing bytes after the body")
        body_type = body_asn1.getName()
        body = body_asn1.getComponent()
    except _PYASN1_FAILURES as exc:
        raise CmpDecodeError(
            "bad PKIBody: %s" % _short(exc), header.transaction_id, header.sender_nonce, header.sender_kid
        ) from None
    return PkiMessage(
        header=header,
        body_type=body_type,
        body=body,
        protection=protection,
        extra_certs_der=extra,
        protected_part=der.wrap(der.TAG_SEQUENCE, header_der + body_der),
        header_der=header_der,
        body_der=body_der,
    )


def encode_body(body_type: str, body: Any) -> bytes:
    """DER of a PKIBody alternative (RFC 4210 §5.1.2) from its pyasn1 value.

    body is either a decoded alternative (already carrying its [n] tag) or a
    freshly built untagged value, which gets the explicit [n] tag here.
    """
    number = BODY_TAGS.get(body_type)
    if number is None:
        raise ValueError("unknown PKIBody type %r" % body_type)
    inner = bytes(encoder.encode(body))
    if body.tagSet == _BODY_TAGSETS[number]:
        return inner
    return der.wrap(der.CLASS_CONTEXT | der.CONSTRUCTED | number, inner)


def protected_part(header_der: bytes, body_der: bytes) -> bytes:
    """DER of ProtectedPart ::= SEQUENCE { header, body } (RFC 4210 §5.1.3)."""
    return der.wrap(der.TAG_SEQUENCE, header_der + body_der)


def assemble_message(
    header_der: bytes, body_der: bytes, protection: bytes | None, extra_certs: tuple[bytes, ...] = ()
) -> bytes:
    """DER of a PKIMessage from its parts (RFC 4210 §5.1); certificates as DER."""
    content = header_der + body_der
    if protection is not None:
        content += der.wrap(_TAG_PROTECTION, der.wrap(_TAG_BIT_STRING, b"\x00" + protection))
    if extra_certs:
        content += der.wrap(_TAG_EXTRA_CERTS, der.wrap(der.TAG_SEQUENCE, b"".join(extra_certs)))
    return der.wrap(der.TAG_SEQUENCE, content)


def encode_message(message: PkiMessage) -> bytes:
    """Re-encode a PkiMessage from its typed header and pyasn1 body (RFC 4210 §5.1)."""
    return assemble_message(
        encode_header(message.header),
        encode_body(message.body_type, message.body),
        message.protection,
        message.extra_certs_der,
    )
