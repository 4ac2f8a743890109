"""The PKIHeader as a value (RFC 4210 §5.1.1, RFC 9480 §2.3).

Names and algorithm parameters stay DER bytes: the server compares them and
hands them on, it rarely needs them decoded, and DER survives a round trip
exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone

from pyasn1_alt_modules import rfc9480

from protocols.cmp import der

# RFC 4210 §5.1.1: pvno cmp2000 = 2; RFC 9480 §2.20: cmp2021 = 3 when its
# features (hashAlg in certConf, KEMRecipientInfo, …) are used.
PVNO_CMP2000 = 2
PVNO_CMP2021 = 3

# RFC 4210 §5.1.1.1 id-it-implicitConfirm.
ID_IT_IMPLICIT_CONFIRM = str(rfc9480.id_it_implicitConfirm)
# RFC 4210 §5.1.1.2 id-it-confirmWaitTime.
ID_IT_CONFIRM_WAIT_TIME = str(rfc9480.id_it_confirmWaitTime)

_NULL_DER = b"\x05\x00"


@dataclass(frozen=True)
class AlgorithmId:
    """AlgorithmIdentifier (RFC 5280 §4.1.1.2); parameters as DER or absent."""

    oid: str
    parameters: bytes | None = None


@dataclass(frozen=True)
class InfoTypeAndValue:
    """InfoTypeAndValue (RFC 4210 §5.3.19); value as DER or absent."""

    info_type: str
    value: bytes | None = None


@dataclass(frozen=True)
class PkiHeader:
    """PKIHeader (RFC 4210 §5.1.1); sender and recipient are GeneralName DER."""

    pvno: int
    sender: bytes
    recipient: bytes
    message_time: datetime | None = None
    protection_alg: AlgorithmId | None = None
    sender_kid: bytes | None = None
    recip_kid: bytes | None = None
    transaction_id: bytes | None = None
    sender_nonce: bytes | None = None
    recip_nonce: bytes | None = None
    free_text: tuple[str, ...] = ()
    general_info: tuple[InfoTypeAndValue, ...] = ()

    @property
    def implicit_confirm(self) -> bool:
        """RFC 4210 §5.1.1.1: the sender asks for (or grants) implicit confirmation."""
        return any(info.info_type == ID_IT_IMPLICIT_CONFIRM for info in self.general_info)


# A GeneralName directoryName holding the empty Name: RFC 4210 §5.1.1 says a
# sender that does not know its name (MAC-protected ir) uses the NULL-DN.
NULL_DN_GENERAL_NAME = b"\xa4\x02\x30\x00"


def format_generalized_time(moment: datetime) -> str:
    """DER GeneralizedTime text (X.690 §11.7): UTC, 'Z', no trailing zeros.

    Milliseconds at most: pyasn1's DER encoder refuses finer fractions, and
    RFC 4210 §5.1.1 messageTime is only compared against a tolerance window.
    """
    utc = moment.astimezone(timezone.utc)
    text = utc.strftime("%Y%m%d%H%M%S")
    millis = utc.microsecond // 1000
    if millis:
        text += ("." + "%03d" % millis).rstrip("0")
    return text + "Z"


def parse_generalized_time(text: str) -> datetime:
    """Parse DER GeneralizedTime (X.690 §11.7), at most milliseconds; else ValueError."""
    if not text.endswith("Z") or len(text) < 15:
        raise ValueError("messageTime is not DER GeneralizedTime")
    base, fraction = text[:14], text[14:-1]
    moment = datetime.strptime(base, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    if fraction:
        digits = fraction[1:]
        if fraction[0] != "." or not digits.isdigit() or len(digits) > 3 or digits.endswith("0"):
            raise ValueError("messageTime fraction is not DER")
        moment = moment.replace(microsecond=int(digits.ljust(6, "0")))
    if format_generalized_time(moment) != text:
        raise ValueError("messageTime is not DER GeneralizedTime")
    return moment


def _general_name(encoded: bytes) -> bytes:
    # GeneralName (RFC 5280 §4.2.1.6) is a CHOICE of context tags [0]..[8].
    if not encoded or encoded[0] & 0xC0 != der.CLASS_CONTEXT or encoded[0] & 0x1F > 8:
        raise ValueError("sender or recipient is not a GeneralName")
    return encoded


def header_from_der(data: bytes) -> PkiHeader:
    """Decode a DER PKIHeader (RFC 4210 §5.1.1; explicit tags, Appendix F) with der.py.

    Every request has one; pyasn1 took ~0.15 ms for what is a dozen
    elements. tests/protocols check it against the pyasn1 reading of the same
    bytes. Raises ValueError (der.DerError) for anything malformed.
    """
    parts = der.read_sequence(data, "PKIHeader")
    if len(parts) < 3:
        raise der.DerError("PKIHeader needs pvno, sender and recipient")
    if parts[0].tag != der.TAG_INTEGER:
        raise der.DerError("pvno is not an INTEGER")
    fields: dict[int, bytes] = {}
    last = -1
    for part in parts[3:]:
        number = part.tag & 0x1F
        if part.tag != der.CLASS_CONTEXT | der.CONSTRUCTED | number or number > 8 or number <= last:
            raise der.DerError("unexpected or repeated PKIHeader field")
        last = number
        inner = der.children(data, part)
        if len(inner) != 1:
            raise der.DerError("explicit tag [%d] must hold one element" % number)
        fields[number] = inner[0].slice(data)
    message_time = None
    if 0 in fields:
        message_time = parse_generalized_time(_primitive(fields[0], der.TAG_GENERALIZED_TIME).decode("ascii"))
    protection_alg = _algorithm(fields[1]) if 1 in fields else None
    octets = {n: _primitive(fields[n], der.TAG_OCTET_STRING) for n in (2, 3, 4, 5, 6) if n in fields}
    free_text: tuple[str, ...] = ()
    if 7 in fields:
        free_text = tuple(_primitive(item, der.TAG_UTF8_STRING).decode("utf-8") for item in _sequence_of(fields[7]))
    general_info: tuple[InfoTypeAndValue, ...] = ()
    if 8 in fields:
        general_info = tuple(_info(item) for item in _sequence_of(fields[8]))
    return PkiHeader(
        pvno=der.decode_integer(parts[0].value(data)),
        sender=_general_name(parts[1].slice(data)),
        recipient=_general_name(parts[2].slice(data)),
        message_time=message_time,
        protection_alg=protection_alg,
        sender_kid=octets.get(2),
        recip_kid=octets.get(3),
        transaction_id=octets.get(4),
        sender_nonce=octets.get(5),
        recip_nonce=octets.get(6),
        free_text=free_text,
        general_info=general_info,
    )


def _primitive(element: bytes, tag: int) -> bytes:
    tlv = der.read_tlv(element, 0)
    if tlv.tag != tag or tlv.end != len(element):
        raise der.DerError("expected tag 0x%02x" % tag)
    return tlv.value(element)



def _sequence_of(element: bytes) -> list[bytes]:
    items = [item.slice(element) for item in der.read_sequence(element, "SEQUENCE OF")]
    if not items:
        raise der.DerError("SEQUENCE SIZE (1..MAX) is empty")
    return items


def _algorithm(element: bytes) -> AlgorithmId:
    oid, parameters = der.oid_and_value(element)
    return AlgorithmId(oid, parameters)


def _info(element: bytes) -> InfoTypeAndValue:
    oid, value = der.oid_and_value(element)
    return InfoTypeAndValue(oid, value)


def encode_algorithm(alg: AlgorithmId) -> bytes:
    """DER AlgorithmIdentifier (RFC 5280 §4.1.1.2)."""
    return der.wrap(der.TAG_SEQUENCE, der.encode_oid(alg.oid) + (alg.parameters or b""))


def _explicit(number: int, content: bytes) -> bytes:
    # The CMP ASN.1 module uses EXPLICIT TAGS (RFC 4210 Appendix F).
    return der.wrap(der.CLASS_CONTEXT | der.CONSTRUCTED | number, content)


def _utf8_sequence(texts: tuple[str, ...]) -> bytes:
    return der.wrap(der.TAG_SEQUENCE, b"".join(der.wrap(der.TAG_UTF8_STRING, t.encode("utf-8")) for t in texts))


def encode_header(header: PkiHeader) -> bytes:
    """DER of the PKIHeader (RFC 4210 §5.1.1), written directly.

    pyasn1 took ~0.4 ms for this (LIMITS.md "What bounds an enrolment");
    the fields are few and simple, and the golden vectors check the output.
    sender and recipient must each be one GeneralName element.
    """
    for name in (header.sender, header.recipient):
        if der.read_tlv(name, 0).end != len(name):
            raise ValueError("sender and recipient must be single GeneralName elements")
    content = der.encode_integer(header.pvno) + header.sender + header.recipient
    if header.message_time is not None:
        time_text = format_generalized_time(header.message_time).encode("ascii")
        content += _explicit(0, der.wrap(der.TAG_GENERALIZED_TIME, time_text))
    if header.protection_alg is not None:
        content += _explicit(1, encode_algorithm(header.protection_alg))
    for number, value in (
        (2, header.sender_kid),
        (3, header.recip_kid),
        (4, header.transaction_id),
        (5, header.sender_nonce),
        (6, header.recip_nonce),
    ):
        if value is not None:
            content += _explicit(number, der.wrap(der.TAG_OCTET_STRING, value))
    if header.free_text:
        content += _explicit(7, _utf8_sequence(header.free_text))
    if header.general_info:
        infos = b"".join(
            der.wrap(der.TAG_SEQUENCE, der.encode_oid(info.info_type) + (info.value or b""))
            for info in header.general_info
        )
        content += _explicit(8, der.wrap(der.TAG_SEQUENCE, infos))
    return der.wrap(der.TAG_SEQUENCE, content)


def implicit_confirm_info() -> InfoTypeAndValue:
    """generalInfo entry granting implicit confirmation (RFC 4210 §5.1.1.1: NULL value)."""
    return InfoTypeAndValue(ID_IT_IMPLICIT_CONFIRM, _NULL_DER)


NONCE_SIZE = 16  # RFC 9483 §3.1: nonces of at least 128 bits


def reply_header(
    sender: bytes,
    recipient: bytes = NULL_DN_GENERAL_NAME,
    *,
    transaction_id: bytes | None,
    recip_nonce: bytes | None,
    sender_kid: bytes | None = None,
    recip_kid: bytes | None = None,
    pvno: int = PVNO_CMP2000,
    implicit_confirm: bool = False,
    now: datetime | None = None,
) -> PkiHeader:
    """Header of a response (RFC 4210 §5.1.1; RFC 9483 §3.1): same transactionID,
    recipNonce = the request's senderNonce, a fresh 128-bit senderNonce.

    messageTime is whole seconds, so the value equals what goes on the wire.
    """
    moment = now if now is not None else datetime.now(timezone.utc)
    return PkiHeader(
        pvno=pvno,
        sender=sender,
        recipient=recipient,
        message_time=moment.replace(microsecond=0),
        sender_kid=sender_kid,
        recip_kid=recip_kid,
        transaction_id=transaction_id,
        sender_nonce=os.urandom(NONCE_SIZE),
        recip_nonce=recip_nonce,
        general_info=(implicit_confirm_info(),) if implicit_confirm else (),
    )


def reply_header_for(
    request: PkiHeader, sender: bytes, sender_kid: bytes | None = None, *, implicit_confirm: bool = False
) -> PkiHeader:
    """reply_header answering a decoded request (RFC 9483 §3.1): recipient is
    the request's sender, recipKID its senderKID, pvno its pvno if 2 or 3."""
    return reply_header(
        sender,
        request.sender,
        transaction_id=request.transaction_id,
        recip_nonce=request.sender_nonce,
        sender_kid=sender_kid,
        recip_kid=request.sender_kid,
        pvno=request.pvno if request.pvno in (PVNO_CMP2000, PVNO_CMP2021) else PVNO_CMP2000,
        implicit_confirm=implicit_confirm,
    )
