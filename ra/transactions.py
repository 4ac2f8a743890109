"""CMP transaction state in the store (RFC 4210 §5.1.1, §5.3.18; RFC 9483 §3.5).

A transaction is keyed by its transactionID and the identity that protected
it (the MAC's senderKID or the signer certificate), so a certConf can reach
any worker or node. Every state change is one UPDATE … WHERE status = …, so
two workers racing on the same transaction cannot both win. Nothing about a
transaction lives in process memory.

The protocol code hands in bytes and identities; this module never parses
protocol messages.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import Engine, bindparam, delete, func, select, update

from storage import db
from storage.db import now
from ca.revocation import RevocationError
from ca.schema import certificates
from ra.schema import cmp_nonces, cmp_transactions

log = logging.getLogger("ztpki.ra.transactions")

# Revoke a certificate: (serial, CRL reason name, issuing CA name).
Revoker = Callable[[int, str, "str | None"], None]

OPEN = "open"  # the request is being decided
PENDING = "pending"  # the core holds it for approval; the client polls
AWAITING_CONFIRM = "awaiting_confirm"  # issued, certConf expected
CONFIRMED = "confirmed"  # certConf accepted, or implicitConfirm granted
REJECTED = "rejected"  # the request was refused
CONFIRM_REJECTED = "confirm_rejected"  # the client rejected the certificate; revoked
UNCONFIRMED = "unconfirmed"  # no certConf in time; revoked
DONE = "done"  # rr and other one-shot exchanges
ABANDONED = "abandoned"  # still open past its wait: the worker deciding it died

# The statements of every enrolment, built once (building one costs more than running it).
_T = cmp_transactions.c
_GET = select(cmp_transactions).where(_T.transaction_id == bindparam("tid"), _T.sender == bindparam("sender"))
_RECORD_ISSUED = (
    update(cmp_transactions)
    .where(_T.transaction_id == bindparam("b_tid"), _T.sender == bindparam("b_sender"), _T.status.in_((OPEN, PENDING)))
)  # SET: the columns named in the parameters
_CONFIRM = (
    update(cmp_transactions)
    .where(
        _T.transaction_id == bindparam("b_tid"),
        _T.sender == bindparam("b_sender"),
        _T.status == AWAITING_CONFIRM,
        _T.expires_at > bindparam("stamp"),
    )
    .values(status=CONFIRMED)
)

# Transactions that ended without confirmation whose certificate is still
# valid (a crash between the two commits of an older version's sweep).
_LEFT_VALID = (
    select(cmp_transactions)
    .join(certificates, certificates.c.serial == _T.certificate_serial)
    .where(_T.status.in_((UNCONFIRMED, CONFIRM_REJECTED)), certificates.c.status == "valid")
)
_RETAIN = (
    update(cmp_transactions)
    .where(_T.transaction_id == bindparam("b_tid"), _T.sender == bindparam("b_sender"))
)  # SET request_hash, reply
_RETAINED = select(_T.request_hash, _T.reply).where(
    _T.transaction_id == bindparam("tid"), _T.sender == bindparam("sender")
)


@dataclass(frozen=True)
class CmpTransaction:
    transaction_id: str
    sender: str
    body_type: str
    status: str
    cert_req_id: int | None
    request_id: str | None
    ca: str | None
    certificate_serial: int | None
    certificate: bytes | None
    cert_hash: str | None
    created_at: datetime
    expires_at: datetime


def _row(row: object) -> CmpTransaction:
    values = dict(row._mapping)  # type: ignore[attr-defined]
    values.pop("request_hash", None)
    values.pop("reply", None)
    serial = values.pop("certificate_serial")
    certificate = values.pop("certificate")
    return CmpTransaction(
        certificate_serial=int(serial, 16) if serial else None,
        certificate=bytes(certificate) if certificate is not None else None,
        **values,
    )


class CmpTransactions:
    """The CMP transactions and senderNonces an instance has seen."""

    def __init__(
        self,
        engine: Engine,
        revoke: Revoker | None = None,
        *,
        confirm_wait: timedelta = timedelta(minutes=10),
        nonce_memory: timedelta = timedelta(minutes=30),
        audit: Any = None,
    ) -> None:
        """audit: ra.audit.AuditLog, for the revocations a transaction makes."""
        self.engine = engine
        self.revoke = revoke
        self.audit = audit
        self.confirm_wait = confirm_wait
        self.nonce_memory = nonce_memory
        self._last_purge: datetime | None = None

    # -- replay protection ---------------------------------------------------

    def first_use_of_nonce(self, nonce: bytes) -> bool:
        """Record a request's senderNonce; False if it was seen before (a replay)."""
        stamp = now()
        with db.begin(self.engine) as conn:
            if not db.insert_if_absent(conn, cmp_nonces, {"nonce": nonce.hex()[:128], "seen_at": stamp}):
                return False
        self._purge(stamp)
        return True

    def _purge(self, stamp: datetime) -> None:
        # At most once a minute per worker: forget nonces older than the
        # messageTime window (a message that old is refused with badTime).
        if self._last_purge is not None and stamp - self._last_purge < timedelta(minutes=1):
            return
        self._last_purge = stamp
        with db.begin(self.engine) as conn:
            conn.execute(delete(cmp_nonces).where(cmp_nonces.c.seen_at < stamp - self.nonce_memory))

    # -- transactions --------------------------------------------------------

    def begin(self, transaction_id: bytes, sender: str, body_type: str) -> bool:
        """Start a transaction; False if this sender already used the transactionID."""
        stamp = now()
        with db.begin(self.engine) as conn:
            return db.insert_if_absent(conn, cmp_transactions, {
                "transaction_id": transaction_id.hex(),
                "sender": sender,
                "body_type": body_type,
                "status": OPEN,
                "created_at": stamp,
                "expires_at": stamp + self.confirm_wait,
            })

    def get(self, transaction_id: bytes, sender: str) -> CmpTransaction | None:
        with db.connect(self.engine) as conn:
            row = conn.execute(_GET, {"tid": transaction_id.hex(), "sender": sender}).first()
        return _row(row) if row is not None else None

    def retain_reply(self, transaction_id: bytes, sender: str, request_hash: bytes, reply: bytes) -> None:
        """Keep the reply a transaction's message got, for its retransmission."""
        with db.begin(self.engine) as conn:
            conn.execute(_RETAIN, {
                "b_tid": transaction_id.hex(), "b_sender": sender, "request_hash": request_hash.hex(), "reply": reply,
            })

    def last_reply(self, transaction_id: bytes, sender: str) -> bytes | None:
        """The reply the transaction's last message got, whatever it was."""
        with db.connect(self.engine) as conn:
            row = conn.execute(_RETAINED, {"tid": transaction_id.hex(), "sender": sender}).first()
        return bytes(row.reply) if row is not None and row.reply is not None else None

    def retained_reply(self, transaction_id: bytes, sender: str, request_hash: bytes) -> bytes | None:
        """The reply the same request of the same sender got, if this is a
        retransmission of the transaction's last message (its reply was lost)."""
        with db.connect(self.engine) as conn:
            row = conn.execute(_RETAINED, {"tid": transaction_id.hex(), "sender": sender}).first()
        if row is None or row.reply is None or row.request_hash != request_hash.hex():
            return None
        return bytes(row.reply)

    def _move(self, transaction_id: bytes, sender: str, from_states: tuple[str, ...], **values: object) -> bool:
        with db.begin(self.engine) as conn:
            result = conn.execute(
                update(cmp_transactions)
                .where(
                    cmp_transactions.c.transaction_id == transaction_id.hex(),
                    cmp_transactions.c.sender == sender,
                    cmp_transactions.c.status.in_(from_states),
                )
                .values(**values)
            )
        return result.rowcount == 1

    def record_issued(
        self,
        transaction_id: bytes,
        sender: str,
        *,
        ca: str | None,
        certificate: bytes,
        serial: int,
        cert_req_id: int,
        implicit_confirm: bool,
    ) -> bool:
        """The certificate went out; a certConf is now expected unless implicitly confirmed."""
        with db.begin(self.engine) as conn:
            result = conn.execute(_RECORD_ISSUED, {
                "b_tid": transaction_id.hex(),
                "b_sender": sender,
                "status": CONFIRMED if implicit_confirm else AWAITING_CONFIRM,
                "ca": ca,
                "certificate": certificate,
                "certificate_serial": format(serial, "x"),
                "cert_hash": hashlib.sha256(certificate).hexdigest(),
                "cert_req_id": cert_req_id,
                "expires_at": now() + self.confirm_wait,
            })
        return result.rowcount == 1

    def record_pending(self, transaction_id: bytes, sender: str, request_id: str, cert_req_id: int) -> bool:
        return self._move(
            transaction_id, sender, (OPEN, PENDING), status=PENDING, request_id=request_id, cert_req_id=cert_req_id
        )

    def record_rejected(self, transaction_id: bytes, sender: str) -> bool:
        return self._move(transaction_id, sender, (OPEN, PENDING), status=REJECTED)

    def record_done(self, transaction_id: bytes, sender: str) -> bool:
        return self._move(transaction_id, sender, (OPEN,), status=DONE)

    def confirm(self, transaction_id: bytes, sender: str) -> bool:
        """certConf accepted (RFC 4210 §5.3.18); False unless it was awaiting one in time."""
        with db.begin(self.engine) as conn:
            result = conn.execute(_CONFIRM, {"b_tid": transaction_id.hex(), "b_sender": sender, "stamp": now()})
        return result.rowcount == 1

    def reject_confirmation(self, transaction_id: bytes, sender: str) -> bool:
        """The client rejected its certificate in certConf: revoke it (RFC 4210 §5.3.18)."""
        with db.unit_of_work(self.engine):
            record = self.get(transaction_id, sender)
            if record is None or not self._move(transaction_id, sender, (AWAITING_CONFIRM,), status=CONFIRM_REJECTED):
                return False
            self._revoke(record, "cessationOfOperation", "the client rejected the certificate in certConf")
        return True

    def expire_unconfirmed(self, limit: int = 1000) -> int:
        """Revoke certificates whose certConf never came (RFC 4210 §5.3.18),
        and close transactions left open by a process that died; how many.

        Each transaction's move and its revocation are one unit of work, so a
        crash leaves either both or neither. Transactions that an older
        version (or an interrupted revocation) left `unconfirmed` or
        `confirm_rejected` with a certificate still valid are revoked too."""
        with db.connect(self.engine) as conn:
            rows = conn.execute(
                select(cmp_transactions).where(
                    cmp_transactions.c.status == AWAITING_CONFIRM, cmp_transactions.c.expires_at <= now()
                ).limit(limit)
            ).all()
            left_valid = conn.execute(_LEFT_VALID.limit(limit)).all()
        count = 0
        for row in rows:
            record = _row(row)
            tid = bytes.fromhex(record.transaction_id)
            with db.unit_of_work(self.engine):
                if self._move(tid, record.sender, (AWAITING_CONFIRM,), status=UNCONFIRMED):
                    db.crash_point("cmp.unconfirmed.moved")
                    self._revoke(record, "cessationOfOperation", "no certConf within the confirmation wait")
                    count += 1
        count += self._abandon_open(limit)
        for row in left_valid:
            record = _row(row)
            with db.unit_of_work(self.engine):
                self._revoke(record, "cessationOfOperation", f"transaction ended {record.status}; certificate was still valid")
                count += 1
        return count

    def _abandon_open(self, limit: int) -> int:
        """Transactions still `open` past their wait: the process deciding
        them died (a crash between the serial's commit point and the reply).
        Their certificate, if the token signed one, was never stored as
        issued; ca.reconcile revokes such rows as possibly issued."""
        with db.connect(self.engine) as conn:
            rows = conn.execute(
                select(cmp_transactions).where(_T.status == OPEN, _T.expires_at <= now()).limit(limit)
            ).all()
        count = 0
        for row in rows:
            record = _row(row)
            with db.unit_of_work(self.engine):
                if self._move(bytes.fromhex(record.transaction_id), record.sender, (OPEN,), status=ABANDONED):
                    self._audit(record, "abandoned", "transaction_abandoned",
                                "still open after the confirmation wait; its worker stopped before answering")
                    count += 1
        return count

    def _confirmed_elsewhere(self, record: CmpTransaction) -> bool:
        """Another transaction confirmed this certificate (explicitly or by
        implicitConfirm): nothing a second party's transaction does may undo
        that issuance."""
        c = cmp_transactions.c
        with db.connect(self.engine) as conn:
            found = conn.execute(
                select(func.count()).select_from(cmp_transactions).where(
                    c.certificate_serial == format(record.certificate_serial or 0, "x"),
                    c.status == CONFIRMED,
                    (c.transaction_id != record.transaction_id) | (c.sender != record.sender),
                )
            ).scalar_one()
        return bool(found)

    def _revoke(self, record: CmpTransaction, reason: str, why: str) -> None:
        if self.revoke is None or record.certificate_serial is None:
            return
        if self._confirmed_elsewhere(record):
            log.warning("CMP transaction %s: certificate %x was confirmed in another transaction; not revoked",
                        record.transaction_id, record.certificate_serial)
            self._audit(record, "kept", reason, why + "; confirmed in another transaction, not revoked")
            return
        try:
            self.revoke(record.certificate_serial, reason, record.ca)
        except RevocationError as exc:
            # Already revoked (an admin, a blocked device): nothing left to do.
            # Anything else (the store is down) propagates, and the unit of
            # work rolls the transaction's move back for the next sweep.
            log.info("CMP transaction %s: %s", record.transaction_id, exc)
            return
        db.crash_point("cmp.revoked")
        self._audit(record, "revoked", reason, why)
        log.info("CMP transaction %s: certificate %x revoked (%s)", record.transaction_id, record.certificate_serial, reason)

    def _audit(self, record: CmpTransaction, outcome: str, reason: str, why: str) -> None:
        if self.audit is None:
            return
        self.audit.append(
            actor="ztpki",
            protocol="cmp",
            operation="revocation",
            evidence=[record.sender],
            outcome=outcome,
            reason=reason,
            serial=format(record.certificate_serial, "x") if record.certificate_serial is not None else None,
            details={"transaction": record.transaction_id, "why": why, "ca": record.ca},
        )
