"""What the enrolment core needs from ir, cr, kur and p10cr bodies.

RFC 4211 §3–§5 (CertReqMessages, CertTemplate, proof of possession), RFC 4210
§5.3.1–§5.3.5, RFC 9483 §4.1.1–§4.1.4. Everything is read from the received
bytes of the body with der.py: the POP signature input is the exact DER of
CertRequest (RFC 4211 §4.1), and subject, public key and extensions are parsed
by cryptography, never by pyasn1.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from protocols.cmp import codec, der
from protocols.cmp.bodies import FailInfo
from protocols.cmp.header import AlgorithmId, InfoTypeAndValue
from protocols.cmp.protection import ProtectionError, verify_signature

CERT_REQ_BODIES = ("ir", "cr", "kur")

# CertTemplate fields (RFC 4211 §5, IMPLICIT TAGS module): [5] subject is an
# explicitly tagged Name (a CHOICE), [6] publicKey and [9] extensions are
# implicitly tagged SEQUENCEs.
_TEMPLATE_VALIDITY = 0xA4
_TEMPLATE_SUBJECT = 0xA5
_TEMPLATE_PUBLIC_KEY = 0xA6
_TEMPLATE_EXTENSIONS = 0xA9
# ProofOfPossession alternatives (RFC 4211 §4).
_POP_RA_VERIFIED = 0x80
_POP_SIGNATURE = 0xA1
_POPOSK_INPUT = 0xA0
_TAG_BIT_STRING = 0x03
# certReqId of one CertReqMsg (RFC 4211 §5): non-negative (-1 is p10cr's, RFC
# 4210 §5.3.4) and small enough for the transaction store's INTEGER column.
MAX_CERT_REQ_ID = 2**31 - 1


class Pop(str, enum.Enum):
    """Outcome of the proof-of-possession check (RFC 4211 §4)."""

    VERIFIED = "verified"  # POPOSigningKey signature checked with the template key
    RA_VERIFIED = "raVerified"  # claimed; only a trusted RA may say so (RFC 4211 §4)
    MISSING = "missing"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"  # keyEncipherment, keyAgreement, poposkInput


class CertRequestError(ValueError):
    """A certificate request that cannot be read (badCertTemplate or badDataFormat)."""

    def __init__(self, reason: str, fail_info: FailInfo = FailInfo.BAD_CERT_TEMPLATE) -> None:
        super().__init__(reason)
        self.fail_info = fail_info


@dataclass(frozen=True)
class CertRequestFields:
    """One requested certificate, as the enrolment core wants it."""

    cert_req_id: int
    public_key: CertificatePublicKeyTypes | None
    subject: x509.Name
    sans: tuple[x509.GeneralName, ...]
    extensions: tuple[x509.Extension[x509.ExtensionType], ...]
    pop: Pop
    pop_detail: str = ""
    # RFC 4211 §6 controls (e.g. oldCertID for kur, RFC 4210 §5.3.5), values as DER.
    controls: tuple[InfoTypeAndValue, ...] = ()
    # RFC 4211 §5 OptionalValidity: what the requester would like, if anything.
    not_before: datetime | None = None
    not_after: datetime | None = None

    @property
    def pop_verified(self) -> bool:
        return self.pop is Pop.VERIFIED


def _read_int(data: bytes, element: der.Tlv) -> int:
    if element.tag != der.TAG_INTEGER or element.end == element.content:
        raise CertRequestError("expected an INTEGER", FailInfo.BAD_DATA_FORMAT)
    return int.from_bytes(element.value(data), "big", signed=True)


def _oid(data: bytes, element: der.Tlv) -> str:
    if element.tag != der.TAG_OID:
        raise CertRequestError("expected an OBJECT IDENTIFIER", FailInfo.BAD_DATA_FORMAT)
    return der.decode_oid(element.value(data))


def _algorithm(data: bytes, element: der.Tlv) -> AlgorithmId:
    parts = der.children(data, element)
    if not parts:
        raise CertRequestError("empty AlgorithmIdentifier", FailInfo.BAD_DATA_FORMAT)
    params = parts[1].slice(data) if len(parts) > 1 else None
    return AlgorithmId(_oid(data, parts[0]), params)


# Keys accepted in a template: signing keys only. X25519/X448 would need
# keyAgreement POP (RFC 4211 §4.3), which this server does not offer.
_CERTIFIABLE_KEYS = (
    rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey, dsa.DSAPublicKey
)

# A CertificationRequest shell around the template's Name, SPKI and
# Extensions lets cryptography's parsers read them (x509 has no Name or
# Extensions loader of its own); its signature is never checked.
_EXTENSION_REQUEST_OID = bytes.fromhex("06092a864886f70d01090e")  # PKCS #9 extensionRequest
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_PLACEHOLDER_SPKI = bytes.fromhex("3018301306072a8648ce3d020106082a8648ce3d030107030100")


def _parse_template_parts(
    subject_der: bytes, spki_der: bytes | None, extensions_der: bytes | None
) -> tuple[x509.Name, CertificatePublicKeyTypes | None, x509.Extensions]:
    attributes = b""
    if extensions_der is not None:
        attributes = der.wrap(der.TAG_SEQUENCE, _EXTENSION_REQUEST_OID + der.wrap(0x31, extensions_der))
    info = der.wrap(
        der.TAG_SEQUENCE,
        b"\x02\x01\x00" + subject_der + (spki_der or _PLACEHOLDER_SPKI) + der.wrap(0xA0, attributes),
    )
    shell = der.wrap(der.TAG_SEQUENCE, info + _ECDSA_SHA256 + b"\x03\x01\x00")
    try:
        csr = x509.load_der_x509_csr(shell)
        subject = csr.subject
        extensions = csr.extensions
        public_key = serialization.load_der_public_key(spki_der) if spki_der is not None else None
    # cryptography raises TypeError for a Name attribute whose ASN.1 type does
    # not fit its OID (a BIT STRING other than x500UniqueIdentifier).
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertRequestError("certificate template does not parse: %s" % exc) from None
    if public_key is not None and not isinstance(public_key, _CERTIFIABLE_KEYS):
        raise CertRequestError("template key type cannot be certified")
    return subject, public_key, extensions


def _split_extensions(extensions: x509.Extensions) -> tuple[tuple[x509.GeneralName, ...], tuple[x509.Extension[x509.ExtensionType], ...]]:
    sans: tuple[x509.GeneralName, ...] = ()
    others: list[x509.Extension[x509.ExtensionType]] = []
    for extension in extensions:
        if isinstance(extension.value, x509.SubjectAlternativeName):
            sans = tuple(extension.value)
        else:
            others.append(extension)
    return sans, tuple(others)


def _time(data: bytes, element: der.Tlv) -> datetime:
    # Time ::= CHOICE { utcTime, generalTime } (RFC 5280 §4.1.2.5), 'Z' only.
    inner = der.read_tlv(data, element.content, element.end)
    text = inner.value(data).decode("ascii", "replace")
    try:
        if inner.tag == 0x17 and len(text) == 13 and text.endswith("Z"):
            moment = datetime.strptime(text, "%y%m%d%H%M%SZ")
            # RFC 5280 §4.1.2.5.1: YY below 50 is 20YY, otherwise 19YY.
            if moment.year >= 2050:
                moment = moment.replace(year=moment.year - 100)
        elif inner.tag == 0x18 and len(text) == 15 and text.endswith("Z"):
            moment = datetime.strptime(text, "%Y%m%d%H%M%SZ")
        else:
            raise ValueError(text)
    except ValueError:
        raise CertRequestError("template validity is not a UTC Time") from None
    return moment.replace(tzinfo=timezone.utc)


def _validity(data: bytes, element: der.Tlv | None) -> tuple[datetime | None, datetime | None]:
    if element is None:
        return None, None
    found = {item.tag: _time(data, item) for item in der.children(data, element)}
    return found.get(0xA0), found.get(0xA1)


def _controls(data: bytes, element: der.Tlv) -> tuple[InfoTypeAndValue, ...]:
    found = []
    for control in der.children(data, element):
        parts = der.children(data, control)
        if len(parts) != 2:
            raise CertRequestError("control is not type and value", FailInfo.BAD_DATA_FORMAT)
        found.append(InfoTypeAndValue(_oid(data, parts[0]), parts[1].slice(data)))
    return tuple(found)


def _check_pop(
    data: bytes, cert_req: der.Tlv, popo: der.Tlv | None, public_key: CertificatePublicKeyTypes | None
) -> tuple[Pop, str]:
    if popo is None:
        return Pop.MISSING, "no proof of possession"
    if popo.tag == _POP_RA_VERIFIED:
        return Pop.RA_VERIFIED, "raVerified"
    if popo.tag != _POP_SIGNATURE:
        return Pop.UNSUPPORTED, "only signature POP is supported (RFC 9483 §4.1.1)"
    parts = der.children(data, popo)
    if parts and parts[0].tag == _POPOSK_INPUT:
        # RFC 4211 §4.1: poposkInput only when the template lacks subject or
        # key; RFC 9483 §4.1.1 requests always carry both.
        return Pop.UNSUPPORTED, "poposkInput is not supported"
    if len(parts) != 2 or parts[1].tag != _TAG_BIT_STRING:
        return Pop.FAILED, "malformed POPOSigningKey"
    if public_key is None:
        return Pop.FAILED, "signature POP without a public key in the template"
    bits = parts[1].value(data)
    if not bits or bits[0] != 0:
        return Pop.FAILED, "POP signature is not whole octets"
    try:
        algorithm = _algorithm(data, parts[0])
        verify_signature(algorithm, public_key, bits[1:], cert_req.slice(data))
    except ProtectionError as exc:
        return Pop.FAILED, exc.reason
    return Pop.VERIFIED, ""


def _cert_req_msg(data: bytes, element: der.Tlv) -> CertRequestFields:
    parts = der.children(data, element)
    if not parts or parts[0].tag != der.TAG_SEQUENCE:
        raise CertRequestError("CertReqMsg without certReq", FailInfo.BAD_DATA_FORMAT)
    cert_req = parts[0]
    popo = parts[1] if len(parts) > 1 and parts[1].tag & der.CLASS_CONTEXT else None
    request_parts = der.children(data, cert_req)
    if len(request_parts) < 2 or request_parts[1].tag != der.TAG_SEQUENCE:
        raise CertRequestError("CertRequest without certTemplate", FailInfo.BAD_DATA_FORMAT)
    cert_req_id = _read_int(data, request_parts[0])
    if not 0 <= cert_req_id <= MAX_CERT_REQ_ID:
        # RFC 9483 §4.1.1 asks for 0; the transaction store keeps a 64-bit
        # integer, so a larger one was issued for, then failed (fuzzing).
        raise CertRequestError("certReqId %s is out of range" % str(cert_req_id)[:24], FailInfo.BAD_REQUEST)
    controls = _controls(data, request_parts[2]) if len(request_parts) > 2 else ()
    fields = {item.tag: item for item in der.children(data, request_parts[1])}
    subject_der = b"\x30\x00"
    if _TEMPLATE_SUBJECT in fields:
        subject_der = fields[_TEMPLATE_SUBJECT].value(data)
    spki_der = None
    if _TEMPLATE_PUBLIC_KEY in fields:
        spki_der = der.wrap(der.TAG_SEQUENCE, fields[_TEMPLATE_PUBLIC_KEY].value(data))
    extensions_der = None
    if _TEMPLATE_EXTENSIONS in fields:
        extensions_der = der.wrap(der.TAG_SEQUENCE, fields[_TEMPLATE_EXTENSIONS].value(data))
    subject, public_key, extensions = _parse_template_parts(subject_der, spki_der, extensions_der)
    sans, others = _split_extensions(extensions)
    pop, detail = _check_pop(data, cert_req, popo, public_key)
    not_before, not_after = _validity(data, fields.get(_TEMPLATE_VALIDITY))
    return CertRequestFields(
        cert_req_id, public_key, subject, sans, others, pop, detail, controls, not_before, not_after
    )


def cert_requests(message: codec.PkiMessage) -> tuple[CertRequestFields, ...]:
    """Read the CertReqMessages of an ir, cr or kur (RFC 4211 §3; RFC 9483 §4.1.1, §4.1.2).

    Verifies signature POP over the received DER of each CertRequest
    (RFC 4211 §4.1). Raises CertRequestError for an unreadable template.
    """
    if message.body_type not in CERT_REQ_BODIES:
        raise CertRequestError("%s is not a certificate request" % message.body_type, FailInfo.BAD_REQUEST)
    data = message.body_der
    try:
        wrapper = der.read_tlv(data, 0)
        sequence = der.read_tlv(data, wrapper.content, wrapper.end)
        requests = tuple(_cert_req_msg(data, item) for item in der.children(data, sequence))
    except der.DerError as exc:
        raise CertRequestError("CertReqMessages do not parse: %s" % exc, FailInfo.BAD_DATA_FORMAT) from None
    if not requests:
        raise CertRequestError("no certificate request in the body", FailInfo.BAD_DATA_FORMAT)
    return requests


def p10_request(message: codec.PkiMessage) -> tuple[CertRequestFields, x509.CertificateSigningRequest]:
    """Read a p10cr (RFC 4210 §5.3.4 p10cr; RFC 9483 §4.1.4): PKCS #10 via cryptography.

    certReqId is -1 for a p10cr (RFC 4210 §5.3.4). The CSR self-signature is
    the proof of possession.
    """
    if message.body_type != "p10cr":
        raise CertRequestError("%s is not a p10cr" % message.body_type, FailInfo.BAD_REQUEST)
    data = message.body_der
    try:
        wrapper = der.read_tlv(data, 0)
        csr = x509.load_der_x509_csr(data[wrapper.content : wrapper.end])
        public_key = csr.public_key()
        extensions = csr.extensions
        subject = csr.subject
        verified = csr.is_signature_valid
    # InvalidVersion (a version other than v1) is not a ValueError.
    except (der.DerError, ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType) as exc:
        raise CertRequestError("PKCS #10 request does not parse: %s" % exc) from None
    sans, others = _split_extensions(extensions)
    pop = Pop.VERIFIED if verified else Pop.FAILED
    fields = CertRequestFields(-1, public_key, subject, sans, others, pop, "" if verified else "CSR signature")
    return fields, csr
