"""Reply bodies a CMP server sends (RFC 4210 §5.3, RFC 9483 §4), as pyasn1 values.

Certificates are DER bytes placed as opaque ANY values (asn1.py), so building
an ip/cp/kup never decodes the issued certificate with pyasn1 (LIMITS.md
"What bounds an enrolment": the ip row).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from pyasn1.type import tag, univ
from pyasn1_alt_modules import rfc4210, rfc9480

from protocols.cmp import asn1
from protocols.cmp.header import InfoTypeAndValue


class PkiStatus(enum.IntEnum):
    """PKIStatus (RFC 4210 §5.2.3)."""

    ACCEPTED = 0
    GRANTED_WITH_MODS = 1
    REJECTION = 2
    WAITING = 3
    REVOCATION_WARNING = 4
    REVOCATION_NOTIFICATION = 5
    KEY_UPDATE_WARNING = 6


class FailInfo(enum.IntEnum):
    """PKIFailureInfo bit numbers (RFC 4210 §5.2.3, RFC 9480 §2.2)."""

    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4
    BAD_DATA_FORMAT = 5
    WRONG_AUTHORITY = 6
    INCORRECT_DATA = 7
    MISSING_TIME_STAMP = 8
    BAD_POP = 9
    CERT_REVOKED = 10
    CERT_CONFIRMED = 11
    WRONG_INTEGRITY = 12
    BAD_RECIPIENT_NONCE = 13
    TIME_NOT_AVAILABLE = 14
    UNACCEPTED_POLICY = 15
    UNACCEPTED_EXTENSION = 16
    ADD_INFO_NOT_AVAILABLE = 17
    BAD_SENDER_NONCE = 18
    BAD_CERT_TEMPLATE = 19
    SIGNER_NOT_TRUSTED = 20
    TRANSACTION_ID_IN_USE = 21
    UNSUPPORTED_VERSION = 22
    NOT_AUTHORIZED = 23
    SYSTEM_UNAVAIL = 24
    SYSTEM_FAILURE = 25
    DUPLICATE_CERT_REQ = 26


@dataclass(frozen=True)
class StatusInfo:
    """PKIStatusInfo (RFC 4210 §5.2.3)."""

    status: PkiStatus
    fail_info: frozenset[FailInfo] = frozenset()
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class CertResponse:
    """One CertResponse of a CertRepMessage (RFC 4210 §5.3.4); certificate as DER."""

    cert_req_id: int
    status: StatusInfo
    certificate: bytes | None = None


@dataclass(frozen=True)
class PollResponse:
    """One entry of PollRepContent (RFC 4210 §5.3.22)."""

    cert_req_id: int
    check_after: int  # seconds
    reason: tuple[str, ...] = ()


def _tag(number: int, constructed: bool) -> tag.Tag:
    form = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return tag.Tag(tag.tagClassContext, form, number)


def _free_text(texts: Iterable[str], spec: rfc9480.PKIFreeText) -> rfc9480.PKIFreeText:
    for text in texts:
        spec.append(text)
    return spec


def status_info_to_asn1(info: StatusInfo, spec: rfc9480.PKIStatusInfo | None = None) -> rfc9480.PKIStatusInfo:
    """PKIStatusInfo (RFC 4210 §5.2.3); failInfo as a DER named bit list."""
    asn1_info = rfc9480.PKIStatusInfo() if spec is None else spec
    asn1_info["status"] = int(info.status)
    if info.texts:
        _free_text(info.texts, asn1_info["statusString"])
    if info.fail_info:
        # X.690 §11.2.2: a named bit list ends at its highest set bit, which a
        # bit string built from the names does.
        names = ",".join(rfc9480.PKIFailureInfo.namedValues.getName(int(bit)) for bit in sorted(info.fail_info))
        asn1_info["failInfo"] = rfc9480.PKIFailureInfo(names)
    return asn1_info


def cert_rep_body(responses: Iterable[CertResponse], ca_pubs: Iterable[bytes] = ()) -> asn1.OpaqueCertRepMessage:
    """CertRepMessage for ip, cp and kup (RFC 4210 §5.3.4; RFC 9483 §4.1.1).

    RFC 9483 §4.1.1: caPubs only when the certificate request was for a new
    trust anchor (first enrolment, TS 33.310 operator root).
    """
    body = asn1.OpaqueCertRepMessage()
    pubs = list(ca_pubs)
    if pubs:
        field = body["caPubs"]
        for cert in pubs:
            field.append(univ.Any(cert))
    answers = body["response"]
    for response in responses:
        item = asn1.OpaqueCertResponse()
        item["certReqId"] = response.cert_req_id
        status_info_to_asn1(response.status, item["status"])
        if response.certificate is not None:
            pair = item["certifiedKeyPair"]
            pair["certOrEncCert"]["certificate"] = univ.Any(response.certificate).subtype(
                explicitTag=_tag(0, True)
            )
        answers.append(item)
    return body


def pkiconf_body() -> rfc4210.PKIConfirmContent:
    """PKIConfirmContent ::= NULL (RFC 4210 §5.3.17)."""
    return rfc4210.PKIConfirmContent("")


def rp_body(statuses: Iterable[StatusInfo]) -> rfc4210.RevRepContent:
    """RevRepContent with one status per RevDetails (RFC 4210 §5.3.10; RFC 9483 §4.2)."""
    body = rfc4210.RevRepContent()
    for info in statuses:
        body["status"].append(status_info_to_asn1(info))
    return body


def genp_body(infos: Iterable[InfoTypeAndValue]) -> rfc9480.GenRepContent:
    """GenRepContent (RFC 4210 §5.3.19; RFC 9483 §4.3); values as DER."""
    body = rfc9480.GenRepContent()
    for info in infos:
        item = rfc9480.InfoTypeAndValue()
        item["infoType"] = univ.ObjectIdentifier(info.info_type)
        if info.value is not None:
            item["infoValue"] = univ.Any(info.value)
        body.append(item)
    return body


def poll_rep_body(entries: Iterable[PollResponse]) -> rfc9480.PollRepContent:
    """PollRepContent (RFC 4210 §5.3.22; RFC 9483 §4.4)."""
    body = rfc9480.PollRepContent()
    for entry in entries:
        item = body.componentType.clone()
        item["certReqId"] = entry.cert_req_id
        item["checkAfter"] = entry.check_after
        if entry.reason:
            _free_text(entry.reason, item["reason"])
        body.append(item)
    return body


def error_body(info: StatusInfo, error_code: int | None = None, details: tuple[str, ...] = ()) -> rfc9480.ErrorMsgContent:
    """ErrorMsgContent (RFC 4210 §5.3.21; RFC 9483 §3.6.4)."""
    body = rfc9480.ErrorMsgContent()
    status_info_to_asn1(info, body["pKIStatusInfo"])
    if error_code is not None:
        body["errorCode"] = error_code
    if details:
        _free_text(details, body["errorDetails"])
    return body


def status_info_from_asn1(asn1_info: rfc9480.PKIStatusInfo) -> StatusInfo:
    """Read a PKIStatusInfo (RFC 4210 §5.2.3) into a StatusInfo."""
    fail: frozenset[FailInfo] = frozenset()
    if asn1_info["failInfo"].isValue:
        bits = asn1_info["failInfo"]
        fail = frozenset(FailInfo(i) for i in range(min(len(bits), len(FailInfo))) if bits[i])
    texts: tuple[str, ...] = ()
    if asn1_info["statusString"].isValue:
        texts = tuple(str(text) for text in asn1_info["statusString"])
    return StatusInfo(PkiStatus(int(asn1_info["status"])), fail, texts)
