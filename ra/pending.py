"""Pending requests and transaction idempotency (issue 4, "Approval").

One row per protocol transaction (transaction_key is unique): a request
waiting for an admin, or the answer a transaction got at once. A retry of
the same transaction finds the row and gets the same answer, so it never
leads to a second certificate; the unique constraint, not a read-then-write
in process memory, decides which of several concurrent workers created it.

Status moves only forward, each step one atomic UPDATE ... WHERE status:

    pending ─approve→ approved ─mark_issued→ issued
       │  └─mark_issued (auto) ──────────→ issued
       ├─reject→ rejected
       └─mark_failed (also from approved) → failed

issued, rejected and failed are final. mark_issued and mark_failed on a row
that is final already return it unchanged: the caller compares (a
different certificate_serial means someone else's answer stands).
"""

from __future__ import annotations

import builtins
import uuid
from types import SimpleNamespace
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, select, update

from storage import db
from storage.db import Conflict, NotFound, now, utc
from ra.schema import enrolment_requests

PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"
ISSUED = "issued"
FAILED = "failed"
STATUSES = (PENDING, APPROVED, REJECTED, ISSUED, FAILED)
FINAL = (ISSUED, REJECTED, FAILED)

_t = enrolment_requests
_BY_TRANSACTION = select(_t).where(_t.c.transaction_key == bindparam("key"))  # every request: built once


@dataclass(frozen=True)
class PendingRecord:
    id: str
    transaction_key: str
    protocol: str
    operation: str
    device_serial: str | None
    ca: str | None
    profile: str | None
    status: str
    request: bytes  # as given to begin() / record_decision()
    key_fingerprint: str | None  # of the requested key: a retry must ask for the same one
    certificate_serial: str | None
    reject_reason: str | None
    reject_text: str | None
    created_at: datetime
    updated_at: datetime
    decided_by: str | None


def _record(row: Any) -> PendingRecord:
    return PendingRecord(
        id=row.id,
        transaction_key=row.transaction_key,
        protocol=row.protocol,
        operation=row.operation,
        device_serial=row.device_serial,
        ca=row.ca,
        profile=row.profile,
        status=row.status,
        request=bytes(row.request),
        key_fingerprint=row.key_fingerprint,
        certificate_serial=row.certificate_serial,
        reject_reason=row.reject_reason,
        reject_text=row.reject_text,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        decided_by=row.decided_by,
    )


def _check_lengths(values: dict[str, Any]) -> None:
    # PostgreSQL refuses an over-long value and SQLite stores it whole;
    # refusing here keeps both databases the same.
    for name, value in values.items():
        length = getattr(_t.c[name].type, "length", None)
        if isinstance(value, str) and length is not None and len(value) > length:
            raise ValueError(f"{name} longer than {length} characters: {value[:40]!r}…")


