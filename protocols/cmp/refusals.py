"""CMP refusals as values: the exception the server answers with an error
message, the record it audits, and the one mapping from the core's
RejectReason to PKIFailureInfo (RFC 4210 §5.2.3, RFC 9483 §3.6.4)."""

from __future__ import annotations

from dataclasses import dataclass

from pyasn1_alt_modules import rfc9480

from protocols.cmp.bodies import FailInfo
from ra.requests import RejectReason

# RejectReason → PKIFailureInfo (RFC 4210 §5.2.3, RFC 9483 §3.6.4): the one
# place the core's refusals become CMP codes.
FAIL_INFO_OF_REASON = {
    RejectReason.NOT_AUTHORIZED: FailInfo.NOT_AUTHORIZED,
    RejectReason.BAD_POP: FailInfo.BAD_POP,
    RejectReason.BAD_REQUEST: FailInfo.BAD_REQUEST,
    RejectReason.UNKNOWN_DEVICE: FailInfo.NOT_AUTHORIZED,
    RejectReason.DEVICE_BLOCKED: FailInfo.NOT_AUTHORIZED,
    RejectReason.POLICY_VIOLATION: FailInfo.BAD_CERT_TEMPLATE,
    RejectReason.BAD_CREDENTIAL: FailInfo.BAD_MESSAGE_CHECK,
    RejectReason.UNTRUSTED_CERTIFICATE: FailInfo.SIGNER_NOT_TRUSTED,
    RejectReason.CERTIFICATE_REVOKED: FailInfo.CERT_REVOKED,
    RejectReason.CERTIFICATE_EXPIRED: FailInfo.SIGNER_NOT_TRUSTED,
    RejectReason.TRANSACTION_IN_USE: FailInfo.TRANSACTION_ID_IN_USE,
    RejectReason.REQUEST_REJECTED: FailInfo.NOT_AUTHORIZED,
    RejectReason.SYSTEM_UNAVAILABLE: FailInfo.SYSTEM_UNAVAIL,
}

@dataclass(frozen=True)
class RefusalRecord:
    """A refusal decided here, before or outside the core (which audits its own)."""

    body_type: str
    fail_info: str
    text: str
    peer: str | None
    transaction_id: str | None
    sender: str | None


class CmpRefusal(Exception):
    """A request refused at the CMP level; answered with an error message."""

    def __init__(self, fail_info: FailInfo, text: str) -> None:
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text


def fail_info_name(bit: FailInfo) -> str:
    """The ASN.1 name of a PKIFailureInfo bit (RFC 4210 §5.2.3), e.g. badMessageCheck."""
    return str(rfc9480.PKIFailureInfo.namedValues.getName(int(bit)))
