"""The CMP server state machine: bytes in, (HTTP status, bytes, content type) out.

RFC 4210 §5, RFC 9483 §3–§4, 3GPP TS 33.310 §9. One generic core with a
handler per request kind; the checks every message passes (decoding, pvno,
protection, messageTime, nonce replay, transactionID) happen in one place.
Nothing here decides policy: certificate and revocation requests become an
EnrolmentRequest for the enrolment core, and its Decision becomes the reply.

Transaction state lives in the store behind `Transactions` (ra/transactions.py),
so any worker answers the certConf. Replies are protected as the request
was: with the same shared secret, or signed by the server's protection key
(handed in by the composition root; the protocol never opens the token).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from datetime import datetime, timezone
from typing import Any, Callable, ContextManager

from cryptography.hazmat.primitives import serialization

from protocols.cmp import bodies, codec, messages, readers
from protocols.cmp.bodies import CertResponse, FailInfo, PkiStatus, PollResponse, StatusInfo
from protocols.cmp.certchecks import cert_hash, check_old_cert_id
from protocols.cmp.checks import Exchange, MessageChecks
from protocols.cmp.context import CmpPolicy, MacGuard, Route, ServerIdentity, Transactions
from protocols.cmp.general import ID_IT_CA_CERTS, general_answers
from protocols.cmp.header import NULL_DN_GENERAL_NAME, PkiHeader, reply_header, reply_header_for
from protocols.cmp.protection import (
    protect_with_mac,
    protect_with_signature,
)
from protocols.cmp.refusals import FAIL_INFO_OF_REASON, CmpRefusal, RefusalRecord, fail_info_name
from ra.requests import (
    Decision,
    EnrolmentRequest,
    Issued,
    Operation,
    Pending,
    Rejected,
    RejectReason,
    Revoked,
)
from ra.requests import Protocol as RequestProtocol

__all__ = [
    "CONTENT_TYPE", "ID_IT_CA_CERTS", "CmpPolicy", "CmpRefusal", "CmpServer", "RefusalRecord", "Route",
    "ServerIdentity", "Transactions",
]

log = logging.getLogger("ztpki.cmp")

CONTENT_TYPE = "application/pkixcmp"  # RFC 6712 §3.4

MAX_LABEL_ECHO = 64  # characters of an unknown path label a 404 repeats

_REPLY_BODY = {"ir": "ip", "cr": "cp", "p10cr": "cp", "kur": "kup"}
_OPERATION = {"ir": Operation.INITIAL, "cr": Operation.INITIAL, "p10cr": Operation.INITIAL, "kur": Operation.REKEY}

class CmpServer(MessageChecks):
    """RFC 4210 / RFC 9483 server over the enrolment core, sans-I/O."""

    def __init__(
        self,
        *,
        decide: Callable[[EnrolmentRequest], Decision],
        result_of: Callable[[str], Decision],
        transactions: Transactions,
        mac_secret: Callable[[str, bool], bytes | None],
        identity: Callable[[Route], ServerIdentity],
        ca_certificates: Callable[[Route], tuple[bytes, ...]],
        route: Callable[[str | None], Route | None] = lambda label: Route(),
        current_crl: Callable[[Route], bytes | None] = lambda route: None,
        audit: Callable[[RefusalRecord], None] | None = None,
        mac_guard: MacGuard | None = None,
        policy: CmpPolicy = CmpPolicy(),
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        unit_of_work: Callable[[], ContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """mac_secret(reference, within_transaction): the shared secret behind
        a senderKID, or None; within_transaction for certConf and pollReq,
        whose credential may be used up by the request that began it."""
        self.decide = decide
        self.result_of = result_of
        self.transactions = transactions
        self.mac_secret = mac_secret
        self.identity = identity
        self.ca_certificates = ca_certificates
        self.route = route
        self.current_crl = current_crl
        self.audit = audit
        self.mac_guard = mac_guard
        self.policy = policy
        self.clock = clock
        self.unit_of_work = unit_of_work

    # -- the entry point ------------------------------------------------------------

    def handle(self, body: bytes, *, path_label: str | None = None, peer: str | None = None) -> tuple[int, bytes, str]:
        """Answer one CMP request (RFC 6712 §3.3: every CMP answer in a 200)."""
        route = self.route(path_label)
        if route is None:
            # The label is the client's: echo a bounded part, as EST does.
            shown = (path_label or "")[:MAX_LABEL_ECHO]
            log.warning("CMP request on an unknown path label %r from %s", shown, peer)
            return 404, b"no CMP endpoint %r\n" % shown.encode("utf-8", "replace"), "text/plain; charset=utf-8"
        try:
            message = codec.decode_message(body)
        except codec.CmpDecodeError as exc:
            log.info("CMP: undecodable request from %s: %s", peer, exc.reason)
            self._record(RefusalRecord(
                "undecodable", fail_info_name(FailInfo.BAD_DATA_FORMAT), exc.reason, peer,
                exc.transaction_id.hex() if exc.transaction_id else None, None,
            ))
            return self._decode_error(exc, route)
        except Exception:
            log.exception("CMP: decoding failed unexpectedly")
            self._record(RefusalRecord(
                "undecodable", fail_info_name(FailInfo.SYSTEM_FAILURE), "decoding failed unexpectedly", peer, None, None,
            ))
            return 400, b"not a CMP message\n", "text/plain; charset=utf-8"
        exchange = Exchange(message, route, self.identity(route), peer, request_hash=hashlib.sha256(body).digest())
        try:
            # One unit of work per message: its store writes (nonce,
            # transaction, the core's records, the audit) commit together
            # before the reply leaves, refusals included.
            with self.unit_of_work():
                try:
                    retained = self._check(exchange)
                    if retained is not None:
                        log.info("CMP %s from %s: a retransmission, answered as before", message.body_type, peer)
                        return self._ok(retained)
                    return self._ok(self._dispatch(exchange))
                except CmpRefusal as refusal:
                    log.info("CMP %s from %s refused: %s", message.body_type, peer, refusal.text)
                    self._record(RefusalRecord(
                        message.body_type, fail_info_name(refusal.fail_info), refusal.text, peer,
                        exchange.transaction_id.hex() or None, exchange.sender or None,
                    ))
                    return self._ok(self._error(exchange, refusal.fail_info, refusal.text))
        except Exception:
            log.exception("CMP %s from %s: unexpected failure", message.body_type, peer)
            # The unit of work is rolled back; the record is written on its own.
            self._record(RefusalRecord(
                message.body_type, fail_info_name(FailInfo.SYSTEM_FAILURE), "internal error", peer,
                exchange.transaction_id.hex() or None, exchange.sender or None,
            ))
            return self._ok(self._error(exchange, FailInfo.SYSTEM_FAILURE, "internal error"))

    def _record(self, record: RefusalRecord) -> None:
        if self.audit is None:
            return
        try:
            self.audit(record)
        except Exception:
            # The refusal still goes out; the missing record is in the log.
            log.exception("CMP: could not audit a refusal")

    @staticmethod
    def _ok(reply: bytes) -> tuple[int, bytes, str]:
        return 200, reply, CONTENT_TYPE

    def _confirmed_by_certconf(self, exchange: Exchange) -> bool:
        last = self.transactions.last_reply(exchange.transaction_id, exchange.sender)
        if last is None:
            return False
        try:
            return codec.decode_message(last).body_type == "pkiconf"
        except codec.CmpDecodeError:
            return False

    def _retain(self, exchange: Exchange, reply: bytes) -> bytes:
        self.transactions.retain_reply(exchange.transaction_id, exchange.sender, exchange.request_hash, reply)
        return reply

    # -- dispatch ------------------------------------------------------------------

    def _dispatch(self, exchange: Exchange) -> bytes:
        kind = exchange.message.body_type
        if kind in _REPLY_BODY:
            return self._certify(exchange)
        if kind == "certConf":
            return self._confirm(exchange)
        if kind == "pollReq":
            return self._poll(exchange)
        if kind == "rr":
            return self._revoke(exchange)
        if kind == "genm":
            return self._general(exchange)
        raise CmpRefusal(FailInfo.BAD_REQUEST, "%s is not a request this server answers" % kind)

    def _begin(self, exchange: Exchange) -> None:
        if not self.transactions.begin(exchange.transaction_id, exchange.sender, exchange.message.body_type):
            raise CmpRefusal(FailInfo.TRANSACTION_ID_IN_USE, "transactionID is in use (RFC 9483 §3.5)")

    # -- ir, cr, kur, p10cr (RFC 9483 §4.1) ----------------------------------------

    def _certify(self, exchange: Exchange) -> bytes:
        message = exchange.message
        self._begin(exchange)
        try:
            if message.body_type == "p10cr":
                fields, _ = messages.p10_request(message)
            else:
                requests = messages.cert_requests(message)
                if len(requests) != 1:
                    raise messages.CertRequestError("one certificate per request (RFC 9483 §4.1.1)", FailInfo.BAD_REQUEST)
                fields = requests[0]
        except messages.CertRequestError as exc:
            self.transactions.record_rejected(exchange.transaction_id, exchange.sender)
            raise CmpRefusal(exc.fail_info, str(exc)) from None
        ra_verified = fields.pop is messages.Pop.RA_VERIFIED
        if ra_verified and exchange.trusted_ra is None:
            # RFC 4211 §4, RFC 9483 §5.2: only an RA the operator configured may vouch for POP.
            self.transactions.record_rejected(exchange.transaction_id, exchange.sender)
            raise CmpRefusal(FailInfo.BAD_POP, "raVerified POP is accepted only from a trusted RA")
        if message.body_type == "kur":
            try:
                check_old_cert_id(fields.controls, exchange.evidence)
            except CmpRefusal:
                self.transactions.record_rejected(exchange.transaction_id, exchange.sender)
                raise
        request = EnrolmentRequest(
            protocol=RequestProtocol.CMP,
            operation=_OPERATION[message.body_type],
            public_key=fields.public_key,
            # raVerified reaches here only from a trusted RA (checked above).
            pop_verified=fields.pop_verified or ra_verified,
            subject=fields.subject,
            sans=fields.sans,
            extensions=fields.extensions,
            evidence=exchange.evidence,
            ca=exchange.route.ca,
            profile=exchange.route.profile,
            transaction_id=exchange.transaction_id.hex(),
            peer=exchange.peer,
            received_at=self.clock(),
        )
        decision = self.decide(request)
        return self._answer_certification(exchange, decision, fields.cert_req_id, message.body_type)

    def _answer_certification(self, exchange: Exchange, decision: Decision, cert_req_id: int, request_type: str) -> bytes:
        tid, sender = exchange.transaction_id, exchange.sender
        reply_type = _REPLY_BODY[request_type]
        if isinstance(decision, Issued):
            certificate = decision.certificate.public_bytes(serialization.Encoding.DER)
            # RFC 4210 §5.1.1.1: granted when the client asks, the instance
            # allows it and the issuing profile does ([cmp], profiles.toml).
            implicit = (
                exchange.message.header.implicit_confirm
                and self.policy.allow_implicit_confirm
                and decision.implicit_confirm
            )
            self.transactions.record_issued(
                tid, sender, ca=exchange.route.ca, certificate=certificate,
                serial=decision.certificate.serial_number, cert_req_id=cert_req_id, implicit_confirm=implicit,
            )
            ca_pubs: tuple[bytes, ...] = ()
            if request_type == "ir":
                # TS 33.310 §9.5.3 and RFC 9483 §4.1.1: the operator root for a first enrolment.
                ca_pubs = tuple(c.public_bytes(serialization.Encoding.DER) for c in decision.ca_certificates)
            chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in decision.chain)
            response = CertResponse(cert_req_id, StatusInfo(PkiStatus.ACCEPTED), certificate)
            body = bodies.cert_rep_body([response], ca_pubs)
            # RFC 9483 §4.1.1: the issued certificate's chain in extraCerts.
            return self._retain(exchange, self._reply(exchange, reply_type, body, chain, implicit_confirm=implicit))
        if isinstance(decision, Pending):
            self.transactions.record_pending(tid, sender, decision.request_id, cert_req_id)
            waiting = StatusInfo(PkiStatus.WAITING, texts=("request %s awaits approval" % decision.request_id,))
            return self._retain(exchange, self._reply(exchange, reply_type, bodies.cert_rep_body([CertResponse(cert_req_id, waiting)])))
        self.transactions.record_rejected(tid, sender)
        if isinstance(decision, Rejected):
            fail = FAIL_INFO_OF_REASON.get(decision.reason, FailInfo.BAD_REQUEST)
            text = decision.text
        else:
            fail, text = FailInfo.BAD_REQUEST, "unexpected decision %s" % type(decision).__name__
        rejected = StatusInfo(PkiStatus.REJECTION, frozenset({fail}), (text,))
        return self._retain(exchange, self._reply(exchange, reply_type, bodies.cert_rep_body([CertResponse(cert_req_id, rejected)])))

    # -- certConf (RFC 4210 §5.3.18; RFC 9483 §4.1.1) ---------------------------------

    def _confirm(self, exchange: Exchange) -> bytes:
        tid, sender = exchange.transaction_id, exchange.sender
        record = self.transactions.get(tid, sender)
        if record is None or record.status not in ("awaiting_confirm", "confirmed") or record.certificate is None:
            # RFC 9483 §3.5: a message that belongs to no open transaction.
            raise CmpRefusal(FailInfo.BAD_REQUEST, "no transaction awaits this certConf")
        try:
            confirmations = readers.cert_confirmations(exchange.message)
        except readers.BodyError as exc:
            raise CmpRefusal(exc.fail_info, str(exc)) from None
        if record.status == "confirmed":
            # A certConf sent again after its pkiConf was lost (a new message,
            # not a byte-for-byte retransmission): the same certificate
            # confirmed again gets pkiConf again. A transaction confirmed
            # implicitly (RFC 9483 §4.1.1) awaits no certConf at all.
            if self._confirmed_by_certconf(exchange) and len(confirmations) == 1 and confirmations[0].accepted and confirmations[0].cert_req_id == record.cert_req_id:
                alg = confirmations[0].hash_alg.oid if confirmations[0].hash_alg else None
                if cert_hash(record.certificate, alg) == confirmations[0].cert_hash:
                    return self._retain(exchange, self._reply(exchange, "pkiconf", bodies.pkiconf_body()))
            raise CmpRefusal(FailInfo.BAD_REQUEST, "the transaction is already confirmed")
        if not confirmations or not confirmations[0].accepted:
            # RFC 4210 §5.3.18: the client rejects the certificate; the CA revokes it.
            self.transactions.reject_confirmation(tid, sender)
            return self._retain(exchange, self._reply(exchange, "pkiconf", bodies.pkiconf_body()))
        confirmation = confirmations[0]
        if len(confirmations) != 1 or confirmation.cert_req_id != record.cert_req_id:
            raise CmpRefusal(FailInfo.BAD_REQUEST, "certConf names another certReqId")
        expected = cert_hash(record.certificate, confirmation.hash_alg.oid if confirmation.hash_alg else None)
        if expected is None or expected != confirmation.cert_hash:
            raise CmpRefusal(FailInfo.BAD_CERT_ID, "certHash does not match the issued certificate")
        if not self.transactions.confirm(tid, sender):
            raise CmpRefusal(FailInfo.BAD_REQUEST, "the transaction is no longer awaiting confirmation")
        return self._retain(exchange, self._reply(exchange, "pkiconf", bodies.pkiconf_body()))

    # -- pollReq (RFC 4210 §5.3.22; RFC 9483 §4.4) ---------------------------------------

    def _poll(self, exchange: Exchange) -> bytes:
        tid, sender = exchange.transaction_id, exchange.sender
        record = self.transactions.get(tid, sender)
        if record is None or record.status != "pending" or record.request_id is None:
            raise CmpRefusal(FailInfo.BAD_REQUEST, "no pending request in this transaction")
        decision = self.result_of(record.request_id)
        if isinstance(decision, Pending):
            entry = PollResponse(record.cert_req_id or 0, decision.retry_after)
            return self._retain(exchange, self._reply(exchange, "pollRep", bodies.poll_rep_body([entry])))
        return self._answer_certification(exchange, decision, record.cert_req_id or 0, record.body_type)

    # -- rr (RFC 4210 §5.3.9; RFC 9483 §4.2) ------------------------------------------------

    def _revoke(self, exchange: Exchange) -> bytes:
        self._begin(exchange)
        try:
            details = readers.revocation_requests(exchange.message)
        except readers.BodyError as exc:
            self.transactions.record_rejected(exchange.transaction_id, exchange.sender)
            raise CmpRefusal(exc.fail_info, str(exc)) from None
        if len(details) != 1 or details[0].serial_number is None:
            self.transactions.record_rejected(exchange.transaction_id, exchange.sender)
            raise CmpRefusal(FailInfo.BAD_REQUEST, "one RevDetails with a serialNumber (RFC 9483 §4.2)")
        request = EnrolmentRequest(
            protocol=RequestProtocol.CMP,
            operation=Operation.REVOCATION,
            public_key=None,
            pop_verified=False,
            evidence=exchange.evidence,
            ca=exchange.route.ca,
            transaction_id=exchange.transaction_id.hex(),
            revoke_serial=details[0].serial_number,
            revoke_reason=details[0].reason or "unspecified",
            revoke_issuer=details[0].issuer,
            peer=exchange.peer,
            received_at=self.clock(),
        )
        decision = self.decide(request)
        if isinstance(decision, Revoked):
            self.transactions.record_done(exchange.transaction_id, exchange.sender)
            status = StatusInfo(PkiStatus.ACCEPTED)
        else:
            self.transactions.record_rejected(exchange.transaction_id, exchange.sender)
            reason = decision.reason if isinstance(decision, Rejected) else RejectReason.BAD_REQUEST
            text = decision.text if isinstance(decision, Rejected) else "revocation not possible"
            status = StatusInfo(PkiStatus.REJECTION, frozenset({FAIL_INFO_OF_REASON.get(reason, FailInfo.BAD_REQUEST)}), (text,))
        return self._retain(exchange, self._reply(exchange, "rp", bodies.rp_body([status])))

    # -- genm (RFC 4210 §5.3.19; RFC 9483 §4.3) ----------------------------------------------

    def _general(self, exchange: Exchange) -> bytes:
        try:
            infos = readers.general_messages(exchange.message)
        except readers.BodyError as exc:
            raise CmpRefusal(exc.fail_info, str(exc)) from None
        route = exchange.route
        answers = general_answers(infos, lambda: self.ca_certificates(route), lambda: self.current_crl(route))
        if not answers:
            raise CmpRefusal(FailInfo.BAD_REQUEST, "no supported infoType in genm (RFC 9483 §4.3.1–§4.3.4 are)")
        return self._reply(exchange, "genp", bodies.genp_body(answers))

    # -- replies ---------------------------------------------------------------------------------

    def _reply(
        self, exchange: Exchange, body_type: str, body: Any, extra: tuple[bytes, ...] = (), *, implicit_confirm: bool = False
    ) -> bytes:
        identity = exchange.identity
        signed = exchange.secret is None
        header = reply_header_for(
            exchange.message.header, identity.sender, identity.key_id if signed else None,
            implicit_confirm=implicit_confirm,
        )
        return self._protect(exchange, header, codec.encode_body(body_type, body), extra)

    def _protect(self, exchange: Exchange, header: PkiHeader, body_der: bytes, extra: tuple[bytes, ...]) -> bytes:
        if exchange.secret is not None and exchange.mac is not None:
            return protect_with_mac(header, body_der, exchange.secret, exchange.mac, extra)
        identity = exchange.identity
        certs = identity.chain + tuple(c for c in extra if c not in identity.chain)
        return protect_with_signature(header, body_der, identity.signer, certs)

    def _error(self, exchange: Exchange, fail_info: FailInfo, text: str) -> bytes:
        """An error message (RFC 4210 §5.3.21; RFC 9483 §3.6.4), protected as far as we can."""
        body = bodies.error_body(StatusInfo(PkiStatus.REJECTION, frozenset({fail_info}), (text[:200],)))
        return self._reply(exchange, "error", body)

    def _decode_error(self, exc: codec.CmpDecodeError, route: Route) -> tuple[int, bytes, str]:
        # RFC 9483 §3.6.4: echo whatever transactionID and nonce could be read.
        if exc.transaction_id is None and exc.sender_nonce is None:
            return 400, b"not a CMP message\n", "text/plain; charset=utf-8"
        identity = self.identity(route)
        header = reply_header(
            identity.sender, NULL_DN_GENERAL_NAME,
            transaction_id=exc.transaction_id or os.urandom(16),
            recip_nonce=exc.sender_nonce,
            sender_kid=identity.key_id,
            recip_kid=exc.sender_kid,
        )
        body = bodies.error_body(
            StatusInfo(PkiStatus.REJECTION, frozenset({FailInfo.BAD_DATA_FORMAT}), (exc.reason[:200],))
        )
        reply = protect_with_signature(header, codec.encode_body("error", body), identity.signer, identity.chain)
        return self._ok(reply)
