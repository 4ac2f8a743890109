"""Units of work (storage/db.py) on SQLite and PostgreSQL: one transaction for a
request's store calls, a commit point that stays durable, conflicts that do
not poison the unit."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from storage import db
from storage.db import now, serial_hex
from ca.schema import certificates
from ca.store import Store


def _authority(store: Store) -> int:
    return store.add_authority(
        name="issuing", kind="issuing", parent_id=None, key_label="k", sign_algorithm="ecdsa-sha256",
        certificate=b"\x30\x00",
    ).id


def _reserve(store: Store, authority_id: int, serial: int) -> None:
    store.reserve_serial(
        authority_id=authority_id, serial=serial, tbs=b"tbs", subject="CN=x", sans=[], device_id="dev-1",
        profile="client", not_before=now(), not_after=now() + timedelta(days=1),
    )


def _status(store: Store, serial: int) -> str | None:
    # A separate connection: sees only what was committed.
    with store.engine.connect() as conn:
        row = conn.execute(select(certificates.c.status).where(certificates.c.serial == serial_hex(serial))).first()
    return row.status if row is not None else None


class Boom(Exception):
    pass


def test_writes_in_a_unit_are_invisible_until_it_commits(any_store: Store) -> None:
    authority = _authority(any_store)
    _reserve(any_store, authority, 1)
    with db.unit_of_work(any_store.engine):
        any_store.complete_issuance(authority, 1, b"\x30\x03\x02\x01\x01")
        assert any_store.certificate(1).status == "valid"  # the unit reads its own writes
        assert _status(any_store, 1) == "signing"  # others do not, yet
    assert _status(any_store, 1) == "valid"


def test_an_exception_rolls_the_unit_back_but_not_its_commit_point(any_store: Store) -> None:
    authority = _authority(any_store)
    with pytest.raises(Boom):
        with db.unit_of_work(any_store.engine):
            _reserve(any_store, authority, 2)  # reserve_serial is a commit point (record before sign)
            any_store.complete_issuance(authority, 2, b"\x30\x03\x02\x01\x02")
            raise Boom
    assert _status(any_store, 2) == "signing"


def test_nested_units_join_the_outer_one(any_store: Store) -> None:
    authority = _authority(any_store)
    _reserve(any_store, authority, 3)
    with pytest.raises(Boom):
        with db.unit_of_work(any_store.engine):
            with db.unit_of_work(any_store.engine):
                any_store.complete_issuance(authority, 3, b"\x30\x03\x02\x01\x03")
            assert _status(any_store, 3) == "signing"  # the inner unit did not commit
            raise Boom
    assert _status(any_store, 3) == "signing"


def test_insert_if_absent_reports_a_taken_key_and_keeps_the_unit_usable(any_store: Store) -> None:
    from ra.db import migrate
    from ra.schema import cmp_nonces  # any table with a unique key will do

    migrate(any_store.engine)
    authority = _authority(any_store)
    _reserve(any_store, authority, 4)
    with db.unit_of_work(any_store.engine):
        with db.begin(any_store.engine) as conn:
            assert db.insert_if_absent(conn, cmp_nonces, {"nonce": "aa", "seen_at": now()})
            assert not db.insert_if_absent(conn, cmp_nonces, {"nonce": "aa", "seen_at": now()})
        # PostgreSQL would refuse every later statement had the INSERT failed
        any_store.complete_issuance(authority, 4, b"\x30\x03\x02\x01\x04")
    assert _status(any_store, 4) == "valid"


# -- the SQLite writer gate --------------------------------------------------------------


def _gate_is_free(database: Path) -> bool:
    import fcntl
    import os

    fd = os.open(str(database) + ".writers", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops a lock taken here
    return True


def test_a_unit_holds_the_writer_gate_from_its_first_write_to_each_commit(tmp_path: Path) -> None:
    database = tmp_path / "gate.db"
    store = Store.open(f"sqlite:///{database}")
    try:
        authority = _authority(store)
        _reserve(store, authority, 10)
        with db.unit_of_work(store.engine):
            store.certificate(10)  # reads do not queue
            assert _gate_is_free(database)
            _reserve(store, authority, 11)  # a write, then reserve_serial's commit point
            assert _gate_is_free(database)
            store.complete_issuance(authority, 11, b"\x30\x03\x02\x01\x0b")
            assert not _gate_is_free(database)  # another worker's writer would queue now
        assert _gate_is_free(database)
        with pytest.raises(Boom):
            with db.unit_of_work(store.engine):
                store.complete_issuance(authority, 10, b"\x30\x03\x02\x01\x0a")
                raise Boom
        assert _gate_is_free(database)  # released on rollback too
    finally:
        store.close()
