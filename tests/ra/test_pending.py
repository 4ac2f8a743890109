"""Pending requests and transaction idempotency in the store."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, func, select

import ra.db
from storage.db import Conflict, NotFound, make_engine
from ra.pending import PendingRecord, PendingRequests
from ra.schema import enrolment_requests


def _engine(url: str) -> Engine:
    engine = make_engine(url)
    ra.db.migrate(engine)
    return engine


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'pending.db'}"
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture(params=["sqlite", "postgres"])
def pending(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PendingRequests]:
    engine = _engine(_url(request.param, request, tmp_path))
    yield PendingRequests(engine)
    engine.dispose()


def _begin(pending: PendingRequests, key: str = "cmp:tx-1", device: str = "SN-1", **kwargs: Any) -> PendingRecord:
    values: dict[str, Any] = dict(protocol="cmp", operation="initial", device_serial=device, ca="issuing",
                                  profile="enb", request_bytes=b'{"the":"request"}\n\x00\xff')
    values.update(kwargs)
    return pending.begin(key, **values)


def _rows(pending: PendingRequests) -> int:
    with pending.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(enrolment_requests)).scalar_one())


# -- begin and idempotency -------------------------------------------------------------


def test_begin_stores_a_pending_request_with_its_bytes_as_given(pending: PendingRequests) -> None:
    record = _begin(pending, key_fingerprint="ab12")
    assert (record.status, record.transaction_key, record.device_serial, record.profile) == ("pending", "cmp:tx-1", "SN-1", "enb")
    assert record.request == b'{"the":"request"}\n\x00\xff'
    assert record.key_fingerprint == "ab12"
    assert record.created_at.tzinfo is not None
    assert pending.get(record.id) == record
    assert pending.by_transaction("cmp:tx-1") == record


def test_a_retried_transaction_gets_the_same_row_and_no_second_one(pending: PendingRequests) -> None:
    first = _begin(pending)
    again = _begin(pending, request_bytes=b"different", device="SN-2")
    assert again == first
    assert _rows(pending) == 1
    assert _begin(pending, key="cmp:tx-2").id != first.id


def test_a_retry_after_approval_sees_the_approved_row(pending: PendingRequests) -> None:
    first = _begin(pending)
    pending.approve(first.id, "alice")
    assert _begin(pending).status == "approved"


def test_unknown_ids_and_keys(pending: PendingRequests) -> None:
    assert pending.get("nope") is None
    assert pending.by_transaction("cmp:nope") is None
    for action in (lambda: pending.approve("nope", "a"), lambda: pending.reject("nope", "a", "t"),
                   lambda: pending.mark_issued("nope", "1"), lambda: pending.mark_failed("nope", "r", "t")):
        with pytest.raises(NotFound):
            action()


def test_over_long_values_are_refused_on_both_databases(pending: PendingRequests) -> None:
    with pytest.raises(ValueError, match="transaction_key"):
        _begin(pending, key="k" * 256)
    with pytest.raises(ValueError, match="device_serial"):
        _begin(pending, device="d" * 129)
    assert _rows(pending) == 0


# -- deciding ------------------------------------------------------------------------------


def test_approve_moves_pending_to_approved_once(pending: PendingRequests) -> None:
    record = _begin(pending)
    approved = pending.approve(record.id, "alice")
    assert (approved.status, approved.decided_by) == ("approved", "alice")
    assert approved.updated_at >= record.updated_at
    with pytest.raises(Conflict, match="approved, not pending"):
        pending.approve(record.id, "bob")
    with pytest.raises(Conflict):
        pending.reject(record.id, "bob", "too late")  # may be being signed already
    assert pending.get(record.id) == approved


def test_reject_keeps_the_admin_and_the_text(pending: PendingRequests) -> None:
    record = _begin(pending)
    rejected = pending.reject(record.id, "bob", "not our device")
    assert (rejected.status, rejected.decided_by, rejected.reject_reason, rejected.reject_text) == (
        "rejected", "bob", "request_rejected", "not our device")
    with pytest.raises(Conflict, match="rejected"):
        pending.approve(record.id, "alice")
    assert pending.mark_issued(record.id, "abc") == rejected  # final: unchanged, no serial


def test_mark_issued_happens_once_and_later_calls_see_the_first_certificate(pending: PendingRequests) -> None:
    record = _begin(pending)
    pending.approve(record.id, "alice")
    issued = pending.mark_issued(record.id, "1f2e")
    assert (issued.status, issued.certificate_serial, issued.decided_by) == ("issued", "1f2e", "alice")
    assert pending.mark_issued(record.id, "9999") == issued
    assert pending.mark_failed(record.id, "system_unavailable", "late") == issued


def test_a_pending_request_can_be_issued_without_approval_and_can_fail(pending: PendingRequests) -> None:
    assert pending.mark_issued(_begin(pending).id, "aa").status == "issued"
    failed = pending.mark_failed(_begin(pending, key="cmp:tx-2").id, "device_blocked", "blocked meanwhile")
    assert (failed.status, failed.reject_reason, failed.reject_text) == ("failed", "device_blocked", "blocked meanwhile")
    assert pending.mark_issued(failed.id, "bb") == failed


def test_record_decision_keeps_the_first_answer_of_a_transaction(pending: PendingRequests) -> None:
    issued = pending.record_decision("est:abc", protocol="est", operation="initial", device_serial="SN-9",
                                     ca="issuing", profile="ucpe", certificate_serial="0a0b", key_fingerprint="ff")
    assert (issued.status, issued.certificate_serial, issued.key_fingerprint, issued.request) == ("issued", "0a0b", "ff", b"")
    again = pending.record_decision("est:abc", protocol="est", operation="initial", certificate_serial="0c0d")
    assert again == issued
    assert _begin(pending, key="est:abc") == issued  # a retry that would now be held still gets the certificate
    refused = pending.record_decision("scep:x", protocol="scep", operation="initial", status="rejected",
                                      reject_reason="bad_credential", reject_text="wrong PIN")
    assert (refused.status, refused.reject_reason) == ("rejected", "bad_credential")
    with pytest.raises(ValueError):
        pending.record_decision("scep:y", protocol="scep", operation="initial", status="pending")


def test_the_record_returned_on_insert_is_what_the_store_holds(pending: PendingRequests) -> None:
    # _insert_once builds its answer from what it wrote instead of reading it back.
    begun = _begin(pending, "cmp:tx-same")
    assert begun == pending.get(begun.id)
    decided = pending.record_decision(
        "cmp:tx-decided", protocol="cmp", operation="initial", device_serial="SN-9", ca="issuing",
        profile="enb", certificate_serial="abc123", request_bytes=b"\x00\x01", key_fingerprint="k" * 64,
    )
    assert decided == pending.get(decided.id)


def test_list_filters_by_status_and_device_oldest_first(pending: PendingRequests) -> None:
    a = _begin(pending, key="k1", device="A")
    b = _begin(pending, key="k2", device="B")
    c = _begin(pending, key="k3", device="A")
    pending.approve(b.id, "alice")
    assert [r.id for r in pending.list()] == [a.id, b.id, c.id]
    assert [r.id for r in pending.list(status="pending")] == [a.id, c.id]
    assert [r.id for r in pending.list(device="A", status="pending")] == [a.id, c.id]
    assert [r.id for r in pending.list(status="approved")] == [b.id]
    assert [r.id for r in pending.list(limit=1)] == [a.id]


# -- many workers ---------------------------------------------------------------------------

WORKERS = 8
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


def _begin_and_issue(url: str) -> tuple[int, str, str | None]:
    engine = make_engine(url)
    pending = PendingRequests(engine)
    _barrier.wait(timeout=60)
    record = pending.begin("cmp:same", protocol="cmp", operation="initial", device_serial="SN-1",
                           ca=None, profile=None, request_bytes=b"r")
    # Each worker then claims to have signed its own certificate: one wins.
    issued = pending.mark_issued(record.id, f"{os.getpid():x}")
    engine.dispose()
    return os.getpid(), record.id, issued.certificate_serial


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_eight_processes_beginning_one_transaction_share_one_row_and_one_certificate(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, workers: ProcessPoolExecutor
) -> None:
    url = _url(backend, request, tmp_path)
    engine = _engine(url)
    results = [task.result(timeout=120) for task in [workers.submit(_begin_and_issue, url) for _ in range(WORKERS)]]
    assert len({pid for pid, _, _ in results}) == WORKERS
    assert len({(request_id, serial) for _, request_id, serial in results}) == 1  # one id, one certificate
    assert _rows(PendingRequests(engine)) == 1
    engine.dispose()
