"""genm answers (RFC 4210 §5.3.19; RFC 9483 §4.3): caCerts, rootCaKeyUpdate,
certReqTemplate and CRL updates. Values come from callables the server got
from the composition root; nothing here reaches the CA."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from cryptography import x509

from protocols.cmp import der
from protocols.cmp.bodies import FailInfo
from protocols.cmp.header import InfoTypeAndValue
from protocols.cmp.refusals import CmpRefusal

ID_IT_CA_CERTS = "1.3.6.1.5.5.7.4.17"  # RFC 9480 §4.3 / RFC 9483 §4.3.1
ID_IT_ROOT_CA_KEY_UPDATE = "1.3.6.1.5.5.7.4.18"  # RFC 9483 §4.3.2
ID_IT_CERT_REQ_TEMPLATE = "1.3.6.1.5.5.7.4.19"  # RFC 9483 §4.3.3
ID_IT_CRL_STATUS_LIST = "1.3.6.1.5.5.7.4.22"  # RFC 9480 §2.16, RFC 9483 §4.3.4
ID_IT_CRLS = "1.3.6.1.5.5.7.4.23"

# RFC 9483 §4.3 profiles one infoType per genm; RFC 4210 §5.3.19 allows a
# SEQUENCE OF. This server answers four, so eight leaves room for a client
# that asks for all of them and a few it merely hopes for, while a genm of
# thousands of caCerts entries (issue 10, finding 6a: 89x amplification)
# is refused before any work.
MAX_INFO_TYPES = 8


def general_answers(
    infos: tuple[InfoTypeAndValue, ...],
    ca_certificates: Callable[[], tuple[bytes, ...]],
    current_crl: Callable[[], bytes | None],
) -> list[InfoTypeAndValue]:
    """The genp entries for the infoTypes this server answers (RFC 9483 §4.3.1–§4.3.4).

    Each infoType is answered once, for its first entry, so the reply is at
    most one copy of each answer whatever the request repeats.
    """
    if len(infos) > MAX_INFO_TYPES:
        raise CmpRefusal(
            FailInfo.BAD_REQUEST, "genm with %d infoTypes; at most %d (RFC 9483 §4.3)" % (len(infos), MAX_INFO_TYPES)
        )
    answers = []
    seen: set[str] = set()
    for info in infos:
        if info.info_type in seen:
            continue
        seen.add(info.info_type)
        if info.info_type == ID_IT_CA_CERTS:
            certs = ca_certificates()
            answers.append(InfoTypeAndValue(ID_IT_CA_CERTS, der.wrap(der.TAG_SEQUENCE, b"".join(certs))))
        elif info.info_type in (ID_IT_ROOT_CA_KEY_UPDATE, ID_IT_CERT_REQ_TEMPLATE):
            # RFC 9483 §4.3.2 / §4.3.3: infoValue absent means no root
            # key update is known / no template is required.
            answers.append(InfoTypeAndValue(info.info_type))
        elif info.info_type == ID_IT_CRL_STATUS_LIST:
            answers.append(crl_update(current_crl(), info.value))
    return answers


def crl_update(crl: bytes | None, value: bytes | None) -> InfoTypeAndValue:
    """RFC 9483 §4.3.4: the CA's current CRL unless the client's is as new;
    infoValue absent when there is nothing newer."""
    held = _crl_status_times(value)
    if crl is None:
        return InfoTypeAndValue(ID_IT_CRLS)
    this_update = x509.load_der_x509_crl(crl).last_update_utc
    if held and all(moment is not None and moment >= this_update for moment in held):
        return InfoTypeAndValue(ID_IT_CRLS)
    return InfoTypeAndValue(ID_IT_CRLS, der.wrap(der.TAG_SEQUENCE, crl))


def _crl_status_times(value: bytes | None) -> list[datetime | None]:
    """thisUpdate of each CRLStatus in a CRLStatusListValue (RFC 9480 §2.16)."""
    if value is None:
        raise CmpRefusal(FailInfo.BAD_DATA_FORMAT, "crlStatusList without a value")
    found: list[datetime | None] = []
    try:
        outer = der.read_tlv(value, 0)
        statuses = der.children(value, outer)
        # CRLStatusListValue ::= SEQUENCE SIZE (1..MAX) OF CRLStatus, CRLStatus ::=
        # SEQUENCE { source CRLSource ([0] or [1]), thisUpdate Time OPTIONAL }
        # (RFC 9480 §2.16); a NULL or an empty list was read as "no CRL held".
        if outer.tag != der.TAG_SEQUENCE or outer.end != len(value) or not statuses:
            raise der.DerError("not a non-empty SEQUENCE OF CRLStatus")
        for status in statuses:
            parts = der.children(value, status) if status.tag == der.TAG_SEQUENCE else []
            if not 1 <= len(parts) <= 2 or parts[0].tag not in (0xA0, 0xA1) or (
                len(parts) == 2 and parts[1].tag not in (0x17, 0x18)
            ):
                raise der.DerError("CRLStatus is not source and optional thisUpdate")
            moment = None
            if len(parts) > 1 and parts[1].tag in (0x17, 0x18):
                text = parts[1].value(value).decode("ascii")
                pattern = "%y%m%d%H%M%SZ" if parts[1].tag == 0x17 else "%Y%m%d%H%M%SZ"
                moment = datetime.strptime(text, pattern).replace(tzinfo=timezone.utc)
                if parts[1].tag == 0x17 and moment.year >= 2050:
                    # RFC 5280 §4.1.2.5.1: UTCTime YY of 50 and above is 19YY
                    # (strptime reads 50..68 as 20YY: a 1960 CRL looked current).
                    moment = moment.replace(year=moment.year - 100)
            found.append(moment)
    except (der.DerError, ValueError, UnicodeDecodeError) as exc:
        raise CmpRefusal(FailInfo.BAD_DATA_FORMAT, "crlStatusList does not parse: %s" % exc) from None
    return found
