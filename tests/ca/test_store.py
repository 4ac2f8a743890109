"""The store on both backends: SQLite and a real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import inspect

from storage.db import Conflict, NotFound, now, parse_serial

from ca.store import Store


def _authority(store: Store) -> int:
    return store.add_authority(
        name="issuing", kind="issuing", parent_id=None, key_label="k", sign_algorithm="ecdsa-sha256",
        certificate=b"\x30\x00",
    ).id


def _reserve(store: Store, authority_id: int, serial: int, **kwargs: object) -> None:
    values = dict(
        authority_id=authority_id, serial=serial, tbs=b"tbs", subject="CN=x", sans=["dns:x.example"],
        device_id="dev-1", profile="client", not_before=now(), not_after=now() + timedelta(days=1),
    )
    values.update(kwargs)
    store.reserve_serial(**values)  # type: ignore[arg-type]


def test_migrations_create_the_tables_and_are_idempotent(any_store: Store) -> None:
    names = set(inspect(any_store.engine).get_table_names())
    assert {"authorities", "certificates", "crls", "alembic_version"} <= names
    any_store.migrate()


def test_reserve_complete_and_read_back(any_store: Store) -> None:
    authority_id = _authority(any_store)
    _reserve(any_store, authority_id, 0xABCDEF)
    assert any_store.certificate(0xABCDEF).status == "signing"
    any_store.complete_issuance(authority_id, 0xABCDEF, b"cert")
    record = any_store.certificate(0xABCDEF, "issuing")
    assert (record.status, record.der, record.sans, record.device_id) == ("valid", b"cert", ("dns:x.example",), "dev-1")
    assert record.not_after.tzinfo is not None
    with pytest.raises(Conflict):
        any_store.complete_issuance(authority_id, 0xABCDEF, b"again")


def test_a_serial_cannot_be_reserved_twice(any_store: Store) -> None:
    authority_id = _authority(any_store)
    _reserve(any_store, authority_id, 7)
    with pytest.raises(Conflict):
        _reserve(any_store, authority_id, 7)


def test_lookups_and_filters(any_store: Store) -> None:
    authority_id = _authority(any_store)
    for serial in (1, 2, 3):
        _reserve(any_store, authority_id, serial, device_id=f"dev-{serial}", subject=f"CN=host{serial}%")
        any_store.complete_issuance(authority_id, serial, b"c")
    assert [r.serial for r in any_store.certificates(device_id="dev-2")] == [2]
    assert [r.serial for r in any_store.certificates(subject_contains="host3%")] == [3]
    assert len(list(any_store.certificates(expiring_before=now() + timedelta(days=2)))) == 3
    with pytest.raises(NotFound):
        any_store.certificate(99)


def test_revocation_state_changes_only_from_allowed_states(any_store: Store) -> None:
    authority_id = _authority(any_store)
    _reserve(any_store, authority_id, 5)
    any_store.complete_issuance(authority_id, 5, b"c")
    any_store.set_revocation(authority_id, 5, status="revoked", revoked_at=now(), reason="keyCompromise", allowed_from=["valid"])
    with pytest.raises(Conflict):
        any_store.set_revocation(authority_id, 5, status="revoked", revoked_at=now(), reason="superseded", allowed_from=["valid"])
    entries = any_store.revoked_entries(authority_id)
    assert [(s, r) for s, _, r in entries] == [(5, "keyCompromise")]
    assert any_store.status_row(authority_id, 5)[0] == "revoked"  # type: ignore[index]
    assert any_store.status_row(authority_id, 6) is None


def test_crl_numbers_are_unique_under_concurrent_callers(any_store: Store) -> None:
    authority_id = _authority(any_store)
    taken: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(10):
            number = any_store.next_crl_number(authority_id)
            with lock:
                taken.append(number)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == list(range(1, 41))


@pytest.mark.parametrize("text, value", [("ABCD", 0xABCD), ("0xabcd", 0xABCD), ("ab:cd", 0xABCD), (" 00ab ", 0xAB)])
def test_parse_serial_accepts_the_usual_spellings(text: str, value: int) -> None:
    assert parse_serial(text) == value


@pytest.mark.parametrize("text", ["", "xyz", "12-34", "f" * 43])
def test_parse_serial_refuses_non_hex(text: str) -> None:
    with pytest.raises(ValueError):
        parse_serial(text)
