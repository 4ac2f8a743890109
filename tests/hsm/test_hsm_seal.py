"""Sealing: AES-256-GCM under a secret key in a real SoftHSM2 token."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pkcs11
import pkcs11.exceptions
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, ObjectClass
from pkcs11 import KeyType as P11KeyType

from hsm import (
    HsmError,
    KeyExists,
    KeyNotFound,
    KeyType,
    SealError,
    Token,
    TokenConfig,
    TokenSealer,
    ensure_softhsm_token,
)
from hsm import _secret
from hsm.token import _Session
from hsmhelpers import LABEL, SO_PIN, USER_PIN, pkcs11_tool_objects

KEY = "enrolment-secrets"
OTHER = "other-secrets"
EC = "ec-key"
# 1 version byte, 12 bytes IV, 16 bytes tag.
OVERHEAD = 29


@pytest.fixture(scope="module")
def sealing_config(tmp_path_factory: pytest.TempPathFactory) -> TokenConfig:
    return ensure_softhsm_token(tmp_path_factory.mktemp("hsm-seal"), LABEL, so_pin=SO_PIN, user_pin=USER_PIN)


@pytest.fixture(scope="module")
def sealing_token(sealing_config: TokenConfig) -> Iterator[Token]:
    """A token with two secret keys, KEY and OTHER, and one signing key, EC."""
    tok = Token(sealing_config)
    tok.generate_secret_key(KEY)
    tok.generate_secret_key(OTHER)
    tok.generate_key(EC, KeyType.EC_P256)
    yield tok
    tok.close()


@pytest.mark.parametrize("size", [0, 1, 32, 4096])
@pytest.mark.parametrize("aad", [b"", b"credential-ref-42"], ids=["no-aad", "aad"])
def test_round_trip(sealing_token: Token, size: int, aad: bytes) -> None:
    plaintext = os.urandom(size)
    blob = sealing_token.seal(KEY, plaintext, aad)
    assert isinstance(blob, bytes)
    assert len(blob) == size + OVERHEAD and blob[0] == 0x01
    if size >= 16:  # shorter ones may occur in random bytes by chance
        assert plaintext not in blob
    assert sealing_token.unseal(KEY, blob, aad) == plaintext


def test_fresh_iv_every_time(sealing_token: Token) -> None:
    blobs = [sealing_token.seal(KEY, b"same secret", b"same aad") for _ in range(20)]
    assert len(set(blobs)) == 20
    assert len({b[1:13] for b in blobs}) == 20  # the IVs, not only the ciphertexts
    for blob in blobs:
        assert sealing_token.unseal(KEY, blob, b"same aad") == b"same secret"


def _assert_seal_error(token: Token, blob: bytes, aad: bytes, *hidden: bytes) -> None:
    with pytest.raises(SealError) as info:
        token.unseal(KEY, blob, aad)
    # Plain messages: never the data, and nothing of python-pkcs11 attached.
    for value in hidden:
        assert value.hex() not in str(info.value) and repr(value) not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_tampering_is_detected(sealing_token: Token) -> None:
    secret, aad = b"distinctive-mac-secret-0123456789", b"distinctive-ref"
    blob = sealing_token.seal(KEY, secret, aad)
    pool = sealing_token._pool
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[i] ^= bit
            _assert_seal_error(sealing_token, bytes(tampered), aad, secret, aad)
    for n in range(len(blob)):
        _assert_seal_error(sealing_token, blob[:n], aad, secret, aad)
    _assert_seal_error(sealing_token, blob + b"\x00", aad, secret, aad)
    _assert_seal_error(sealing_token, b"\x02" + blob[1:], aad, secret, aad)
    # Failed tag checks are the data's fault: the sessions were kept and still work.
    assert sealing_token._pool is pool
    assert sealing_token.unseal(KEY, blob, aad) == secret


def test_wrong_aad(sealing_token: Token) -> None:
    blob = sealing_token.seal(KEY, b"secret", b"ref-1")
    for wrong in (b"", b"ref-2", b"ref-1\x00", b"\x01ref-1"):
        _assert_seal_error(sealing_token, blob, wrong, b"secret")
    unbound = sealing_token.seal(KEY, b"secret")
    _assert_seal_error(sealing_token, unbound, b"ref-1", b"secret")
    assert sealing_token.unseal(KEY, unbound) == b"secret"


def test_wrong_key(sealing_token: Token) -> None:
    blob = sealing_token.seal(KEY, b"secret", b"ref")
    with pytest.raises(SealError):
        sealing_token.unseal(OTHER, blob, b"ref")
    with pytest.raises(KeyNotFound, match="no secret key labelled 'missing'"):
        sealing_token.unseal("missing", blob, b"ref")
    with pytest.raises(KeyNotFound, match="missing"):
        sealing_token.seal("missing", b"secret")
    with pytest.raises(KeyNotFound, match="signing key"):
        sealing_token.unseal(EC, blob, b"ref")
    with pytest.raises(KeyNotFound, match="signing key"):
        sealing_token.seal(EC, b"secret")


def test_secret_keys_are_not_signing_keys(sealing_token: Token) -> None:
    assert sealing_token.list_secret_keys() == [KEY, OTHER]
    assert [i.label for i in sealing_token.list_keys()] == [EC]
    assert sealing_token.has_secret_key(KEY) and not sealing_token.has_secret_key("missing")
    assert not sealing_token.has_secret_key(EC)
    assert sealing_token.has_key(EC) and not sealing_token.has_key(KEY)
    calls: list[Callable[[], object]] = [
        lambda: sealing_token.key_info(KEY),
        lambda: sealing_token.signer(KEY),
        lambda: sealing_token.public_key(KEY),
        lambda: sealing_token.decrypt(KEY, b"x" * 32),
    ]
    for call in calls:
        with pytest.raises(KeyNotFound, match="secret"):
            call()


def test_a_second_token_object_unseals(sealing_token: Token, sealing_config: TokenConfig) -> None:
    blob = sealing_token.seal(KEY, b"shared", b"ref")
    second = Token(sealing_config)
    assert second.unseal(KEY, blob, b"ref") == b"shared"
    assert sealing_token.unseal(KEY, second.seal(KEY, b"back", b"ref"), b"ref") == b"back"
    second.close()


def test_token_sealer(sealing_token: Token) -> None:
    sealer = TokenSealer(sealing_token, KEY)
    blob = sealer.seal(b"mac secret", b"ref")
    assert sealer.unseal(blob, b"ref") == b"mac secret"
    assert sealing_token.unseal(KEY, blob, b"ref") == b"mac secret"
    assert TokenSealer(sealing_token, KEY).unseal(sealer.seal(b"")) == b""
    assert KEY in repr(sealer) and USER_PIN not in repr(sealer)
    with pytest.raises(SealError):
        TokenSealer(sealing_token, OTHER).unseal(blob, b"ref")
    lazy = TokenSealer(sealing_token, "not-yet")  # built without touching the token
    with pytest.raises(KeyNotFound):
        lazy.seal(b"x")
    with pytest.raises(HsmError):
        TokenSealer(sealing_token, "")


def test_generate_secret_key(token: Token) -> None:
    assert not token.has_secret_key("s") and token.list_secret_keys() == []
    token.generate_secret_key("s")
    assert token.has_secret_key("s") and token.list_secret_keys() == ["s"]
    assert token.list_keys() == []
    assert token.unseal("s", token.seal("s", b"x")) == b"x"
    with pytest.raises(KeyExists):
        token.generate_secret_key("s")
    with pytest.raises(KeyExists):
        token.generate_key("s", KeyType.EC_P256)
    token.generate_key("pair", KeyType.EC_P256)
    with pytest.raises(KeyExists):
        token.generate_secret_key("pair")
    # Any object class counts, e.g. a data object.
    token._run("make data object", lambda p, s: s.p11.create_object({
        Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.PRIVATE: True,
        Attribute.LABEL: "data", Attribute.VALUE: b"not a key",
    }))
    with pytest.raises(KeyExists, match="'data'"):
        token.generate_secret_key("data")
    with pytest.raises(HsmError):
        token.generate_secret_key("")
    assert token.list_secret_keys() == ["s"]


def test_attributes_seen_by_pkcs11_tool(token: Token, softhsm_config: TokenConfig) -> None:
    token.generate_secret_key(KEY)
    logged_in = pkcs11_tool_objects(softhsm_config, login=True)
    secrets = [o for o in logged_in if o["kind"] == "Secret Key Object"]
    assert len(secrets) == 1
    key = secrets[0]
    assert key["detail"] == "AES length 32" and key["label"] == KEY
    access = {a.strip() for a in key["Access"].split(",")}
    assert {"sensitive", "always sensitive", "never extractable", "local"} <= access
    assert "extractable" not in access
    assert set(key["Usage"].replace(" ", "").split(",")) == {"encrypt", "decrypt"}
    assert len(bytes.fromhex(key["ID"])) == 16
    anonymous = pkcs11_tool_objects(softhsm_config, login=False)
    assert not [o for o in anonymous if o["kind"] == "Secret Key Object"]  # CKA_PRIVATE


def test_blob_is_standard_aes_gcm(token: Token) -> None:
    """Pins the format: version 1, IV, GCM output, AAD = version byte || aad."""
    raw = os.urandom(32)
    iv = os.urandom(12)
    theirs = b"\x01" + iv + AESGCM(raw).encrypt(iv, b"from cryptography", b"\x01ref")

    def op(pool: object, s: _Session) -> tuple[bytes, bytes]:
        # A session key with a known value, so cryptography can check the token's work.
        key = s.p11.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: P11KeyType.AES,
            Attribute.TOKEN: False, Attribute.VALUE: raw, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
        })
        assert isinstance(key, pkcs11.SecretKey)
        return _secret.seal(key, b"from the token", b"ref"), _secret.unseal(key, theirs, b"ref")

    ours, plain = token._run("interop", op)
    assert plain == b"from cryptography"
    assert AESGCM(raw).decrypt(ours[1:13], ours[13:], b"\x01ref") == b"from the token"


def test_threads(sealing_token: Token) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    done = [0] * 8

    def work(i: int) -> None:
        label = (KEY, OTHER)[i % 2]
        try:
            barrier.wait()
            for n in range(100):
                secret, aad = os.urandom(n % 40), b"thread %d item %d" % (i, n)
                assert sealing_token.unseal(label, sealing_token.seal(label, secret, aad), aad) == secret
                done[i] += 1
        except BaseException as exc:  # the main thread reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert done == [100] * 8
    pool = sealing_token._pool
    assert pool is not None and 1 <= pool.size <= 8


def _child(token: Token, blob: bytes, queue: multiprocessing.SimpleQueue[tuple[str, object]]) -> None:
    try:
        plain = token.unseal(KEY, blob, b"parent")
        queue.put(("ok", (plain, token.seal(KEY, b"child %d" % os.getpid(), b"child"))))
    except BaseException as exc:  # the parent reports it
        queue.put(("error", repr(exc)))


def test_fork(token: Token) -> None:
    token.generate_secret_key(KEY)
    blob = token.seal(KEY, b"from the parent", b"parent")
    parent_pool = token._pool
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.SimpleQueue[tuple[str, object]] = ctx.SimpleQueue()
    children = [ctx.Process(target=_child, args=(token, blob, queue)) for _ in range(2)]
    # One child at a time: SoftHSM2 rewrites token.object in place on every
    # C_Login, so processes that open the same token at the same moment can
    # read it half-written (softhsm/SoftHSMv2#757), whatever hsm does.
    for child in children:
        child.start()
        child.join(60)
    reports = [queue.get() for _ in children]
    assert [c.exitcode for c in children] == [0, 0]
    for status, payload in reports:
        assert status == "ok", payload
        assert isinstance(payload, tuple)
        plain, child_blob = payload
        assert plain == b"from the parent"
        assert token.unseal(KEY, child_blob, b"child").startswith(b"child ")
    assert token.unseal(KEY, token.seal(KEY, b"after", b"parent"), b"parent") == b"after"
    assert token._pool is parent_pool


def test_recovers_after_session_loss(token: Token) -> None:
    token.generate_secret_key(KEY)
    blob = token.seal(KEY, b"before", b"ref")
    pool = token._pool
    assert pool is not None
    assert token._loaded_module().close_all_sessions(pool.p11_token.slot.slot_id) == 0
    assert token.unseal(KEY, blob, b"ref") == b"before"
    assert token._pool is not pool
    pool = token._pool
    token._loaded_module().reinitialize()
    assert token.unseal(KEY, token.seal(KEY, b"after reinit", b"ref"), b"ref") == b"after reinit"
    assert token._pool is not pool


def test_key_replaced_by_another_process(token: Token, softhsm_config: TokenConfig) -> None:
    token.generate_secret_key(KEY)
    old_blob = token.seal(KEY, b"old", b"ref")
    assert softhsm_config.softhsm_conf is not None
    env = {**os.environ, "SOFTHSM2_CONF": softhsm_config.softhsm_conf}
    base = ["pkcs11-tool", "--module", softhsm_config.module, "--token-label", softhsm_config.token_label,
            "--login", "--pin", softhsm_config.pin]
    subprocess.run(base + ["--delete-object", "--type", "secrkey", "--label", KEY],
                   env=env, check=True, capture_output=True)
    subprocess.run(base + ["--keygen", "--key-type", "AES:32", "--label", KEY, "--id", "01"],
                   env=env, check=True, capture_output=True)
    # The cached handle is stale: looked up again, the new key is used.
    new_blob = token.seal(KEY, b"new", b"ref")
    assert token.unseal(KEY, new_blob, b"ref") == b"new"
    with pytest.raises(SealError):
        token.unseal(KEY, old_blob, b"ref")


class _FlakyKey(pkcs11.EncryptMixin, pkcs11.DecryptMixin):
    """A real secret key whose first ``failures`` decryptions answer CKR_GENERAL_ERROR,
    as SoftHSM2 does after reading a token file that another process was rewriting."""

    def __init__(self, key: pkcs11.SecretKey, failures: int) -> None:
        self.key, self.failures, self.encrypts, self.decrypts = key, failures, 0, 0

    def encrypt(self, data: Any, buffer_size: int = 8192, **kwargs: Any) -> Any:
        self.encrypts += 1
        return self.key.encrypt(data, **kwargs)

    def decrypt(self, data: Any, buffer_size: int = 8192, **kwargs: Any) -> Any:
        self.decrypts += 1
        if self.failures:
            self.failures -= 1
            raise pkcs11.exceptions.GeneralError()
        return self.key.decrypt(data, **kwargs)


def _with_key(token: Token, check: Callable[[pkcs11.SecretKey], None]) -> None:
    token._run("flaky key", lambda p, s: check(token._secret_key(p, s, KEY)))


def test_unseal_tells_a_disturbed_token_from_a_bad_blob(sealing_token: Token) -> None:
    blob = sealing_token.seal(KEY, b"secret", b"ref")
    altered = blob[:-1] + bytes([blob[-1] ^ 1])

    def check(key: pkcs11.SecretKey) -> None:
        once = _FlakyKey(key, failures=1)  # a passing disturbance: the second try opens it
        assert _secret.unseal(once, blob, b"ref") == b"secret"
        assert (once.decrypts, once.encrypts) == (2, 0)
        good = _FlakyKey(key, failures=0)  # a bad blob: tried twice, then the key proves sound
        with pytest.raises(SealError):
            _secret.unseal(good, altered, b"ref")
        assert (good.decrypts, good.encrypts) == (3, 1)
        broken = _FlakyKey(key, failures=99)  # the key cannot even open its own canary
        with pytest.raises(pkcs11.exceptions.GeneralError):
            _secret.unseal(broken, altered, b"ref")

    _with_key(sealing_token, check)


def test_unseal_recovers_from_a_disturbed_token(
    sealing_config: TokenConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = Token(sealing_config)
    blob = token.seal(KEY, b"secret", b"ref")
    pool = token._pool
    module = token._loaded_module()
    logins = module.login_calls
    with pytest.raises(SealError):  # a bad blob costs no new login
        token.unseal(KEY, blob, b"other ref")
    assert token._pool is pool and module.login_calls == logins
    real = _secret.unseal
    calls: list[int] = []

    def disturbed(key: pkcs11.SecretKey, data: bytes, aad: bytes) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise pkcs11.exceptions.GeneralError()  # what a failed canary lets through
        return real(key, data, aad)

    monkeypatch.setattr(_secret, "unseal", disturbed)
    assert token.unseal(KEY, blob, b"ref") == b"secret"
    assert len(calls) == 2 and token._pool is not pool and module.login_calls == logins + 1
    token.close()
