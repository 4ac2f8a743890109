"""Refusals nobody authenticated, counted instead of chained (issue 10, 6c).

Every decision about an authenticated identity stays a record in the hash
chain (ra/audit.py). A refusal before anyone authenticated — an undecodable
CMP body, a bad MAC, an unknown senderKID, an untrusted signer, a replayed
nonce, a wrong EST password — says only "someone at this address failed
this way", and anyone can send as many as the network carries: one row of
~400 bytes each let a single client write 11 GB a day. Here each becomes
one increment of a counter keyed by (interval, source, protocol, reason).

What one interval can cost is bounded whatever the client sends: the
protocol and reason come from closed sets (anything else is "other"), and
past `max_sources` distinct addresses in an interval (a client spraying
IPv6 addresses) further sources share the row "*". Intervals older than
the retention are deleted now and then. When a worker first sees a new
interval it seals the earlier ones: one hash-chained summary record per
interval (its counts per protocol and reason) keeps a tamper-evident trace
of the noise too. An increment that lands in an interval after it was
sealed still counts in its row, not in the summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import Engine, delete, func, select, update

from storage import db
from storage.db import format_time, now, utc
from ra.requests import RejectReason
from ra.schema import audit_noise

ANY_SOURCE = "*"
OTHER = "other"
UNKNOWN_SOURCE = "-"  # no peer address (a unit test, a WSGI server that gives none)
PROTOCOLS = frozenset({"cmp", "est", "scep", "sztp", "cli"})
_SAMPLE = 256  # audit_noise.sample
_SOURCE = 64  # audit_noise.source

_C = audit_noise.c


@dataclass(frozen=True)
class NoisePolicy:
    interval_seconds: int = 3600
    max_sources: int = 256  # distinct sources per interval before they fold into "*"
    retention_days: int = 30


@dataclass(frozen=True)
class NoiseRow:
    interval_start: int
    source: str
    protocol: str
    reason: str
    count: int
    first_seen: datetime
    last_seen: datetime
    sample: str
    sealed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_start": self.interval_start,
            "source": self.source,
            "protocol": self.protocol,
            "reason": self.reason,
            "count": self.count,
            "first_seen": format_time(self.first_seen),
            "last_seen": format_time(self.last_seen),
            "sample": self.sample,
            "sealed": self.sealed,
        }


# A closed interval's counts, for its summary record in the hash chain.
Summary = dict[str, Any]


class NoiseLog:
    def __init__(
        self,
        engine: Engine,
        policy: NoisePolicy = NoisePolicy(),
        *,
        reasons: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """reasons: the refusal codes besides the core's RejectReasons (the
        protocols' own: PKIFailureInfo names, EST's); the composition root
        knows them."""
        self.engine = engine
        self.policy = policy
        self.reasons = frozenset(r.value for r in RejectReason) | frozenset(reasons)
        self.clock = clock
        self._housekept = -1  # the last interval this process sealed and pruned before

    def interval_of(self, moment: float) -> int:
        step = self.policy.interval_seconds
        return int(moment // step) * step

    def count(self, *, protocol: str, source: str | None, reason: str, detail: dict[str, Any]) -> list[Summary]:
        """Count one refusal. Returns the summaries of the intervals this call
        sealed (usually none), for the caller to append to the hash chain in
        the same transaction."""
        interval = self.interval_of(self.clock())
        key: dict[str, Any] = {
            "interval_start": interval,
            "source": _source(source),
            "protocol": protocol if protocol in PROTOCOLS else OTHER,
            "reason": reason if reason in self.reasons else OTHER,
        }
        moment = now()
        with db.begin(self.engine) as conn:
            bumped = conn.execute(
                update(audit_noise).where(*_where(key)).values(count=_C.count + 1, last_seen=moment).returning(_C.count)
            ).first()
            if bumped is not None:
                return []
            if key["source"] != ANY_SOURCE and self._sources_full(conn, interval, key["source"]):
                key["source"] = ANY_SOURCE
            sample = _sample({"reason": reason, **detail} if key["reason"] == OTHER else detail)
            conn.execute(_upsert(conn.dialect.name), {
                **key, "count": 1, "first_seen": moment, "last_seen": moment, "sample": sample, "sealed": False,
            })
            # New rows are few per interval; the first of a new interval
            # (in this process) closes the ones before.
            if interval == self._housekept:
                return []
            self._housekept = interval
            summaries = self._seal_before(conn, interval)
            horizon = interval - self.policy.retention_days * 86400
            conn.execute(delete(audit_noise).where(_C.interval_start < horizon))
            return summaries

    def _sources_full(self, conn: Any, interval: int, source: str) -> bool:
        here = _C.interval_start == interval
        known = conn.execute(select(_C.source).where(here, _C.source == source).limit(1)).first()
        if known is not None:
            return False
        distinct = conn.execute(select(func.count(func.distinct(_C.source))).where(here, _C.source != ANY_SOURCE)).scalar_one()
        return int(distinct) >= self.policy.max_sources

    def _seal_before(self, conn: Any, interval: int) -> list[Summary]:
        # UPDATE … RETURNING: on PostgreSQL a second worker waits on the row
        # locks and then finds them sealed, so each interval is summarised once.
        sealed = conn.execute(
            update(audit_noise).where(_C.interval_start < interval, _C.sealed.is_(False)).values(sealed=True)
            .returning(_C.interval_start, _C.source, _C.protocol, _C.reason, _C.count)
        ).all()
        by_interval: dict[int, list[Any]] = {}
        for row in sealed:
            by_interval.setdefault(int(row.interval_start), []).append(row)
        summaries = []
        for start, rows in sorted(by_interval.items()):
            counts: dict[str, int] = {}
            for row in rows:
                name = f"{row.protocol}:{row.reason}"
                counts[name] = counts.get(name, 0) + int(row._mapping["count"])
            summaries.append({
                "interval_start": start,
                "interval_seconds": self.policy.interval_seconds,
                "total": sum(counts.values()),
                "sources": len({row.source for row in rows}),
                "counts": dict(sorted(counts.items())),
            })
        return summaries

    def rows(self, *, since: int | None = None, source: str | None = None) -> Iterator[NoiseRow]:
        """Rows newest interval first, then by count."""
        query = select(audit_noise).order_by(_C.interval_start.desc(), _C.count.desc(), _C.source, _C.protocol, _C.reason)
        if since is not None:
            query = query.where(_C.interval_start >= since)
        if source is not None:
            query = query.where(_C.source == source)
        with db.connect(self.engine) as conn:
            found = conn.execute(query).all()
        for row in found:
            yield NoiseRow(
                interval_start=int(row.interval_start), source=row.source, protocol=row.protocol, reason=row.reason,
                count=int(row._mapping["count"]), first_seen=utc(row.first_seen), last_seen=utc(row.last_seen), sample=row.sample,
                sealed=bool(row.sealed),
            )


def _where(key: dict[str, Any]) -> list[Any]:
    return [_C.interval_start == key["interval_start"], _C.source == key["source"],
            _C.protocol == key["protocol"], _C.reason == key["reason"]]


def _source(peer: str | None) -> str:
    if not peer:
        return UNKNOWN_SOURCE
    text = "".join(c for c in peer if c.isprintable())[:_SOURCE]
    return text if text and text != ANY_SOURCE else UNKNOWN_SOURCE


def _sample(detail: dict[str, Any]) -> str:
    text = json.dumps(detail, sort_keys=True, default=str, ensure_ascii=False)
    return text if len(text) <= _SAMPLE else text[: _SAMPLE - 1] + "…"


def _upsert(dialect: str) -> Any:
    # Two workers may both find the row missing: the second one's INSERT
    # becomes the increment (SQLite and PostgreSQL alike).
    from sqlalchemy.dialects import postgresql, sqlite

    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(audit_noise)
    return statement.on_conflict_do_update(
        index_elements=[_C.interval_start, _C.source, _C.protocol, _C.reason],
        set_={"count": _C.count + 1, "last_seen": statement.excluded.last_seen},
    )


__all__ = ["ANY_SOURCE", "NoiseLog", "NoisePolicy", "NoiseRow", "OTHER"]
