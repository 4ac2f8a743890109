"""The audit log: chained appends, tamper detection, concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update

import ra.audit
import ra.db
from storage.db import make_engine, now
from ra.audit import GENESIS_HASH, AuditLog, record_hash
from ra.schema import audit_head, audit_log


def _engine(url: str) -> Engine:
    engine = make_engine(url)
    ra.db.migrate(engine)
    return engine


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def log(url: str) -> Iterator[AuditLog]:
    engine = _engine(url)
    yield AuditLog(engine)
    engine.dispose()


def _fill(log: AuditLog, count: int) -> None:
    for i in range(1, count + 1):
        log.append(
            actor=f"dev-{i % 3}", protocol="cmp", operation="initial", device=f"dev-{i % 3}",
            evidence=["vendor-certificate:abc"], outcome="issued", serial=format(1000 + i, "x"),
            details={"n": i, "nested": {"b": [1, 2], "a": None}},
        )


def _row(log: AuditLog, seq: int) -> dict[str, object]:
    with log.engine.connect() as conn:
        return dict(conn.execute(select(audit_log).where(audit_log.c.seq == seq)).one()._mapping)


def _execute(log: AuditLog, *statements: object) -> None:
    with log.engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[call-overload]


def _forged(seq: int, prev_hash: str, **overrides: object) -> dict[str, object]:
    """A record whose own hash is right for its contents."""
    fields: dict[str, object] = dict(
        seq=seq, at=now(), actor="mallory", protocol="cmp", operation="initial", device="dev-x",
        evidence=["vendor-certificate:forged"], outcome="issued", reason=None, serial="dead",
        details={}, prev_hash=prev_hash,
    )
    fields.update(overrides)
    digest = record_hash(**fields)  # type: ignore[arg-type]
    return {**fields, "evidence": '["vendor-certificate:forged"]', "details": "{}", "hash": digest}


# -- appending and reading ---------------------------------------------------------


def test_empty_log_verifies_from_the_genesis_head(log: AuditLog) -> None:
    result = log.verify()
    assert (result.ok, result.checked, result.head_seq, result.head_hash) == (True, 0, 0, GENESIS_HASH)


def test_appends_are_numbered_from_one_and_chained_to_the_previous_hash(log: AuditLog) -> None:
    first = log.append(actor="a", protocol="cli", operation="x", evidence=[], outcome="admin")
    second = log.append(actor="b", protocol="cli", operation="y", evidence=["e"], outcome="admin", details={"k": (1, 2)})
    assert (first.seq, first.prev_hash) == (1, GENESIS_HASH)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert log.head() == (2, second.hash)
    assert list(log.records()) == [first, second]  # what append returned is what is stored
    assert second.details == {"k": [1, 2]}


def test_records_page_by_seq_and_filter_by_device(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ra.audit, "_BATCH", 4)  # several pages
    _fill(log, 20)
    assert [r.seq for r in log.records()] == list(range(1, 21))
    assert [r.seq for r in log.records(after_seq=15)] == [16, 17, 18, 19, 20]
    assert [r.seq for r in log.records(after_seq=2, limit=6)] == [3, 4, 5, 6, 7, 8]
    assert [r.seq for r in log.records(device="dev-1", limit=5)] == [1, 4, 7, 10, 13]
    assert log.verify().checked == 20


def test_over_long_values_are_cut_to_their_column_not_refused(log: AuditLog) -> None:
    record = log.append(actor="x" * 500, protocol="cmp", operation="initial", device="d" * 300,
                        evidence=["e"], outcome="rejected", reason="r" * 100)
    assert len(record.actor) == 128 and record.actor.endswith("…")
    assert len(record.device or "") == 128
    assert list(log.records()) == [record]
    assert log.verify().ok


def test_details_that_are_not_json_are_refused_before_anything_is_written(log: AuditLog) -> None:
    with pytest.raises(ValueError):
        log.append(actor="a", protocol="cli", operation="x", evidence=[], outcome="admin", details={"f": float("nan")})
    assert log.head() == (0, GENESIS_HASH)


def test_the_hash_encoding_is_unambiguous_between_adjacent_fields() -> None:
    base = dict(seq=1, at=now(), protocol="cmp", operation="initial", device=None, evidence=[],
                outcome="issued", reason=None, serial=None, details={}, prev_hash=GENESIS_HASH)
    assert record_hash(actor="ab", **base) != record_hash(actor="a", **{**base, "device": "b"})  # type: ignore[arg-type]
    assert record_hash(actor="", **base) != record_hash(actor="", **{**base, "device": ""})  # type: ignore[arg-type]


def test_records_appended_while_verify_walks_are_checked_too(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(log, 3)
    read_head = log.head

    def head_then_more_appends() -> tuple[int, str]:
        head = read_head()
        monkeypatch.setattr(log, "head", read_head)
        _fill(log, 2)  # another worker appends right after verify() read the head
        return head

    monkeypatch.setattr(log, "head", head_then_more_appends)
    result = log.verify()
    assert (result.ok, result.checked, result.head_seq) == (True, 5, 5)


# -- tampering: verify() names the first bad record ------------------------------------


@pytest.fixture
def filled(log: AuditLog) -> AuditLog:
    _fill(log, 10)
    assert log.verify().ok
    return log


def _first_bad(log: AuditLog) -> int | None:
    result = log.verify()
    assert not result.ok and result.problem
    return result.first_bad_seq


def test_a_modified_field_is_found(filled: AuditLog) -> None:
    _execute(filled, text("UPDATE audit_log SET outcome = 'rejected' WHERE seq = 5"))
    assert _first_bad(filled) == 5
    assert "altered" in (filled.verify().problem or "")


def test_modified_details_are_found(filled: AuditLog) -> None:
    _execute(filled, update(audit_log).where(audit_log.c.seq == 4).values(details='{"n":44}'))
    assert _first_bad(filled) == 4


def test_details_edited_into_bad_json_are_found(filled: AuditLog) -> None:
    _execute(filled, update(audit_log).where(audit_log.c.seq == 9).values(details="{not json"))
    assert _first_bad(filled) == 9
    assert "unreadable" in (filled.verify().problem or "")


def test_a_recomputed_hash_breaks_the_link_to_the_next_record(filled: AuditLog) -> None:
    row = _row(filled, 6)
    row["actor"] = "someone-else"
    fields = {k: v for k, v in row.items() if k != "hash"}
    fields["evidence"] = ["vendor-certificate:abc"]
    fields["details"] = {"n": 6, "nested": {"b": [1, 2], "a": None}}
    new_hash = record_hash(**fields)  # type: ignore[arg-type]
    _execute(filled, update(audit_log).where(audit_log.c.seq == 6).values(actor="someone-else", hash=new_hash))
    assert _first_bad(filled) == 7


def test_a_deleted_record_is_found(filled: AuditLog) -> None:
    _execute(filled, delete(audit_log).where(audit_log.c.seq == 5))
    assert _first_bad(filled) == 5
    assert "missing" in (filled.verify().problem or "")


def test_a_forged_record_inserted_in_the_middle_with_a_wrong_chain_is_found(filled: AuditLog) -> None:
    # Make room at seq 6 by moving 6..10 up one (top first: seq is the key).
    for seq in range(10, 5, -1):
        _execute(filled, update(audit_log).where(audit_log.c.seq == seq).values(seq=seq + 1))
    _execute(filled, insert(audit_log).values(**_forged(6, "ab" * 32)),
             update(audit_head).values(seq=11, hash=_row(filled, 11)["hash"]))
    assert _first_bad(filled) == 6


def test_a_forged_record_chained_to_its_predecessor_breaks_the_next_link(filled: AuditLog) -> None:
    for seq in range(10, 5, -1):
        _execute(filled, update(audit_log).where(audit_log.c.seq == seq).values(seq=seq + 1))
    _execute(filled, insert(audit_log).values(**_forged(6, str(_row(filled, 5)["hash"]))),
             update(audit_head).values(seq=11, hash=_row(filled, 11)["hash"]))
    assert _first_bad(filled) == 7


def test_a_forged_record_appended_beyond_the_head_is_found(filled: AuditLog) -> None:
    _execute(filled, insert(audit_log).values(**_forged(11, str(_row(filled, 10)["hash"]))))
    assert _first_bad(filled) == 11
    assert "beyond the head" in (filled.verify().problem or "")


def test_a_forged_record_before_the_first_is_found(filled: AuditLog) -> None:
    _execute(filled, insert(audit_log).values(**_forged(0, GENESIS_HASH)))
    assert _first_bad(filled) == 0


def test_a_truncated_tail_is_found(filled: AuditLog) -> None:
    _execute(filled, delete(audit_log).where(audit_log.c.seq >= 8))
    assert _first_bad(filled) == 8
    assert "the head is at 10" in (filled.verify().problem or "")


def test_a_rewound_head_is_found(filled: AuditLog) -> None:
    # Cutting the tail and moving the head back: the old head's records
    # are gone, but a head that no longer matches its record is caught.
    _execute(filled, delete(audit_log).where(audit_log.c.seq >= 8), update(audit_head).values(seq=7))
    assert _first_bad(filled) == 7


def test_two_swapped_records_are_found(filled: AuditLog) -> None:
    three, seven = _row(filled, 3), _row(filled, 7)
    columns = [c for c in three if c != "seq"]
    _execute(
        filled,
        update(audit_log).where(audit_log.c.seq == 3).values({c: seven[c] for c in columns}),
        update(audit_log).where(audit_log.c.seq == 7).values({c: three[c] for c in columns}),
    )
    assert _first_bad(filled) == 3


# -- many writers -------------------------------------------------------------------------

# One pool of spawned workers for the module: starting Python and importing
# SQLAlchemy costs more than the appends, so both backends share the workers.
# The barrier (inherited at spawn) releases the four tasks together, which
# also puts each task in its own process.
WRITERS = 4
_barrier: Any = None


def _init_worker(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


@pytest.fixture(scope="module")
def workers() -> Iterator[ProcessPoolExecutor]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    with ProcessPoolExecutor(WRITERS, mp_context=context, initializer=_init_worker, initargs=(barrier,)) as pool:
        yield pool


def _append_many(url: str, worker: int, count: int) -> int:
    engine = make_engine(url)
    log = AuditLog(engine)
    _barrier.wait(timeout=60)
    for i in range(count):
        log.append(actor=f"w{worker}", protocol="est", operation="initial", device=f"w{worker}",
                   evidence=["tls-client-certificate"], outcome="issued", details={"i": i})
    engine.dispose()
    return os.getpid()


def test_concurrent_writers_in_four_processes_keep_one_dense_chain(url: str, workers: ProcessPoolExecutor) -> None:
    engine = _engine(url)
    tasks = [workers.submit(_append_many, url, w, 50) for w in range(WRITERS)]
    assert len({task.result(timeout=120) for task in tasks}) == WRITERS  # four processes
    log = AuditLog(engine)
    records = list(log.records())
    assert [r.seq for r in records] == list(range(1, 201))
    for w in range(WRITERS):
        assert sorted(r.details["i"] for r in records if r.actor == f"w{w}") == list(range(50))
    result = log.verify()
    assert (result.ok, result.checked, result.head_seq) == (True, 200, 200)
    engine.dispose()
