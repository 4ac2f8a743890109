"""Several processes on one token: the login lock and the retry of a disturbed opening.

SoftHSM2 rewrites token.object on every C_Login, and a process that opens the
token at that moment may read it half-written (see hsm/_login.py).
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import pathlib
import tempfile
import threading
import time
from dataclasses import replace
from multiprocessing.synchronize import Barrier

import pkcs11.exceptions as p11e
import pytest

from hsm import HsmError, KeyType, SignAlgorithm, Token, TokenConfig, TokenUnavailable
from hsm import _login
from hsm._module import Module, get_module
from hsmhelpers import USER_PIN, verify

ECDSA = SignAlgorithm.ECDSA_SHA256
PROCESSES = 6
ROUNDS = 5
SIGNS = 50
SEALS = 20


def _stress_child(config: TokenConfig, barrier: Barrier, queue: multiprocessing.SimpleQueue[object]) -> None:
    try:
        barrier.wait(60)
        token = Token(config)  # every process logs in on its own, all at once
        signatures = [token.sign("k", b"%d/%d" % (os.getpid(), n), ECDSA) for n in range(SIGNS)]
        for n in range(SEALS):
            secret = os.urandom(n + 1)
            blob = token.seal("s", secret, b"aad %d" % n)
            assert token.unseal("s", blob, b"aad %d" % n) == secret
        token.close()
        queue.put(("ok", os.getpid(), signatures[-1]))
    except BaseException as exc:  # the parent reports it
        queue.put(("error", os.getpid(), repr(exc)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_started_together(softhsm_config: TokenConfig, method: str) -> None:
    setup = Token(softhsm_config)
    setup.generate_key("k", KeyType.EC_P256)
    setup.generate_secret_key("s")
    public = setup.public_key("k")
    setup.close()
    ctx = multiprocessing.get_context(method)
    for round_ in range(ROUNDS):
        barrier = ctx.Barrier(PROCESSES)
        queue: multiprocessing.SimpleQueue[object] = ctx.SimpleQueue()
        children = [ctx.Process(target=_stress_child, args=(softhsm_config, barrier, queue))
                    for _ in range(PROCESSES)]
        for child in children:
            child.start()
        reports = [queue.get() for _ in children]
        for child in children:
            child.join(60)
        assert [c.exitcode for c in children] == [0] * PROCESSES, f"round {round_}"
        for status, pid, payload in reports:  # type: ignore[misc]
            assert status == "ok", f"round {round_}: {payload}"
            assert isinstance(payload, bytes)
            verify(public, ECDSA, payload, b"%d/%d" % (pid, SIGNS - 1))


def _login_counter(module: Module) -> int:
    return module.login_calls


def test_wrong_pin_is_tried_once(softhsm_config: TokenConfig) -> None:
    wrong = "wrong-pin-314159"
    module = get_module(softhsm_config.module)
    before = _login_counter(module)
    bad = Token(replace(softhsm_config, pin=wrong))
    started = time.monotonic()
    with pytest.raises(TokenUnavailable, match="PIN_INCORRECT") as info:
        bad.list_keys()
    assert _login_counter(module) - before == 1
    assert time.monotonic() - started < 1.0  # no back-off either
    assert wrong not in str(info.value) and USER_PIN not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    # A second use is a new, single, attempt: still never more than one per opening.
    with pytest.raises(TokenUnavailable, match="PIN_INCORRECT"):
        bad.list_keys()
    assert _login_counter(module) - before == 2
    good = Token(softhsm_config)
    assert good.list_keys() == []
    good.close()


def _failing_login(monkeypatch: pytest.MonkeyPatch, module: Module, answers: list[int]) -> list[int]:
    """Make the next len(answers) C_Logins answer those codes without reaching the token."""
    calls: list[int] = []
    real = module.login

    def login(session_handle: int, pin: str) -> int:
        calls.append(1)
        if answers:
            module.login_calls += 1
            return answers.pop(0)
        return real(session_handle, pin)

    monkeypatch.setattr(module, "login", login)
    return calls


@pytest.mark.parametrize("rv", [0x05, 0x30, 0x102], ids=["GENERAL_ERROR", "DEVICE_ERROR", "PIN_NOT_INITIALIZED"])
def test_disturbed_login_is_retried_on_a_fresh_module(
    softhsm_config: TokenConfig, monkeypatch: pytest.MonkeyPatch, rv: int
) -> None:
    token = Token(softhsm_config)
    module = token._loaded_module()
    module.ensure(softhsm_config.softhsm_conf)
    generation = module.generation
    calls = _failing_login(monkeypatch, module, [rv, rv])
    token.generate_key("k", KeyType.EC_P256)
    assert len(calls) == 3
    # Every retry re-read the token directory: C_Finalize + C_Initialize.
    assert module.generation >= generation + 2 * 2
    token.close()


@pytest.mark.parametrize("rv", [0xA0, 0xA3, 0xA4, 0xA1], ids=["INCORRECT", "EXPIRED", "LOCKED", "INVALID"])
def test_refused_pin_is_never_retried(
    softhsm_config: TokenConfig, monkeypatch: pytest.MonkeyPatch, rv: int
) -> None:
    token = Token(softhsm_config)
    module = token._loaded_module()
    calls = _failing_login(monkeypatch, module, [rv, rv, rv])
    with pytest.raises(TokenUnavailable, match="login to token 'test-ca' failed: CKR_PIN_"):
        token.list_keys()
    assert len(calls) == 1


def test_missing_token_gives_up_after_a_bounded_retry(softhsm_config: TokenConfig) -> None:
    token = Token(replace(softhsm_config, token_label="no-such-token"))
    module = token._loaded_module()
    started = time.monotonic()
    with pytest.raises(TokenUnavailable, match=rf"no token labelled 'no-such-token'.*\({_login.ATTEMPTS} attempts\)"):
        token.list_keys()
    assert time.monotonic() - started < 3.0
    assert module.initialized
    good = Token(softhsm_config)
    assert good.list_keys() == []
    good.close()


# -- the lock --------------------------------------------------------------


def _lock_file(config: TokenConfig) -> pathlib.Path:
    assert config.softhsm_conf is not None
    return pathlib.Path(config.softhsm_conf).parent / "tokens" / _login.LOCK_NAME


def test_lock_file_lies_in_the_token_directory(softhsm_config: TokenConfig, tmp_path: pathlib.Path) -> None:
    lock = _lock_file(softhsm_config)
    module = get_module(softhsm_config.module)
    assert next(_login.lock_paths(module, softhsm_config)) == str(lock.resolve())
    # Another config file naming the same token directory shares the lock.
    assert softhsm_config.softhsm_conf is not None
    other = tmp_path / "other.conf"
    other.write_text("# a comment\n" + pathlib.Path(softhsm_config.softhsm_conf).read_text())
    assert next(_login.lock_paths(module, replace(softhsm_config, softhsm_conf=str(other)))) == str(lock.resolve())
    token = Token(softhsm_config)
    token.list_keys()
    assert lock.exists()
    token.close()


def test_lock_for_other_modules_is_per_user_and_per_token(softhsm_config: TokenConfig) -> None:
    module = get_module(softhsm_config.module)
    plain = replace(softhsm_config, softhsm_conf=None)
    first = list(_login.lock_paths(module, plain))
    second = list(_login.lock_paths(module, replace(plain, token_label="another")))
    assert len(first) == 1 and len(second) == 1 and first != second
    directory = pathlib.Path(first[0]).parent
    assert directory == pathlib.Path(tempfile.gettempdir()) / f"ztpki-locks-{os.getuid()}"
    assert directory.stat().st_mode & 0o077 == 0
    assert list(_login.lock_paths(module, plain)) == first


def _hold(path: pathlib.Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_opening_waits_for_the_lock(softhsm_config: TokenConfig) -> None:
    token = Token(softhsm_config)
    token.generate_key("k", KeyType.EC_P256)
    token.close()
    # Another open file description: flock excludes it even within one process.
    fd = _hold(_lock_file(softhsm_config))
    threading.Timer(0.4, lambda: os.close(fd)).start()
    started = time.monotonic()
    token.sign("k", b"after the wait", ECDSA)
    assert time.monotonic() - started >= 0.35
    # Held for the opening only: operations leave it free.
    fd2 = _hold(_lock_file(softhsm_config))
    token.sign("k", b"while someone holds the lock", ECDSA)
    os.close(fd2)
    token.close()


def test_a_hung_lock_holder_delays_but_does_not_block(
    softhsm_config: TokenConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_login, "LOCK_TIMEOUT", 0.3)
    fd = _hold(_lock_file(softhsm_config))
    try:
        token = Token(softhsm_config)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="hsm"):
            assert token.list_keys() == []
        assert 0.3 <= time.monotonic() - started < 2.0
        assert "still held" in caplog.text
        token.close()
    finally:
        os.close(fd)


# -- GeneralError during an operation ---------------------------------------


def test_general_error_in_an_operation_is_retried_on_a_fresh_module(token: Token) -> None:
    token.generate_key("k", KeyType.EC_P256)
    token.sign("k", b"warm up", ECDSA)
    pool = token._pool
    module = token._loaded_module()
    generation = module.generation
    attempts: list[int] = []

    def flaky(p: object, s: object) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise p11e.GeneralError()
        return "done"

    assert token._run("flaky op", flaky) == "done"
    assert len(attempts) == 2
    assert token._pool is not pool and module.generation > generation

    def broken(p: object, s: object) -> str:
        raise p11e.GeneralError()

    with pytest.raises(HsmError, match="broken op: GeneralError, also after reopening") as info:
        token._run("broken op", broken)
    assert not isinstance(info.value, TokenUnavailable)
    assert info.value.__cause__ is None and info.value.__context__ is None
    verify(token.public_key("k"), ECDSA, token.sign("k", b"healthy", ECDSA), b"healthy")


def test_bad_ciphertext_does_not_cost_a_login(keyed_token: Token) -> None:
    keyed_token.list_keys()
    pool = keyed_token._pool
    module = keyed_token._loaded_module()
    before = module.login_calls
    # SoftHSM2 answers CKR_GENERAL_ERROR to a ciphertext that does not decrypt.
    with pytest.raises(HsmError, match="decrypt with key 'rsa-2048': GeneralError$"):
        keyed_token.decrypt(KeyType.RSA_2048.value, b"\x00" * 256)
    assert keyed_token._pool is pool and module.login_calls == before
