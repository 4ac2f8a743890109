"""Fixed-window rate limits in the store."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, func, select

import ra.db
from storage.db import make_engine
from ra.ratelimit import MAX_WINDOW_SECONDS, RateLimiter, RateRules, Rule
from ra.schema import rate_counters


class Clock:
    def __init__(self, at: float = 1_000_000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def _engine(url: str) -> Engine:
    engine = make_engine(url)
    ra.db.migrate(engine)
    return engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = _engine(f"sqlite:///{tmp_path / 'rate.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(engine: Engine, clock: Clock) -> RateLimiter:
    return RateLimiter(engine, clock=clock, cleanup_every=0)


def _rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(rate_counters)).scalar_one())


def test_requests_within_the_limit_pass_and_the_next_gets_the_seconds_to_the_window_end(
    limiter: RateLimiter, clock: Clock
) -> None:
    clock.at = 1_000_020.0  # 20 s into a 60 s window starting at 1_000_000 - 1_000_000 % 60
    start = int(clock.at // 60) * 60
    assert [limiter.hit([("device:A", 3, 60)]) for _ in range(3)] == [None, None, None]
    assert limiter.hit([("device:A", 3, 60)]) == start + 60 - 1_000_020
    assert limiter.hit([("device:B", 3, 60)]) is None  # keys are independent


def test_retry_after_rounds_up_and_is_at_least_one_second(limiter: RateLimiter, clock: Clock) -> None:
    clock.at = 59.2
    assert limiter.hit([("k", 0, 60)]) == 1
    clock.at = 30.5
    assert limiter.hit([("k", 0, 60)]) == 30


def test_a_new_window_starts_from_zero(limiter: RateLimiter, clock: Clock) -> None:
    clock.at = 120.0
    assert limiter.hit([("global", 2, 1)]) is None
    assert limiter.hit([("global", 2, 1)]) is None
    clock.at = 120.999
    assert limiter.hit([("global", 2, 1)]) == 1
    clock.at = 121.0
    assert limiter.hit([("global", 2, 1)]) is None


def test_a_refused_request_uses_up_none_of_its_keys(limiter: RateLimiter) -> None:
    keys = [("device:A", 1, 60), ("global", 5, 60)]
    assert limiter.hit(keys) is None
    assert all(limiter.hit(keys) is not None for _ in range(10))  # device:A is over
    # Only the first request counted against "global": four more fit, not five.
    assert [limiter.hit([("global", 5, 60)]) is None for _ in range(5)] == [True] * 4 + [False]


def test_retry_after_waits_for_every_key_that_is_over(limiter: RateLimiter, clock: Clock) -> None:
    clock.at = 3600.0 * 10 + 10  # 10 s into both windows
    assert limiter.hit([("a", 1, 60), ("b", 1, 600)]) is None
    assert limiter.hit([("a", 1, 60), ("b", 1, 600)]) == 590
    assert limiter.hit([("a", 1, 60)]) == 50


def test_rules_give_the_global_and_per_device_keys(engine: Engine, clock: Clock) -> None:
    rules = RateRules(per_device=Rule(2, 60), global_=Rule(3, 1))
    assert rules.keys("X") == [("global", 3, 1), ("device:X", 2, 60)]
    assert rules.keys(None) == [("global", 3, 1)]
    limiter = RateLimiter(engine, rules, clock=clock, cleanup_every=0)
    assert [limiter.check("X"), limiter.check("X"), limiter.check("Y")] == [None, None, None]
    assert limiter.check("Y") == 1  # the global limit of 3 per second
    clock.at += 1
    assert limiter.check("X") == 60 - clock.at % 60  # X's two per minute are spent


def test_old_windows_are_deleted_now_and_then(engine: Engine, clock: Clock) -> None:
    limiter = RateLimiter(engine, clock=clock, cleanup_every=1)
    for i in range(5):
        limiter.hit([(f"device:{i}", 10, 60)])
    assert _rows(engine) == 5
    clock.at += 2 * MAX_WINDOW_SECONDS + 60
    limiter.hit([("device:new", 10, 60)])
    assert _rows(engine) == 1


def test_a_long_key_counts_against_its_own_limit(limiter: RateLimiter) -> None:
    long_a, long_b = "device:" + "a" * 300, "device:" + "a" * 299 + "b"
    assert limiter.hit([(long_a, 1, 60)]) is None
    assert limiter.hit([(long_b, 1, 60)]) is None
    assert limiter.hit([(long_a, 1, 60)]) is not None


@pytest.mark.parametrize(
    "keys",
    [[("a", 1, 60), ("a", 2, 1)], [("", 1, 60)], [("a", -1, 60)], [("a", 1, 0)], [("a", 1, MAX_WINDOW_SECONDS + 1)]],
)
def test_malformed_keys_are_refused(limiter: RateLimiter, keys: list[tuple[str, int, int]]) -> None:
    with pytest.raises(ValueError):
        limiter.hit(keys)


def test_no_keys_means_no_limit(limiter: RateLimiter) -> None:
    assert limiter.hit([]) is None


# -- many workers -----------------------------------------------------------------

WORKERS = 4
_barrier: Any = None


def _init_worker(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


@pytest.fixture(scope="module")
def workers() -> Iterator[ProcessPoolExecutor]:
    # Spawned once for the module (see test_audit.py); the inherited barrier
    # starts the tasks together, one per process.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    with ProcessPoolExecutor(WORKERS, mp_context=context, initializer=_init_worker, initargs=(barrier,)) as pool:
        yield pool


def _hit_many(url: str, count: int) -> tuple[int, int]:
    engine = make_engine(url)
    # A fixed clock: all hits land in one window however slow the machine.
    limiter = RateLimiter(engine, clock=lambda: 7200.0, cleanup_every=0)
    _barrier.wait(timeout=60)
    passed = sum(1 for _ in range(count) if limiter.hit([("global", 50, 3600), ("device:shared", 1000, 60)]) is None)
    engine.dispose()
    return os.getpid(), passed


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_four_processes_against_a_limit_of_fifty_admit_exactly_fifty(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, workers: ProcessPoolExecutor
) -> None:
    url = f"sqlite:///{tmp_path / 'rate.db'}" if backend == "sqlite" else str(request.getfixturevalue("postgres_db_url"))
    engine = _engine(url)
    results = [task.result(timeout=120) for task in [workers.submit(_hit_many, url, 30) for _ in range(WORKERS)]]
    assert len({pid for pid, _ in results}) == WORKERS
    assert sum(passed for _, passed in results) == 50, results
    with engine.connect() as conn:
        stored = {key: count for key, count in conn.execute(select(rate_counters.c.key, rate_counters.c.count))}
    assert stored == {"global": 50, "device:shared": 50}  # refused hits rolled back
    engine.dispose()
