"""What the server reads from certConf, rr, pollReq and genm bodies.

RFC 4210 §5.3.18 (certConf), §5.3.9 (rr), §5.3.22 (pollReq), §5.3.19 (genm);
RFC 9483 §4.1.1, §4.2, §4.3, §4.4. These bodies hold no certificates, so the
pyasn1 values codec.py decoded are read directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyasn1.codec.der import encoder
from pyasn1.error import PyAsn1Error

from protocols.cmp import codec, der
from protocols.cmp.bodies import FailInfo, StatusInfo, status_info_from_asn1
from protocols.cmp.header import AlgorithmId, InfoTypeAndValue

ID_CE_CRL_REASONS = "2.5.29.21"

# CRLReason (RFC 5280 §5.3.1) codes by the names cryptography's
# x509.ReasonFlags uses as values; 7 is unused.
CRL_REASONS = {
    0: "unspecified",
    1: "keyCompromise",
    2: "cACompromise",
    3: "affiliationChanged",
    4: "superseded",
    5: "cessationOfOperation",
    6: "certificateHold",
    8: "removeFromCRL",
    9: "privilegeWithdrawn",
    10: "aACompromise",
}


class BodyError(ValueError):
    """A body whose content cannot be used (badRequest or badDataFormat)."""

    def __init__(self, reason: str, fail_info: FailInfo = FailInfo.BAD_REQUEST) -> None:
        super().__init__(reason)
        self.fail_info = fail_info


@dataclass(frozen=True)
class CertConfirmation:
    """One CertStatus of a certConf (RFC 4210 §5.3.18, RFC 9480 §2.10)."""

    cert_hash: bytes
    cert_req_id: int
    status: StatusInfo | None = None  # absent means accepted (RFC 9483 §4.1.1)
    hash_alg: AlgorithmId | None = None  # cmp2021: the hash used for certHash

    @property
    def accepted(self) -> bool:
        return self.status is None or self.status.status in (0, 1)


@dataclass(frozen=True)
class RevocationRequest:
    """One RevDetails of an rr (RFC 4210 §5.3.9; RFC 9483 §4.2)."""

    serial_number: int | None
    issuer: bytes | None  # Name DER
    reason: str | None  # a CRL_REASONS name, if crlEntryDetails carries one


def _expect(message: codec.PkiMessage, body_type: str) -> None:
    if message.body_type != body_type:
        raise BodyError("%s is not %s" % (message.body_type, body_type))


def cert_confirmations(message: codec.PkiMessage) -> tuple[CertConfirmation, ...]:
    """The CertStatus entries of a certConf (RFC 4210 §5.3.18; RFC 9483 §4.1.1).

    An empty certConf rejects all certificates (RFC 4210 §5.3.18).
    """
    _expect(message, "certConf")
    found = []
    for status in message.body:
        hash_alg = None
        if status["hashAlg"].isValue:
            params = status["hashAlg"]["parameters"]
            hash_alg = AlgorithmId(str(status["hashAlg"]["algorithm"]), bytes(params) if params.isValue else None)
        try:
            info = status_info_from_asn1(status["statusInfo"]) if status["statusInfo"].isValue else None
        except ValueError:
            # A PKIStatus outside RFC 4210 §5.2.3's 0..6 (fuzzing: it was a systemFailure).
            raise BodyError("certConf statusInfo has an unknown PKIStatus", FailInfo.BAD_DATA_FORMAT) from None
        found.append(CertConfirmation(bytes(status["certHash"]), int(status["certReqId"]), info, hash_alg))
    return tuple(found)


def _crl_reason(extensions: object) -> str | None:
    for extension in extensions:  # type: ignore[attr-defined]
        if str(extension["extnID"]) != ID_CE_CRL_REASONS:
            continue
        value = bytes(extension["extnValue"])
        try:
            element = der.read_tlv(value, 0)
        except der.DerError:
            raise BodyError("CRLReason does not parse", FailInfo.BAD_DATA_FORMAT) from None
        code = element.value(value)
        if element.tag != 0x0A or element.end != len(value) or len(code) != 1 or code[0] not in CRL_REASONS:
            raise BodyError("CRLReason is not a known ENUMERATED code", FailInfo.BAD_DATA_FORMAT)
        return CRL_REASONS[code[0]]
    return None


def _issuer_der(issuer: object) -> bytes:
    try:
        return bytes(encoder.encode(issuer["rdnSequence"]))  # type: ignore[index]
    except PyAsn1Error:
        # An RDN pyasn1 decoded but cannot re-encode (e.g. an empty SET; the
        # body fuzz found it): the client's bytes, so badDataFormat.
        raise BodyError("certDetails issuer is not a valid Name", FailInfo.BAD_DATA_FORMAT) from None


def revocation_requests(message: codec.PkiMessage) -> tuple[RevocationRequest, ...]:
    """The RevDetails of an rr (RFC 4210 §5.3.9; RFC 9483 §4.2: issuer and serialNumber)."""
    _expect(message, "rr")
    found = []
    for details in message.body:
        template = details["certDetails"]
        serial = int(template["serialNumber"]) if template["serialNumber"].isValue else None
        issuer = _issuer_der(template["issuer"]) if template["issuer"].isValue else None
        reason = _crl_reason(details["crlEntryDetails"]) if details["crlEntryDetails"].isValue else None
        found.append(RevocationRequest(serial, issuer, reason))
    if not found:
        raise BodyError("rr without RevDetails", FailInfo.BAD_DATA_FORMAT)
    return tuple(found)


def poll_requests(message: codec.PkiMessage) -> tuple[int, ...]:
    """certReqIds of a pollReq (RFC 4210 §5.3.22; RFC 9483 §4.4)."""
    _expect(message, "pollReq")
    return tuple(int(entry["certReqId"]) for entry in message.body)


def general_messages(message: codec.PkiMessage) -> tuple[InfoTypeAndValue, ...]:
    """InfoTypeAndValue entries of a genm (RFC 4210 §5.3.19; RFC 9483 §4.3), values as DER."""
    _expect(message, "genm")
    return tuple(
        InfoTypeAndValue(str(info["infoType"]), bytes(info["infoValue"]) if info["infoValue"].isValue else None)
        for info in message.body
    )
