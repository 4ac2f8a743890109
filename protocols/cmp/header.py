"""The PKIHeader as a value (RFC 4210 §5.1.1, RFC 9480 §2.3).

Names and algorithm parameters stay DER bytes: the server compares them and
hands them on, it rarely needs them decoded, and DER survives a round trip
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from pyasn1.codec.der import decoder, encoder
from pyasn1.type import tag, univ, useful
from pyasn1_alt_modules import rfc5280, rfc9480

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


def _optional_bytes(component: univ.OctetString) -> bytes | None:
    return bytes(component) if component.isValue else None


def header_from_asn1(asn1: rfc9480.PKIHeader, sender: bytes, recipient: bytes) -> PkiHeader:
    """Turn a decoded PKIHeader (RFC 4210 §5.1.1) into a PkiHeader.

    sender and recipient are the DER slices of those fields from the input.
    """
    message_time = None
    if asn1["messageTime"].isValue:
        message_time = parse_generalized_time(str(asn1["messageTime"]))
    protection_alg = None
    if asn1["protectionAlg"].isValue:
        alg = asn1["protectionAlg"]
        params = bytes(alg["parameters"]) if alg["parameters"].isValue else None
        protection_alg = AlgorithmId(str(alg["algorithm"]), params)
    free_text: tuple[str, ...] = ()
    if asn1["freeText"].isValue:
        free_text = tuple(str(text) for text in asn1["freeText"])
    general_info: tuple[InfoTypeAndValue, ...] = ()
    if asn1["generalInfo"].isValue:
        general_info = tuple(
            InfoTypeAndValue(
                str(info["infoType"]),
                bytes(info["infoValue"]) if info["infoValue"].isValue else None,
            )
            for info in asn1["generalInfo"]
        )
    return PkiHeader(
        pvno=int(asn1["pvno"]),
        sender=sender,
        recipient=recipient,
        message_time=message_time,
        protection_alg=protection_alg,
        sender_kid=_optional_bytes(asn1["senderKID"]),
        recip_kid=_optional_bytes(asn1["recipKID"]),
        transaction_id=_optional_bytes(asn1["transactionID"]),
        sender_nonce=_optional_bytes(asn1["senderNonce"]),
        recip_nonce=_optional_bytes(asn1["recipNonce"]),
        free_text=free_text,
        general_info=general_info,
    )


def _general_name(der: bytes) -> rfc5280.GeneralName:
    value, rest = decoder.decode(der, asn1Spec=rfc5280.GeneralName())
    if rest:
        raise ValueError("trailing bytes after GeneralName")
    return value


def _context(number: int, constructed: bool = False) -> tag.Tag:
    form = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return tag.Tag(tag.tagClassContext, form, number)


def algorithm_to_asn1(alg: AlgorithmId, spec: rfc5280.AlgorithmIdentifier) -> rfc5280.AlgorithmIdentifier:
    """Fill an AlgorithmIdentifier (RFC 5280 §4.1.1.2) of the given (tagged) spec."""
    spec["algorithm"] = univ.ObjectIdentifier(alg.oid)
    if alg.parameters is not None:
        spec["parameters"] = univ.Any(alg.parameters)
    return spec


def header_to_asn1(header: PkiHeader) -> rfc9480.PKIHeader:
    """Build the pyasn1 PKIHeader (RFC 4210 §5.1.1) for a PkiHeader."""
    asn1 = rfc9480.PKIHeader()
    asn1["pvno"] = header.pvno
    asn1["sender"] = _general_name(header.sender)
    asn1["recipient"] = _general_name(header.recipient)
    if header.message_time is not None:
        asn1["messageTime"] = useful.GeneralizedTime(format_generalized_time(header.message_time)).subtype(
            explicitTag=_context(0)
        )
    if header.protection_alg is not None:
        algorithm_to_asn1(header.protection_alg, asn1["protectionAlg"])
    for name, value, number in (
        ("senderKID", header.sender_kid, 2),
        ("recipKID", header.recip_kid, 3),
        ("transactionID", header.transaction_id, 4),
        ("senderNonce", header.sender_nonce, 5),
        ("recipNonce", header.recip_nonce, 6),
    ):
        if value is not None:
            asn1[name] = asn1[name].clone(value)
    if header.free_text:
        free = asn1["freeText"]
        for text in header.free_text:
            free.append(text)
    if header.general_info:
        infos = asn1["generalInfo"]
        for info in header.general_info:
            item = rfc9480.InfoTypeAndValue()
            item["infoType"] = univ.ObjectIdentifier(info.info_type)
            if info.value is not None:
                item["infoValue"] = univ.Any(info.value)
            infos.append(item)
    return asn1


def encode_header(header: PkiHeader) -> bytes:
    """DER of the PKIHeader (RFC 4210 §5.1.1)."""
    return bytes(encoder.encode(header_to_asn1(header)))


def implicit_confirm_info() -> InfoTypeAndValue:
    """generalInfo entry granting implicit confirmation (RFC 4210 §5.1.1.1: NULL value)."""
    return InfoTypeAndValue(ID_IT_IMPLICIT_CONFIRM, _NULL_DER)
