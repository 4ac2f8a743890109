"""Fixtures for ca/: one real SoftHSM2 token per test session, a fresh store
and CA hierarchy per test (SQLite by default, PostgreSQL where asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from ca.issuer import CertificateAuthorities
from ca.revocation import Revocations
from ca.store import Store
from cahelpers import build_hierarchy
from hsm import Token, ensure_softhsm_token

@pytest.fixture(scope="session")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    home = tmp_path_factory.mktemp("softhsm")
    config = ensure_softhsm_token(home, "ca-tests", so_pin="so-pin-4321", user_pin="user-pin-1234")
    token = Token(config)
    yield token
    token.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'ztpki.db'}")
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The store on both backends: SQLite and a real PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_db_url")
    store = Store.open(url)
    yield store
    store.close()


@pytest.fixture
def cas(store: Store, token: Token) -> CertificateAuthorities:
    return build_hierarchy(store, token)


@pytest.fixture
def revocations(cas: CertificateAuthorities) -> Revocations:
    return Revocations(cas)