class PendingRequests:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- creating ------------------------------------------------------------

    def begin(
        self,
        transaction_key: str,
        *,
        protocol: str,
        operation: str,
        device_serial: str | None,
        ca: str | None,
        profile: str | None,
        request_bytes: bytes,
        key_fingerprint: str | None = None,
    ) -> PendingRecord:
        """Store a request awaiting approval, or return the transaction's
        existing row (whatever its status) when it has one."""
        return self._insert_once(
            transaction_key, status=PENDING, protocol=protocol, operation=operation,
            device_serial=device_serial, ca=ca, profile=profile,
            request_bytes=request_bytes, key_fingerprint=key_fingerprint,
        )

    def record_decision(
        self,
        transaction_key: str,
        *,
        protocol: str,
        operation: str,
        device_serial: str | None = None,
        ca: str | None = None,
        profile: str | None = None,
        status: str = ISSUED,
        certificate_serial: str | None = None,
        reject_reason: str | None = None,
        reject_text: str | None = None,
        decided_by: str | None = None,
        request_bytes: bytes = b"",
        key_fingerprint: str | None = None,
    ) -> PendingRecord:
        """Remember the answer a transaction got at once, so a retry gets it
        again. The first answer stands: an existing row is returned as is."""
        if status not in FINAL:
            raise ValueError(f"a decision is one of {', '.join(FINAL)}, not {status!r}")
        return self._insert_once(
            transaction_key, status=status, protocol=protocol, operation=operation,
            device_serial=device_serial, ca=ca, profile=profile, request_bytes=request_bytes,
            key_fingerprint=key_fingerprint, certificate_serial=certificate_serial,
            reject_reason=reject_reason, reject_text=reject_text, decided_by=decided_by,
        )

    def _insert_once(self, transaction_key: str, *, request_bytes: bytes, **values: Any) -> PendingRecord:
        values["transaction_key"] = transaction_key
        _check_lengths(values)
        at = now()
        row = {
            **values,
            "id": str(uuid.uuid4()),
            "request": request_bytes,
            "created_at": at,
            "updated_at": at,
        }
        with db.begin(self.engine) as conn:
            inserted = db.insert_if_absent(conn, _t, row)
        if not inserted:
            # Another worker (or an earlier try) created the transaction's
            # row; its commit is visible once our INSERT has waited on it.
            existing = self.by_transaction(transaction_key)
            if existing is None:
                raise Conflict(f"could not store transaction {transaction_key!r}")
            return existing
        # What went in, without reading it back (every issuance writes one).
        columns = {name: row.get(name) for name in PendingRecord.__dataclass_fields__}
        return _record(SimpleNamespace(**columns))

    # -- reading -------------------------------------------------------------

    def get(self, id: str) -> PendingRecord | None:
        with db.connect(self.engine) as conn:
            row = conn.execute(select(_t).where(_t.c.id == id)).first()
        return _record(row) if row is not None else None

    def _get(self, id: str) -> PendingRecord:
        record = self.get(id)
        if record is None:
            raise NotFound(f"no request {id}")
        return record

    def by_transaction(self, transaction_key: str) -> PendingRecord | None:
        with db.connect(self.engine) as conn:
            row = conn.execute(_BY_TRANSACTION, {"key": transaction_key}).first()
        return _record(row) if row is not None else None

    def list(self, status: str | None = None, device: str | None = None,
             limit: int | None = None) -> builtins.list[PendingRecord]:
        query = select(_t).order_by(_t.c.created_at, _t.c.id)
        if status is not None:
            query = query.where(_t.c.status == status)
        if device is not None:
            query = query.where(_t.c.device_serial == device)
        if limit is not None:
            query = query.limit(limit)
        with db.connect(self.engine) as conn:
            return [_record(row) for row in conn.execute(query)]

    # -- deciding ------------------------------------------------------------

    def approve(self, id: str, admin: str) -> PendingRecord:
        """pending → approved. Conflict for a request in any other state."""
        record = self._transition(id, (PENDING,), status=APPROVED, decided_by=admin)
        if record is None:
            raise Conflict(self._not_pending(id))
        return record

    def reject(self, id: str, admin: str, text: str) -> PendingRecord:
        """pending → rejected (an approved request may be being signed: too late)."""
        record = self._transition(
            id, (PENDING,), status=REJECTED, decided_by=admin,
            reject_reason="request_rejected", reject_text=text,
        )
        if record is None:
            raise Conflict(self._not_pending(id))
        return record

    def mark_issued(self, id: str, certificate_serial: str) -> PendingRecord:
        """pending/approved → issued with this certificate; a final row is
        returned unchanged (compare its certificate_serial with yours)."""
        record = self._transition(id, (PENDING, APPROVED), status=ISSUED, certificate_serial=certificate_serial)
        return record if record is not None else self._final(id)

    def mark_failed(self, id: str, reason: str, text: str) -> PendingRecord:
        """pending/approved → failed; a final row is returned unchanged."""
        record = self._transition(id, (PENDING, APPROVED), status=FAILED, reject_reason=reason, reject_text=text)
        return record if record is not None else self._final(id)

    def _transition(self, id: str, sources: tuple[str, ...], **values: Any) -> PendingRecord | None:
        """One atomic UPDATE ... WHERE status IN sources; None when the row
        is missing or in another state (the WHERE decides, not a prior read)."""
        _check_lengths(values)
        with db.begin(self.engine) as conn:
            row = conn.execute(
                update(_t)
                .where(_t.c.id == id, _t.c.status.in_(sources))
                .values(**values, updated_at=now())
                .returning(*_t.c)
            ).first()
        return _record(row) if row is not None else None

    def _final(self, id: str) -> PendingRecord:
        record = self._get(id)
        if record.status not in FINAL:
            # Moved on between our UPDATE and this read: only forward, so it
            # cannot be pending or approved any more unless someone wrote
            # the table by hand.
            raise Conflict(f"request {id} is {record.status}")
        return record

    def _not_pending(self, id: str) -> str:
        record = self._get(id)
        return f"request {id} is {record.status}, not pending"
