"""Enrolment credentials: CMP MAC secrets (sealed) and EST passwords (hashed);
use limits under concurrent workers on a real PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, select, update

from storage.db import make_engine, now
from vendor_trust import credentials as credentials_module
from vendor_trust.credentials import (
    BadCredential,
    CredentialExists,
    CredentialNotFound,
    Credentials,
    NoSealer,
)
from vendor_trust.db import migrate
from vendor_trust.hashing import ScryptCost, hash_secret, verify_secret
from vendor_trust.schema import credentials as credentials_table

FAST = ScryptCost(log_n=4, r=8, p=1)  # tests only: the default costs ~50 ms a check


class AesGcmSealer:
    """Real AES-256-GCM under a key that lives only in this process: what the
    token's sealer does, without the token."""

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], aad)


def open_engine(url: str) -> Engine:
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    migrate(engine)
    return engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'credentials.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def creds(engine: Engine) -> Credentials:
    return Credentials(engine, AesGcmSealer())


def _row(engine: Engine, reference: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(credentials_table).where(credentials_table.c.reference == reference)).one()


def _expire(engine: Engine, reference: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(credentials_table).where(credentials_table.c.reference == reference)
                     .values(expires_at=now() - timedelta(seconds=1)))


def _reason(call: Any) -> str:
    with pytest.raises(BadCredential) as caught:
        call()
    return caught.value.reason


# -- MAC secrets ---------------------------------------------------------------------


def test_a_mac_credential_gives_back_its_secret_and_the_database_holds_it_sealed(creds: Credentials, engine: Engine) -> None:
    reference, secret = creds.create_mac(device_serial="SN-1", profile="cells")
    assert reference.startswith("mac-") and len(reference) == 20 and int(reference[4:], 16) >= 0
    # 32 random octets in base64url: typeable as `openssl cmp -secret pass:...`.
    assert len(secret) == 43 and secret.isascii() and secret.isprintable() and " " not in secret
    mac = creds.mac_secret(reference)
    assert (mac.secret, mac.device_serial, mac.batch, mac.profile) == (secret.encode(), "SN-1", None, "cells")
    assert secret not in repr(mac)
    row = _row(engine, reference)
    assert secret.encode() not in bytes(row.sealed_secret) and row.password_hash is None


def test_a_sealed_secret_copied_to_another_row_does_not_unseal(creds: Credentials, engine: Engine) -> None:
    first, _ = creds.create_mac(batch="lot-7")
    second, _ = creds.create_mac(batch="lot-7")
    with engine.begin() as conn:
        conn.execute(update(credentials_table).where(credentials_table.c.reference == second)
                     .values(sealed_secret=_row(engine, first).sealed_secret))
    with pytest.raises(InvalidTag):
        creds.mac_secret(second)


def test_reading_the_secret_does_not_use_the_credential_consume_does(creds: Credentials) -> None:
    reference, _ = creds.create_mac(device_serial="SN-1", max_uses=2)
    for _ in range(3):
        creds.mac_secret(reference)
    assert creds.consume(reference) and creds.consume(reference)
    assert not creds.consume(reference)
    assert _reason(lambda: creds.mac_secret(reference)) == "used_up"
    info = creds.info(reference)
    assert info is not None and info.uses == 2 and info.last_used_at is not None


def test_expired_revoked_and_unknown_mac_credentials_are_refused(creds: Credentials, engine: Engine) -> None:
    expired, _ = creds.create_mac(device_serial="SN-1", ttl=timedelta(hours=1))
    creds.mac_secret(expired)
    _expire(engine, expired)
    assert _reason(lambda: creds.mac_secret(expired)) == "expired"
    assert not creds.consume(expired)
    revoked, _ = creds.create_mac(device_serial="SN-1")
    creds.revoke(revoked)
    assert _reason(lambda: creds.mac_secret(revoked)) == "revoked"
    assert not creds.consume(revoked)
    assert _reason(lambda: creds.mac_secret("mac-0000000000000000")) == "unknown"
    assert not creds.consume("mac-0000000000000000")
    with pytest.raises(CredentialNotFound):
        creds.revoke("mac-0000000000000000")


