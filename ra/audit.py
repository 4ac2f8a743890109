"""The audit log: append-only, each record chained to the one before by SHA-256.

A record's hash covers a canonical encoding of all its fields and the hash
of the record before it, so changing, inserting, deleting or reordering a
record breaks the chain at that record, and cutting off the tail leaves the
head row (seq and hash of the last record, written in the same transaction
as every append) disagreeing with the last record. Someone able to rewrite
the whole table *and* the head can forge a consistent chain; anchor the head
hash elsewhere (`ztpki audit verify` prints it) to catch that too.

Many worker processes append at once. Each append is one transaction that
starts by updating the head row: PostgreSQL locks the row, SQLite takes its
write lock at that first write (a read first would risk the deferred
transaction's lock upgrade failing with SQLITE_BUSY). The UPDATE returns the
new seq and the head hash still unchanged, which is the prev_hash to chain
to; the record and the head's new hash follow before the commit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

from sqlalchemy import Engine, insert, select, update

from storage import db
from storage.db import format_time, now, utc
from ra.noise import NoiseLog
from ra.schema import audit_head, audit_log

GENESIS_HASH = "0" * 64
# Prefixed to every hashed encoding so a record hash can never be mistaken
# for (or made to collide with) a hash over some other structure.
HASH_DOMAIN = b"ztpki-audit-v1\x00"
_BATCH = 500  # rows per SELECT while streaming; bounds memory in records() and verify()


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime
    actor: str
    protocol: str
    operation: str
    device: str | None
    evidence: tuple[str, ...]
    outcome: str
    reason: str | None
    serial: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": format_time(self.at),
            "actor": self.actor,
            "protocol": self.protocol,
            "operation": self.operation,
            "device": self.device,
            "evidence": list(self.evidence),
            "outcome": self.outcome,
            "reason": self.reason,
            "serial": self.serial,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int  # records whose hash and link were checked
    first_bad_seq: int | None
    problem: str | None
    head_seq: int = 0
    head_hash: str = GENESIS_HASH


def _canonical_json(value: Any) -> str:
    # sort_keys + fixed separators make the text a function of the value
    # alone; NaN/Infinity are refused because they are not JSON.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(
    *,
    seq: int,
    at: datetime,
    actor: str,
    protocol: str,
    operation: str,
    device: str | None,
    evidence: list[str] | tuple[str, ...],
    outcome: str,
    reason: str | None,
    serial: str | None,
    details: dict[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 over the canonical JSON of every field and the previous hash.

    JSON is self-delimiting (strings are quoted and escaped, null differs
    from ""), so no two different records share an encoding. Anyone can
    recompute it from `ztpki audit list --json`.
    """
    document = {
        "seq": seq,
        "at": format_time(at),
        "actor": actor,
        "protocol": protocol,
        "operation": operation,
        "device": device,
        "evidence": list(evidence),
        "outcome": outcome,
        "reason": reason,
        "serial": serial,
        "details": details,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(HASH_DOMAIN + _canonical_json(document).encode("utf-8")).hexdigest()


def _fit(value: str, column: Any) -> str:
    """Cut a value to its column's length.

    Device names and the like can come from the request itself; an
    over-long one must still leave an audit record (PostgreSQL would refuse
    the row, SQLite would store it whole: cutting keeps both the same).
    """
    length: int | None = getattr(column.type, "length", None)
    if length is None or len(value) <= length:
        return value
    return value[: length - 1] + "…"


def _optional_fit(value: str | None, column: Any) -> str | None:
    return None if value is None else _fit(value, column)


# Every request appends a record: its three statements are built once.
_TAKE_SEQ = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=audit_head.c.seq + 1)
    .returning(audit_head.c.seq, audit_head.c.hash)
)
_INSERT_RECORD = insert(audit_log)  # VALUES: the columns named in the parameters
_SET_HEAD = update(audit_head).where(audit_head.c.id == 1)  # SET hash


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        seq=int(row.seq),
        at=utc(row.at),
        actor=row.actor,
        protocol=row.protocol,
        operation=row.operation,
        device=row.device,
        evidence=tuple(json.loads(row.evidence)),
        outcome=row.outcome,
        reason=row.reason,
        serial=row.serial,
        details=json.loads(row.details),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _computed_hash(record: AuditRecord) -> str:
    return record_hash(
        seq=record.seq, at=record.at, actor=record.actor, protocol=record.protocol,
        operation=record.operation, device=record.device, evidence=record.evidence,
        outcome=record.outcome, reason=record.reason, serial=record.serial,
        details=record.details, prev_hash=record.prev_hash,
    )


