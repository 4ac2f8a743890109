"""Fixed-window rate limits kept in the store (issue 4, "Overload").

A fleet that loses power comes back all at once. Each request hits a few
counters (per device, global); over a limit, the core answers "retry
later" with the seconds until there is room, instead of failing or
queueing without bound. The counters live in rate_counters so every
worker on every node counts against the same limit.

Fixed windows (not sliding) because one upsert per key is all the store
has to do: a burst of up to twice the limit across a window boundary is
acceptable for shedding load.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sqlalchemy import Engine, Executable, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage import db
from ra.schema import rate_counters

# A key's window may not be longer than this: old rows are deleted once
# they are two of the longest windows old, without knowing each key's window.
MAX_WINDOW_SECONDS = 3600

_KEY_LENGTH = 200  # rate_counters.key

RateKey = tuple[str, int, int]  # (key, limit, window seconds)


@dataclass(frozen=True)
class Rule:
    limit: int
    window_seconds: int


@dataclass(frozen=True)
class RateRules:
    """The limits the core applies; None switches one off."""

    per_device: Rule | None = Rule(10, 60)
    global_: Rule | None = Rule(200, 1)

    def keys(self, device: str | None = None) -> list[RateKey]:
        keys: list[RateKey] = []
        if self.global_ is not None:
            keys.append(("global", self.global_.limit, self.global_.window_seconds))
        if device is not None and self.per_device is not None:
            keys.append((f"device:{device}", self.per_device.limit, self.per_device.window_seconds))
        return keys


class RateLimiter:
    def __init__(
        self,
        engine: Engine,
        rules: RateRules | None = None,
        *,
        clock: Callable[[], float] = time.time,
        cleanup_every: int = 100,
    ) -> None:
        self.engine = engine
        self.rules = rules or RateRules()
        self.clock = clock
        self.cleanup_every = cleanup_every
        self._dialect = engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"rate limits need SQLite or PostgreSQL, not {self._dialect}")

    def check(self, device: str | None = None) -> int | None:
        """hit() with the rules' keys for this device (and the global key)."""
        return self.hit(self.rules.keys(device))

    def hit(self, keys: Sequence[RateKey], *, commit: bool = False) -> int | None:
        """Count one request against every key's current window.

        Returns None when every key is within its limit, otherwise the
        seconds until all the keys that are over have room again (the
        request needs every one of them). A refused request is not counted
        (its increments roll back), so a device that keeps retrying during
        a window is not kept out of the next one.
        """
        _check_keys(keys)
        if not keys:
            return None
        moment = self.clock()
        retry_after: int | None = None
        # One lock order for every caller, so two requests sharing keys
        # cannot deadlock on PostgreSQL.
        ordered = sorted(keys)
        counted: list[tuple[str, int]] = []
        with db.begin(self.engine) as conn:
            for key, limit, window in ordered:
                start = _window_start(moment, window)
                stored = _stored_key(key)
                count = conn.execute(*self._increment(stored, start)).scalar_one()
                counted.append((stored, start))
                if count > limit:
                    wait = max(1, math.ceil(start + window - moment))
                    retry_after = wait if retry_after is None else max(retry_after, wait)
            if retry_after is not None:
                # Take the increments back in the same transaction (the
                # request's unit of work may hold other writes to keep).
                for stored, start in counted:
                    conn.execute(
                        update(rate_counters)
                        .where(rate_counters.c.key == stored, rate_counters.c.window_start == start)
                        .values(count=rate_counters.c.count - 1)
                    )
        if commit:
            # Inside a request's unit of work: make the count durable now, so
            # the write lock SQLite took for it is not held through the
            # authentication that follows (a password or PIN check).
            db.commit_point(self.engine)
        if self.cleanup_every > 0 and random.randrange(self.cleanup_every) == 0:
            self.delete_old(moment)
        return retry_after

    def over(self, keys: Sequence[RateKey]) -> int | None:
        """Seconds until every key that has reached its limit in the current
        window has room again; None when none has. Counts nothing: for
        limits on failures, checked before the work a failure would cost
        and hit() only when it fails (CMP MAC failures, server.py)."""
        _check_keys(keys)
        if not keys:
            return None
        moment = self.clock()
        retry_after: int | None = None
        with db.connect(self.engine) as conn:
            for key, limit, window in keys:
                start = _window_start(moment, window)
                count = conn.execute(
                    select(rate_counters.c.count).where(
                        rate_counters.c.key == _stored_key(key), rate_counters.c.window_start == start
                    )
                ).scalar_one_or_none()
                if count is not None and count >= limit:
                    wait = max(1, math.ceil(start + window - moment))
                    retry_after = wait if retry_after is None else max(retry_after, wait)
        return retry_after

    def delete_old(self, moment: float | None = None) -> int:
        """Delete windows older than two of the longest allowed windows."""
        moment = self.clock() if moment is None else moment
        horizon = int(moment) - 2 * MAX_WINDOW_SECONDS
        with db.begin(self.engine) as conn:
            result = conn.execute(delete(rate_counters).where(rate_counters.c.window_start < horizon))
        return int(result.rowcount)

    def _increment(self, key: str, start: int) -> tuple[Executable, dict[str, Any]]:
        # INSERT ... ON CONFLICT DO UPDATE is atomic on both databases: the
        # count returned is this request's place in the window.
        return _INCREMENT[self._dialect == "postgresql"], {"key": key, "window_start": start, "count": 1}


def _increment_statement(dialect_insert: Any) -> Executable:
    statement: Executable = dialect_insert(rate_counters).on_conflict_do_update(
        index_elements=[rate_counters.c.key, rate_counters.c.window_start],
        set_={"count": rate_counters.c.count + 1},
    ).returning(rate_counters.c.count)
    return statement


# Built once (every request runs one or two): {is PostgreSQL: statement}.
_INCREMENT = {False: _increment_statement(sqlite.insert), True: _increment_statement(postgresql.insert)}


def _stored_key(key: str) -> str:
    """Keys longer than the column keep a prefix and a hash of the whole,
    so a long device name still counts against its own limit."""
    if len(key) <= _KEY_LENGTH:
        return key
    return key[: _KEY_LENGTH - 65] + "#" + hashlib.sha256(key.encode()).hexdigest()


def _window_start(moment: float, window: int) -> int:
    return int(moment // window) * window


def _check_keys(keys: Sequence[RateKey]) -> None:
    names = [key for key, _, _ in keys]
    if len(set(names)) != len(names):
        # (key, window_start) is the counter: the same key with two windows
        # could share a row whenever the window starts coincide.
        raise ValueError(f"a rate key may appear once per hit: {sorted(names)}")
    for key, limit, window in keys:
        if not key:
            raise ValueError("empty rate key")
        if limit < 0:
            raise ValueError(f"limit of {key!r} must not be negative")
        if not 1 <= window <= MAX_WINDOW_SECONDS:
            raise ValueError(f"window of {key!r} must be 1..{MAX_WINDOW_SECONDS} seconds")