def test_a_password_is_not_a_mac_credential(creds: Credentials) -> None:
    username, _ = creds.create_password(device_serial="SN-1")
    assert _reason(lambda: creds.mac_secret(username)) == "unknown"


def test_mac_credentials_need_a_sealer(engine: Engine) -> None:
    with pytest.raises(NoSealer):
        Credentials(engine, None).create_mac(device_serial="SN-1")


@pytest.mark.parametrize("binding", [{}, {"device_serial": "SN-1", "batch": "lot"}])
def test_a_credential_is_bound_to_exactly_one_device_or_batch(creds: Credentials, binding: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="one device or to one batch"):
        creds.create_mac(**binding)


@pytest.mark.parametrize("limits", [{"ttl": timedelta(0)}, {"max_uses": 0}])
def test_nonsense_limits_are_refused(creds: Credentials, limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        creds.create_password(device_serial="SN-1", **limits)


# -- EST passwords -------------------------------------------------------------------


def test_a_password_is_checked_used_and_stored_only_as_a_salted_hash(engine: Engine) -> None:
    creds = Credentials(engine, None)  # as in production
    username, password = creds.create_password(device_serial="SN-1", batch=None, profile="est", max_uses=2)
    assert username.startswith("est-") and len(password) == 24
    row = _row(engine, username)
    # 144 random bits: a salted SHA-256, not scrypt (vendor_trust/hashing.py says why).
    assert row.password_hash.startswith("sha256$") and password not in row.password_hash
    assert row.sealed_secret is None
    info = creds.check_password(username, password)
    assert (info.device_serial, info.profile, info.uses, info.kind) == ("SN-1", "est", 1, "password")
    assert _reason(lambda: creds.check_password(username, password + "x")) == "wrong"
    assert creds.check_password(username, password).uses == 2
    assert _reason(lambda: creds.check_password(username, password)) == "used_up"


def test_an_unknown_username_costs_a_full_hash_check_against_a_dummy(
    creds: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    username, password = creds.create_password(username="cpe-17", batch="lot-1")
    checked: list[str] = []

    def spy(secret: bytes, encoded: str) -> bool:
        checked.append(encoded)
        return verify_secret(secret, encoded)

    monkeypatch.setattr(credentials_module, "verify_secret", spy)
    assert _reason(lambda: creds.check_password("nobody", password)) == "unknown"
    assert _reason(lambda: creds.check_password("cpe-17", "guess")) == "wrong"
    # Both took one check of the same scheme; the first against the dummy.
    assert len(checked) == 2 and checked[0] != checked[1]
    assert checked[0].split("$")[0] == checked[1].split("$")[0] == "sha256"
    assert creds.check_password(username, password).uses == 1


def test_a_password_stored_as_scrypt_by_an_older_version_still_checks(creds: Credentials, engine: Engine) -> None:
    from sqlalchemy import update

    from vendor_trust.hashing import ScryptCost, hash_secret
    from vendor_trust.schema import credentials

    username, password = creds.create_password(device_serial="SN-7")
    legacy = hash_secret(credentials_module._hash_input(username, password), ScryptCost(log_n=4))
    with engine.begin() as conn:
        conn.execute(update(credentials).where(credentials.c.reference == username).values(password_hash=legacy))
    assert _reason(lambda: creds.check_password(username, password + "x")) == "wrong"
    assert creds.check_password(username, password).uses == 1


def test_expired_and_revoked_passwords_are_refused_after_the_hash_check(creds: Credentials, engine: Engine) -> None:
    username, password = creds.create_password(device_serial="SN-1", ttl=timedelta(days=1))
    _expire(engine, username)
    assert _reason(lambda: creds.check_password(username, password)) == "expired"
    other, other_password = creds.create_password(device_serial="SN-1")
    creds.revoke(other)
    assert _reason(lambda: creds.check_password(other, other_password)) == "revoked"
    # A wrong password says only "wrong", whatever the state.
    assert _reason(lambda: creds.check_password(other, "guess")) == "wrong"


def test_usernames_are_unique_and_fit_http_basic(creds: Credentials) -> None:
    creds.create_password(username="cpe-1", device_serial="SN-1")
    with pytest.raises(CredentialExists):
        creds.create_password(username="cpe-1", device_serial="SN-2")
    with pytest.raises(ValueError, match="RFC 7617"):
        creds.create_password(username="a:b", device_serial="SN-1")
    with pytest.raises(ValueError):
        creds.create_password(username=" padded ", device_serial="SN-1")


def test_list_shows_credentials_without_secrets(creds: Credentials) -> None:
    mac, _ = creds.create_mac(device_serial="SN-1")
    user, _ = creds.create_password(batch="lot-1")
    creds.create_password(device_serial="SN-2")
    assert [c.reference for c in creds.list(device_serial="SN-1")] == [mac]
    assert [c.reference for c in creds.list(batch="lot-1")] == [user]
    assert len(creds.list()) == 3
    assert not any(hasattr(c, "secret") or hasattr(c, "password_hash") for c in creds.list())


# -- the hash format -------------------------------------------------------------------


def test_hashes_are_salted_and_carry_their_cost() -> None:
    first, second = hash_secret(b"same", FAST), hash_secret(b"same", FAST)
    assert first != second and first.startswith("scrypt$ln=4,r=8,p=1$")
    assert verify_secret(b"same", first) and verify_secret(b"same", second)
    assert not verify_secret(b"other", first)


@pytest.mark.parametrize("damaged", [
    "", "scrypt$ln=4,r=8,p=1$c2FsdA", "bcrypt$ln=4,r=8,p=1$c2FsdA$aGFzaA",
    "scrypt$ln=40,r=8,p=1$c2FsdA$aGFzaA",  # a cost that would exhaust memory is not attempted
    "scrypt$n=4$c2FsdA$aGFzaA", "scrypt$ln=x,r=8,p=1$c2FsdA$aGFzaA",
])
def test_a_damaged_hash_never_matches(damaged: str) -> None:
    assert verify_secret(b"anything", damaged) is False


def test_scrypt_costs_are_bounded() -> None:
    with pytest.raises(ValueError):
        ScryptCost(log_n=17)
    with pytest.raises(ValueError):
        ScryptCost(log_n=16, r=16)


# -- concurrency on PostgreSQL -------------------------------------------------------------


def _consume_in_worker(url: str, reference: str, start: Any, results: Any) -> None:
    engine = make_engine(url)
    try:
        creds = Credentials(engine, None)
        with engine.connect():
            pass  # connect before the start line, so that all race the UPDATE itself
        start.wait(timeout=120)
        results.put(creds.consume(reference))
    finally:
        engine.dispose()


def test_eight_workers_consume_a_three_use_credential_exactly_three_times(postgres_db_url: str) -> None:
    engine = open_engine(postgres_db_url)
    try:
        reference, _ = Credentials(engine, AesGcmSealer()).create_mac(batch="lot-1", max_uses=3)
    finally:
        engine.dispose()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(8)
    results = context.Queue()
    workers = [context.Process(target=_consume_in_worker, args=(postgres_db_url, reference, start, results))
               for _ in range(8)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert sorted(outcomes) == [False] * 5 + [True] * 3
    engine = open_engine(postgres_db_url)
    try:
        info = Credentials(engine, None).info(reference)
        assert info is not None and info.uses == 3
    finally:
        engine.dispose()


@pytest.mark.parametrize("encoded", ["sha256$", "sha256$$", "sha256$!!$??", "sha256$AAAA$AAAA$AAAA", "sha256$AAAAAAAAAAAAAAAAAAAAAA$"])
def test_a_damaged_fast_hash_never_matches(encoded: str) -> None:
    assert verify_secret(b"anything", encoded) is False


def test_the_fast_hash_is_salted_and_checks() -> None:
    from vendor_trust.hashing import hash_random_secret

    first, second = hash_random_secret(b"s3cret"), hash_random_secret(b"s3cret")
    assert first != second  # salted
    assert verify_secret(b"s3cret", first) and verify_secret(b"s3cret", second)
    assert not verify_secret(b"s3cret!", first)