class AuditLog:
    def __init__(self, engine: Engine, noise: NoiseLog | None = None) -> None:
        self.engine = engine
        self.noise = noise if noise is not None else NoiseLog(engine)

    def note_noise(self, *, protocol: str, source: str | None, reason: str, detail: dict[str, Any]) -> None:
        """Count a refusal nobody authenticated (ra/noise.py) instead of
        chaining it; the summaries of the intervals this closes are chained,
        in the same transaction as the seal."""
        with db.unit_of_work(self.engine):
            for summary in self.noise.count(protocol=protocol, source=source, reason=reason, detail=detail):
                self.append(actor="anonymous", protocol="ra", operation="noise-summary", evidence=[],
                            outcome="noise", details=summary)

    def append(
        self,
        *,
        actor: str,
        protocol: str,
        operation: str,
        device: str | None = None,
        evidence: list[str],
        outcome: str,
        reason: str | None = None,
        serial: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditRecord:
        c = audit_log.c
        actor = _fit(actor, c.actor)
        protocol = _fit(protocol, c.protocol)
        operation = _fit(operation, c.operation)
        device = _optional_fit(device, c.device)
        outcome = _fit(outcome, c.outcome)
        reason = _optional_fit(reason, c.reason)
        serial = _optional_fit(serial, c.serial)
        evidence_list = [str(e) for e in evidence]
        # Round-trip through JSON so the hash is computed over exactly what
        # verify() will read back (tuples become lists, keys become strings).
        details_text = _canonical_json(details or {})
        details_value: dict[str, Any] = json.loads(details_text)
        with db.begin(self.engine) as conn:
            locked = conn.execute(_TAKE_SEQ).one_or_none()
            if locked is None:
                raise RuntimeError("audit_head has no row 1: the ra migration did not run")
            seq, prev_hash = int(locked.seq), str(locked.hash)
            # Taken under the lock, so times never run backwards along seq
            # on one node.
            at = now()
            digest = record_hash(
                seq=seq, at=at, actor=actor, protocol=protocol, operation=operation, device=device,
                evidence=evidence_list, outcome=outcome, reason=reason, serial=serial,
                details=details_value, prev_hash=prev_hash,
            )
            conn.execute(_INSERT_RECORD, {
                "seq": seq, "at": at, "actor": actor, "protocol": protocol, "operation": operation,
                "device": device, "evidence": _canonical_json(evidence_list), "outcome": outcome,
                "reason": reason, "serial": serial, "details": details_text, "prev_hash": prev_hash,
                "hash": digest,
            })
            conn.execute(_SET_HEAD, {"hash": digest})
        return AuditRecord(
            seq=seq, at=at, actor=actor, protocol=protocol, operation=operation, device=device,
            evidence=tuple(evidence_list), outcome=outcome, reason=reason, serial=serial,
            details=details_value, prev_hash=prev_hash, hash=digest,
        )

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record; (0, GENESIS_HASH) for an empty log."""
        with db.connect(self.engine) as conn:
            row = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
        return int(row.seq), str(row.hash)

    def records(self, after_seq: int = 0, limit: int | None = None, device: str | None = None) -> Iterator[AuditRecord]:
        """Records in seq order, fetched in batches (keyset pages: no long
        transaction, flat memory, safe while others append)."""
        return (_record(row) for row in self._rows(after_seq, limit, device))

    def _rows(self, after_seq: int | None, limit: int | None, device: str | None) -> Iterator[Any]:
        remaining = limit
        last = after_seq
        while remaining is None or remaining > 0:
            batch = _BATCH if remaining is None else min(_BATCH, remaining)
            query = select(audit_log).order_by(audit_log.c.seq).limit(batch)
            if last is not None:
                query = query.where(audit_log.c.seq > last)
            if device is not None:
                query = query.where(audit_log.c.device == device)
            with db.connect(self.engine) as conn:
                rows = conn.execute(query).all()
            yield from rows
            if len(rows) < batch:
                return
            last = int(rows[-1].seq)
            if remaining is not None:
                remaining -= len(rows)

    def count(self) -> int:
        return self.head()[0]

    def verify(self) -> VerifyResult:
        """Walk the whole chain once, in constant memory.

        The head is read first: every record up to its seq was committed with
        it. Records appended while we walk are checked too; a record beyond
        the head as read after the walk was not written by append().
        """
        head_seq, head_hash = self.head()
        expected_seq = 1
        prev_hash = GENESIS_HASH
        checked = 0

        def bad(seq: int, problem: str) -> VerifyResult:
            return VerifyResult(False, checked, seq, problem, head_seq, head_hash)

        # From no lower bound: a forged row with seq 0 or below is a row too.
        rows = self._rows(None, None, None)
        while True:
            # A column edited into something that no longer parses: bad JSON
            # fails one record; on SQLite a bad timestamp fails the whole page.
            try:
                row = next(rows, None)
            except (ValueError, TypeError) as exc:
                return bad(expected_seq, f"records from {expected_seq} on cannot be read: {exc}")
            if row is None:
                break
            try:
                record = _record(row)
            except (ValueError, TypeError) as exc:
                return bad(int(row.seq), f"record {row.seq} is unreadable: {exc}")
            if record.seq != expected_seq:
                if record.seq > expected_seq:
                    missing = f"{expected_seq}" if record.seq == expected_seq + 1 else f"{expected_seq}..{record.seq - 1}"
                    return bad(expected_seq, f"record {missing} missing (found {record.seq} after {expected_seq - 1})")
                return bad(record.seq, f"record {record.seq} out of order after {expected_seq - 1}")
            if record.prev_hash != prev_hash:
                return bad(record.seq, f"record {record.seq} does not chain to record {record.seq - 1} (prev_hash differs)")
            if _computed_hash(record) != record.hash:
                return bad(record.seq, f"record {record.seq} was altered (its hash does not match its contents)")
            checked += 1
            prev_hash = record.hash
            expected_seq += 1
            if record.seq == head_seq and record.hash != head_hash:
                return bad(record.seq, f"record {record.seq} is not the record the head points to (hash differs)")

        last_seq = expected_seq - 1
        if last_seq < head_seq:
            missing = f"{last_seq + 1}" if last_seq + 1 == head_seq else f"{last_seq + 1}..{head_seq}"
            return bad(last_seq + 1, f"record {missing} missing at the end (the head is at {head_seq})")
        if last_seq > head_seq:
            head_seq, head_hash = self.head()
            if last_seq > head_seq:
                return bad(head_seq + 1, f"record {head_seq + 1} lies beyond the head (at {head_seq}): not appended by ztpki")
            if last_seq == head_seq and prev_hash != head_hash:
                return bad(last_seq, f"record {last_seq} is not the record the head points to (hash differs)")
        return VerifyResult(True, checked, None, None, head_seq, head_hash)

