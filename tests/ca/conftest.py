"""Fixtures for ca/: one real SoftHSM2 token per test session, a fresh store
and CA hierarchy per test (SQLite by default, PostgreSQL where asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca import hierarchy
from ca.issuer import CertificateAuthorities, UrlScheme
from ca.profiles import default_profiles
from ca.revocation import Revocations
from ca.store import Store
from ca.template import IssuanceOrder
from hsm import KeyType, Token, ensure_softhsm_token

BASE_URL = "http://127.0.0.1:8080"


@pytest.fixture(scope="session")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    home = tmp_path_factory.mktemp("softhsm")
    config = ensure_softhsm_token(home, "ca-tests", so_pin="so-pin-4321", user_pin="user-pin-1234")
    token = Token(config)
    yield token
    token.close()


def build_hierarchy(store: Store, token: Token, key_type: KeyType = KeyType.EC_P256) -> CertificateAuthorities:
    cas = CertificateAuthorities(store, token, default_profiles(), UrlScheme(BASE_URL), default_ca="issuing")
    hierarchy.create_root(cas, "root", hierarchy.simple_name("Test Root CA", "ztpki tests"), key_type)
    hierarchy.create_issuing(cas, "issuing", hierarchy.simple_name("Test Issuing CA", "ztpki tests"), key_type, parent="root")
    ocsp_type = KeyType.EC_P256 if key_type.value.startswith("ec") else KeyType.RSA_2048
    hierarchy.create_ocsp_signer(cas, "issuing", ocsp_type)
    return cas


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'ztpki.db'}")
    yield store
    store.close()


@pytest.fixture
def cas(store: Store, token: Token) -> CertificateAuthorities:
    return build_hierarchy(store, token)


@pytest.fixture
def revocations(cas: CertificateAuthorities) -> Revocations:
    return Revocations(cas)
