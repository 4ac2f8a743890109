"""Refusals nobody authenticated are counted, not chained (issue 10, 6c):
ra/noise.py through AuditLog.note_noise, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import Engine, func, select

import ra.db
from storage.db import make_engine
from ra.audit import AuditLog
from ra.noise import ANY_SOURCE, OTHER, NoiseLog, NoisePolicy
from ra.schema import audit_noise
from ztpki.instance import EST_REFUSAL_REASONS, NOISE_REASONS

HOUR = 3600


class Clock:
    def __init__(self, at: float = 1_700_000_000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'noise.db'}" if request.param == "sqlite" else str(request.getfixturevalue("postgres_db_url"))
    engine = make_engine(url)
    ra.db.migrate(engine)
    yield engine
    engine.dispose()


def _log(engine: Engine, clock: Clock, **policy: int) -> AuditLog:
    return AuditLog(engine, NoiseLog(engine, NoisePolicy(**policy), reasons=NOISE_REASONS, clock=clock))


def _refuse(log: AuditLog, source: str | None = "198.51.100.7", reason: str = "badMessageCheck",
            protocol: str = "cmp") -> None:
    log.note_noise(protocol=protocol, source=source, reason=reason, detail={"text": "no usable shared secret"})


def _rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_noise)).scalar_one())


def test_a_flood_from_one_source_is_one_counted_row_and_no_chained_record(engine: Engine) -> None:
    log = _log(engine, Clock())
    for _ in range(300):
        _refuse(log)
    assert log.count() == 0
    [row] = list(log.noise.rows())
    assert (row.source, row.protocol, row.reason, row.count) == ("198.51.100.7", "cmp", "badMessageCheck", 300)
    assert "no usable shared secret" in row.sample and row.first_seen <= row.last_seen


def test_rows_per_source_are_bounded_by_the_reasons_not_the_requests(engine: Engine) -> None:
    log = _log(engine, Clock())
    for n in range(200):
        _refuse(log, reason=["badMessageCheck", "badDataFormat", "bad_credential"][n % 3],
                protocol="est" if n % 3 == 2 else "cmp")
    assert _rows(engine) == 3
    assert sum(row.count for row in log.noise.rows()) == 200


def test_a_client_spraying_addresses_is_folded_into_one_source_past_the_cap(engine: Engine) -> None:
    log = _log(engine, Clock(), max_sources=5)
    for n in range(100):
        _refuse(log, source=f"2001:db8::{n:x}")
    rows = list(log.noise.rows())
    assert len(rows) == 6
    assert {row.source for row in rows} == {f"2001:db8::{n:x}" for n in range(5)} | {ANY_SOURCE}
    assert next(row.count for row in rows if row.source == ANY_SOURCE) == 95
    # A source already counted keeps its row for another reason.
    _refuse(log, source="2001:db8::1", reason="badDataFormat")
    assert ("2001:db8::1", "badDataFormat") in {(row.source, row.reason) for row in log.noise.rows()}


def test_reasons_and_protocols_outside_the_closed_sets_are_other_and_sources_are_cut(engine: Engine) -> None:
    log = _log(engine, Clock())
    for n in range(50):
        _refuse(log, source="x" * 500, reason=f"made-up-{n}", protocol=f"proto{n}")
    [row] = list(log.noise.rows())
    assert (row.reason, row.protocol, len(row.source), row.count) == (OTHER, OTHER, 64, 50)
    assert "made-up-0" in row.sample
    _refuse(log, source=None)
    _refuse(log, source=ANY_SOURCE)  # a peer cannot pass itself off as the folded row
    assert {row.source for row in log.noise.rows()} >= {"-"}
    assert ANY_SOURCE not in {row.source for row in log.noise.rows()}


def test_a_closed_interval_is_sealed_into_one_chained_summary(engine: Engine) -> None:
    clock = Clock()
    log = _log(engine, clock)
    for n in range(40):
        _refuse(log, source=f"192.0.2.{n % 4}", reason="badMessageCheck" if n % 2 else "badDataFormat")
    assert log.count() == 0
    clock.at += HOUR
    _refuse(log)  # the first noise of the next interval closes the one before
    assert log.count() == 1
    [summary] = list(log.records())
    assert (summary.operation, summary.outcome, summary.actor) == ("noise-summary", "noise", "anonymous")
    assert summary.details["total"] == 40 and summary.details["sources"] == 4
    assert summary.details["counts"] == {"cmp:badDataFormat": 20, "cmp:badMessageCheck": 20}
    for _ in range(20):
        _refuse(log)
    # Once per interval, by whichever worker (here a second NoiseLog) comes first.
    other = _log(engine, clock)
    _refuse(other)
    assert log.count() == 1 and log.verify().ok
    assert all(row.sealed for row in log.noise.rows() if row.interval_start < log.noise.interval_of(clock.at))


def test_intervals_past_the_retention_are_deleted(engine: Engine) -> None:
    clock = Clock()
    log = _log(engine, clock, retention_days=2)
    first = log.noise.interval_of(clock.at)
    _refuse(log)
    clock.at += 86400
    _refuse(log)
    assert _rows(engine) == 2
    clock.at += 2 * 86400
    _refuse(log)
    assert sorted(row.interval_start for row in log.noise.rows()) == [first + 86400, first + 3 * 86400]
    assert log.verify().ok and log.count() == 2  # each closed interval got its summary first


def test_every_est_refusal_reason_is_in_the_closed_set() -> None:
    source = "\n".join(p.read_text() for p in (Path(__file__).resolve().parents[2] / "protocols" / "est").glob("*.py"))
    found = set(re.findall(r'EstRefusal\(\s*\d+,\s*"([a-z_]+)"', source))
    found |= set(re.findall(r'_record\(request,\s*\d+,\s*"([a-z_]+)"', source))
    assert found and found <= EST_REFUSAL_REASONS, found - EST_REFUSAL_REASONS


def _count_many(url: str, worker: int, count: int) -> int:
    engine = make_engine(url)
    # One interval, whatever the hour: no summary joins the chain meanwhile.
    log = AuditLog(engine, NoiseLog(engine, NoisePolicy(max_sources=4), reasons=NOISE_REASONS, clock=Clock()))
    for n in range(count):
        # Everyone on one row, and each on rows of its own past the cap.
        _refuse(log, source="198.51.100.1" if n % 2 else f"2001:db8:{worker}::{n:x}")
    engine.dispose()
    return count


def test_workers_counting_at_once_lose_no_count_and_keep_the_cap(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(3, mp_context=context) as pool:
        done = sum(task.result(timeout=120) for task in [pool.submit(_count_many, url, w, 60) for w in range(3)])
    log = _log(engine, Clock())
    rows = list(log.noise.rows())
    assert sum(row.count for row in rows) == done == 180
    assert next(row.count for row in rows if row.source == "198.51.100.1") == 90
    # The cap is read before each new row: workers racing may pass it by one each.
    assert len({row.source for row in rows} - {ANY_SOURCE}) <= 4 + 2
    assert log.count() == 0
