"""Token: sessions, login, key lookup, the signing operations ca/ builds on, and sealing."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import pkcs11
import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from . import _keys, _login, _secret
from ._module import Module, get_module
from .algorithms import KeyInfo, KeyType, SignAlgorithm, default_sign_algorithm
from .config import TokenConfig
from .errors import HsmError, KeyExists, KeyNotFound, TokenUnavailable, error_name, is_session_loss, translate
from .handles import KeySigner as KeySigner  # re-exported: callers import it from here too

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors meaning only that cached object handles are stale (a key was
# deleted or recreated by another process); the sessions themselves are fine.
_STALE = (p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid)


class _Session:
    __slots__ = ("p11", "keys", "secrets", "epoch")

    def __init__(self, p11: pkcs11.Session, epoch: int) -> None:
        self.p11 = p11
        self.keys: dict[str, _keys.KeyObjects] = {}
        self.secrets: dict[str, pkcs11.SecretKey] = {}
        self.epoch = epoch


class _Pool:
    """Sessions opened under one module generation, all sharing one login."""

    def __init__(self, generation: int, p11_token: pkcs11.Token) -> None:
        self.generation = generation
        self.p11_token = p11_token
        self.idle: list[_Session] = []
        self.size = 0
        # Bumped to make every session forget its cached key objects (both kinds).
        self.epoch = 0
        self.dead = False
        self.closed = False


class Token:
    """A logged-in PKCS#11 token; thread-safe, fork-safe, opened lazily."""

    def __init__(self, config: TokenConfig, *, max_sessions: int = 8) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.config = config
        self._max_sessions = max_sessions
        self._module: Module | None = None
        self._pool: _Pool | None = None
        # Set when the next pool must be opened on a freshly initialised module.
        self._reinitialize = False
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._generate_lock = threading.Lock()
        _live_tokens.add(self)

    def __repr__(self) -> str:
        return f"Token(module={self.config.module!r}, token_label={self.config.token_label!r})"

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public operations -------------------------------------------------

    def generate_key(self, label: str, key_type: KeyType) -> KeyInfo:
        key_type = KeyType(key_type)
        _keys.check_label(label)
        what = f"generate key {label!r}"

        def check(pool: _Pool, s: _Session) -> None:
            if _keys.label_taken(s.p11, label):
                raise KeyExists(f"a key labelled {label!r} exists already on token {self._name}")

        def generate(pool: _Pool, s: _Session) -> KeyInfo:
            kt, bits, caps, public, private = _keys.keypair_templates(key_type, label, os.urandom(16))
            _, priv = s.p11.generate_keypair(
                kt, bits, store=True, capabilities=caps,
                public_template=public, private_template=private,
            )
            pool.epoch += 1
            info = _keys.key_info(label, priv)
            if info is None:
                raise HsmError(f"{what}: the token made a key of unexpected type")
            return info

        with self._generate_lock:
            self._run(what, check)
            # Not retried: after a failure half-way the key may exist already.
            return self._run(what, generate, retry=False)

    def has_key(self, label: str) -> bool:
        try:
            self.key_info(label)
        except KeyNotFound:
            return False
        return True

    def key_info(self, label: str) -> KeyInfo:
        return self._run(f"look up key {label!r}", lambda p, s: self._objects(p, s, label).info)

    def list_keys(self) -> list[KeyInfo]:
        def op(pool: _Pool, s: _Session) -> list[KeyInfo]:
            infos = (_keys.key_info(label, key) for label, key in _keys.private_key_labels(s.p11))
            return sorted((i for i in infos if i is not None and i.label), key=lambda i: i.label)

        return self._run("list keys", op)

    def public_key(self, label: str) -> PublicKeyTypes:
        return self._run(
            f"read public key {label!r}", lambda p, s: _keys.public_key(self._objects(p, s, label))
        )

    def signer(self, label: str, algorithm: SignAlgorithm | None = None) -> KeySigner:
        info = self.key_info(label)
        chosen = default_sign_algorithm(info.key_type) if algorithm is None else SignAlgorithm(algorithm)
        _keys.check_fits(chosen, info)
        return KeySigner(self, label, chosen, info.key_type)

    def sign(self, label: str, data: bytes, algorithm: SignAlgorithm) -> bytes:
        algorithm = SignAlgorithm(algorithm)
        payload = bytes(data)

        def op(pool: _Pool, s: _Session) -> bytes:
            objects = self._objects(pool, s, label)
            _keys.check_fits(algorithm, objects.info)
            return _keys.sign(objects.private, algorithm, payload)

        return self._run(f"sign with key {label!r}", op)

    def decrypt(self, label: str, ciphertext: bytes) -> bytes:
        payload = bytes(ciphertext)

        def op(pool: _Pool, s: _Session) -> bytes:
            objects = self._objects(pool, s, label)
            if not objects.info.key_type.is_rsa:
                raise HsmError(f"key {label!r} is {objects.info.key_type.value}, decrypt needs RSA")
            return _keys.decrypt(objects.private, payload)

        # SoftHSM2 answers CKR_GENERAL_ERROR to a ciphertext that does not decrypt.
        return self._run(f"decrypt with key {label!r}", op, general_retry=False)

    # -- sealing: AES-256-GCM under a secret key that stays in the token --

    def generate_secret_key(self, label: str) -> None:
        """Generate the AES-256 sealing key ``label``; KeyExists if any object has that label."""
        _keys.check_label(label)
        what = f"generate secret key {label!r}"

        def check(pool: _Pool, s: _Session) -> None:
            if _keys.label_taken(s.p11, label, any_class=True):
                raise KeyExists(f"an object labelled {label!r} exists already on token {self._name}")

        def generate(pool: _Pool, s: _Session) -> None:
            _secret.generate(s.p11, label, os.urandom(16))
            pool.epoch += 1

        with self._generate_lock:
            self._run(what, check)
            # Not retried: after a failure half-way the key may exist already.
            self._run(what, generate, retry=False)

    def has_secret_key(self, label: str) -> bool:
        try:
            self._run(f"look up secret key {label!r}", lambda p, s: self._secret_key(p, s, label))
        except KeyNotFound:
            return False
        return True

    def list_secret_keys(self) -> list[str]:
        """Labels of the secret keys; ``list_keys`` lists the signing keys only."""
        return self._run("list secret keys", lambda p, s: _secret.labels(s.p11))

    def seal(self, label: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt and authenticate ``plaintext`` (bound to ``aad``) under secret key ``label``."""
        data, extra = bytes(plaintext), bytes(aad)
        return self._run(
            f"seal with key {label!r}", lambda p, s: _secret.seal(self._secret_key(p, s, label), data, extra)
        )

    def unseal(self, label: str, blob: bytes, aad: bytes = b"") -> bytes:
        """The plaintext of a ``seal`` blob; SealError if it does not authenticate."""
        sealed, extra = bytes(blob), bytes(aad)
        return self._run(
            f"unseal with key {label!r}",
            lambda p, s: _secret.unseal(self._secret_key(p, s, label), sealed, extra),
        )

    def close(self) -> None:
        """Close this Token's sessions; it reopens them if used again."""
        with self._cond:
            pool, self._pool = self._pool, None
            idle: list[_Session] = []
            if pool is not None:
                pool.dead = pool.closed = True
                idle, pool.idle = pool.idle, []
                pool.size -= len(idle)
            self._cond.notify_all()
        if pool is not None:
            for s in idle:
                self._close_session(pool, s)

    # -- machinery ---------------------------------------------------------

    @property
    def _name(self) -> str:
        return repr(self.config.token_label)

    def _run(
        self, what: str, op: Callable[[_Pool, _Session], T], *, retry: bool = True, general_retry: bool = True
    ) -> T:
        """Run ``op`` on a pooled session; map errors; retry once on fresh sessions.

        GeneralError counts as a loss too, recovered on a freshly initialised
        module (see ``_login``), unless ``general_retry`` is False: for
        operations where it is also the answer to bad input (RSA decryption).
        """
        for attempt in (1, 2):
            pool: _Pool | None = None
            session: _Session | None = None
            try:
                pool, session = self._checkout()
                with self._loaded_module().guard():
                    result = op(pool, session)
            except p11e.PKCS11Error as exc:
                failure = exc
            except BaseException:
                if pool is not None and session is not None:
                    self._checkin(pool, session, healthy=True)
                raise
            else:
                self._checkin(pool, session, healthy=True)
                return result
            # Raised outside the except block so that no pkcs11 exception
            # rides along as __context__.
            stale = isinstance(failure, _STALE)
            general = general_retry and isinstance(failure, p11e.GeneralError)
            lost = (is_session_loss(failure) and not stale) or general
            if pool is not None and session is not None:
                self._checkin(pool, session, healthy=not lost)
            if not (stale or lost):
                raise translate(failure, what)
            if stale and pool is not None:
                pool.epoch += 1
            if lost:
                self._drop(pool, reinitialize=general)
            if not retry:
                raise translate(failure, what)
            if attempt == 1:
                log.warning("token %s: %s during %s; retrying", self._name, error_name(failure), what)
                continue
            if general:
                raise HsmError(f"{what}: {error_name(failure)}, also after reopening the session")
            raise TokenUnavailable(
                f"{what}: token {self._name} unavailable ({error_name(failure)}), "
                "also after reopening the session"
            )
        raise AssertionError("unreachable")

    def _loaded_module(self) -> Module:
        module = self._module
        if module is None:
            module = self._module = get_module(self.config.module)
        return module

    def _checkout(self) -> tuple[_Pool, _Session]:
        if self._pid != os.getpid():
            self._forget_after_fork()
        module = self._loaded_module()
        with self._cond:
            while True:
                pool = self._pool
                # None if the module must be (re)initialised first, which
                # happens while opening the pool, under the login lock.
                generation = module.ready(self.config.softhsm_conf)
                if pool is None or pool.dead or generation is None or pool.generation != generation:
                    pool = self._pool = self._open_pool(module)
                if pool.idle:
                    return pool, pool.idle.pop()
                if pool.size < self._max_sessions:
                    pool.size += 1
                    break
                self._cond.wait()
        try:
            with module.guard():
                p11 = pool.p11_token.open(rw=True)
        except BaseException:
            with self._cond:
                pool.size -= 1
                self._cond.notify()
            raise
        return pool, _Session(p11, pool.epoch)

    def _open_pool(self, module: Module) -> _Pool:
        """Initialise the module if need be, find the token and log in; called with the Token lock held."""
        generation, p11_token, first = _login.open_token(module, self.config, fresh=self._reinitialize)
        self._reinitialize = False
        pool = _Pool(generation, p11_token)
        pool.idle.append(_Session(first, pool.epoch))
        pool.size = 1
        log.debug("token %s: logged in, module generation %d", self._name, generation)
        return pool

    def _checkin(self, pool: _Pool, session: _Session, *, healthy: bool) -> None:
        close = False
        with self._cond:
            if healthy and pool is self._pool and not pool.dead:
                pool.idle.append(session)
            else:
                pool.size -= 1
                close = healthy and pool.closed
            self._cond.notify()
        if close:
            self._close_session(pool, session)

    def _drop(self, pool: _Pool | None, *, reinitialize: bool = False) -> None:
        # The dropped sessions are abandoned, not closed: after a module reset
        # their handle numbers may already belong to new sessions.
        with self._cond:
            current = self._pool
            if current is not None and (pool is None or pool is current):
                current.dead = True
                self._pool = None
                self._reinitialize |= reinitialize
            self._cond.notify_all()

    def _close_session(self, pool: _Pool, session: _Session) -> None:
        module = self._loaded_module()
        if pool.generation == module.generation and self._pid == os.getpid():
            with module.guard():
                _login.quiet_close(session.p11)

    def _objects(self, pool: _Pool, s: _Session, label: str) -> _keys.KeyObjects:
        _refresh(pool, s)
        objects = s.keys.get(label)
        if objects is None:
            objects = _keys.find_key(s.p11, label)
            if objects is None:
                raise KeyNotFound(f"no key labelled {label!r} on token {self._name}")
            s.keys[label] = objects
        return objects

    def _secret_key(self, pool: _Pool, s: _Session, label: str) -> pkcs11.SecretKey:
        _refresh(pool, s)
        key = s.secrets.get(label)
        if key is None:
            key = _secret.find_secret_key(s.p11, label)
            if key is None:
                raise KeyNotFound(f"no secret key labelled {label!r} on token {self._name}")
            s.secrets[label] = key
        return key

    def _forget_after_fork(self) -> None:
        # Everything inherited belongs to the parent: drop it without a
        # single PKCS#11 call, and replace locks a parent thread may hold.
        self._pid = os.getpid()
        self._pool = None
        self._reinitialize = False
        self._cond = threading.Condition(threading.Lock())
        self._generate_lock = threading.Lock()


def _refresh(pool: _Pool, s: _Session) -> None:
    """Empty a session's key caches if the pool's epoch moved on since it filled them."""
    if s.epoch != pool.epoch:
        s.keys.clear()
        s.secrets.clear()
        s.epoch = pool.epoch


_live_tokens: weakref.WeakSet[Token] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for token in list(_live_tokens):
        token._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
