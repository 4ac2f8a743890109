"""Fixtures for the hsm tests: real SoftHSM2 homes in temporary directories.

softhsm_config  (function)  TokenConfig of a fresh SoftHSM2 home with token "test-ca"
token           (function)  Token on that home, closed afterwards
keyed_token     (session)   Token on a home holding one key of every KeyType,
                            labelled with the KeyType's value (RSA-4096 is made once here)
make_home       (function)  factory: make_home(name) -> TokenConfig of another fresh home
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest

from hsm import KeyType, Token, TokenConfig, ensure_softhsm_token
from hsmhelpers import LABEL, SO_PIN, USER_PIN


@pytest.fixture
def make_home(tmp_path: pathlib.Path) -> Callable[[str], TokenConfig]:
    def make(name: str) -> TokenConfig:
        return ensure_softhsm_token(tmp_path / name, LABEL, so_pin=SO_PIN, user_pin=USER_PIN)

    return make


@pytest.fixture
def softhsm_config(make_home: Callable[[str], TokenConfig]) -> TokenConfig:
    return make_home("softhsm")


@pytest.fixture
def token(softhsm_config: TokenConfig) -> Iterator[Token]:
    tok = Token(softhsm_config)
    yield tok
    tok.close()


@pytest.fixture(scope="session")
def keyed_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    home = tmp_path_factory.mktemp("hsm-keys")
    tok = Token(ensure_softhsm_token(home, LABEL, so_pin=SO_PIN, user_pin=USER_PIN))
    for key_type in KeyType:
        tok.generate_key(key_type.value, key_type)
    yield tok
    tok.close()
