"""Opening a token (find it, open a first session, C_Login), serialised across processes.

SoftHSM2 (2.6.1, file object store) rewrites the token's ``token.object`` in
place on every ``C_Login``, successful or not: the PIN-failure flags live in
it. Another process that initialises the module, looks the token up or
logs in at that moment can read the file half-written (SoftHSMv2 issue
#757). It then sees no token with our label, or gets ``CKR_GENERAL_ERROR``
from the lookup (``C_GetTokenInfo``) or from ``C_Login``, which may also
say ``CKR_USER_PIN_NOT_INITIALIZED``. The damage sticks: SoftHSM2 builds
its list of tokens only in ``C_Initialize``, and a token it found unreadable
then (or later) stays missing, however often the lookup or the login is
repeated, until the module is initialised again. Two defences:

* An advisory lock (``flock``, exclusive) held by every ztpki process around
  the whole opening step, ``C_Initialize`` included when it happens then, but
  never around operations. For a SoftHSM2 home the lock file lies in its
  token directory, so every configuration naming that directory shares it;
  for any other module it lies in a per-user directory under the temporary
  directory and is named after a hash of (module file, token label), which
  costs a real HSM nothing. The lock is polled, without blocking, for at most
  ``LOCK_TIMEOUT`` seconds: a holder that hangs delays the others, it cannot
  stop them (they go on unlocked and rely on the retry). Without a usable
  lock file the opening simply runs unlocked.
* A bounded retry of the opening step, for the symptoms listed above only,
  after a short random pause and with the module initialised afresh
  (``C_Finalize`` + ``C_Initialize``, under the lock) so that the token
  directory is read again. A wrong, locked or otherwise refused PIN is never
  retried: repeating it could lock the token.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import random
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e

from ._module import CKR_OK, Module, rv_name
from .config import TokenConfig
from .errors import TokenUnavailable, error_name, is_session_loss

log = logging.getLogger(__name__)

ATTEMPTS = 5
LOCK_TIMEOUT = 10.0
BACKOFF = (0.02, 0.05)
LOCK_NAME = ".ztpki-login.lock"

# C_Login answers that a half-written token file (or a module reset under
# our feet) can cause; none of them means the PIN was checked and refused.
_TRANSIENT_RV = frozenset({
    0x05,   # CKR_GENERAL_ERROR
    0x30,   # CKR_DEVICE_ERROR
    0x32,   # CKR_DEVICE_REMOVED
    0xB3,   # CKR_SESSION_HANDLE_INVALID
    0xE0,   # CKR_TOKEN_NOT_PRESENT
    0x102,  # CKR_USER_PIN_NOT_INITIALIZED (the PIN blob read back empty)
    0x190,  # CKR_CRYPTOKI_NOT_INITIALIZED
})


class _Failure:
    __slots__ = ("transient", "message")

    def __init__(self, transient: bool, message: str) -> None:
        self.transient = transient
        self.message = message


def open_token(
    module: Module, config: TokenConfig, *, fresh: bool = False
) -> tuple[int, pkcs11.Token, pkcs11.Session]:
    """(module generation, token, first session, logged in); TokenUnavailable if that fails.

    ``fresh`` initialises the module anew even for the first attempt.
    """
    wait = LOCK_TIMEOUT
    for attempt in range(1, ATTEMPTS + 1):
        if attempt > 1:
            time.sleep(random.uniform(*BACKOFF))
        with login_lock(lock_paths(module, config), wait) as timed_out:
            if timed_out:
                wait = 0.0  # the holder hangs: do not wait for it again in this opening
            generation = module.ensure(config.softhsm_conf)
            if attempt > 1 or fresh:
                generation = module.reinitialize()
            outcome = _attempt(module, config)
        if not isinstance(outcome, _Failure):
            return (generation, *outcome)
        if not outcome.transient:
            raise TokenUnavailable(outcome.message)
        if attempt == ATTEMPTS:
            raise TokenUnavailable(f"{outcome.message} ({ATTEMPTS} attempts)")
        log.warning("token %r: %s; retrying (%d of %d)", config.token_label, outcome.message,
                    attempt + 1, ATTEMPTS)
    raise AssertionError("unreachable")


def _attempt(module: Module, config: TokenConfig) -> tuple[pkcs11.Token, pkcs11.Session] | _Failure:
    # Failures are returned, not raised, so that no pkcs11 exception rides
    # along as the context of the TokenUnavailable raised in the end.
    label = config.token_label
    with module.guard():
        try:
            p11_token = module.lib.get_token(token_label=label)
        except p11e.NoSuchToken:
            return _Failure(True, f"no token labelled {label!r} in {module.path!r}")
        except p11e.MultipleTokensReturned:
            return _Failure(False, f"several tokens labelled {label!r} in {module.path!r}")
        except p11e.PKCS11Error as exc:
            return _Failure(_transient(exc), f"cannot look up token {label!r}: {error_name(exc)}")
        try:
            first = p11_token.open(rw=True)
        except p11e.PKCS11Error as exc:
            return _Failure(_transient(exc), f"cannot open a session on token {label!r}: {error_name(exc)}")
        rv = module.login(first.handle, config.pin)
        if rv != CKR_OK:
            quiet_close(first)
            return _Failure(rv in _TRANSIENT_RV, f"login to token {label!r} failed: {rv_name(rv)}")
    return p11_token, first


def _transient(exc: p11e.PKCS11Error) -> bool:
    return isinstance(exc, p11e.GeneralError) or is_session_loss(exc)


def quiet_close(session: Any) -> None:
    try:
        session.close()
    except p11e.PKCS11Error:
        pass


# -- the lock --------------------------------------------------------------


def lock_paths(module: Module, config: TokenConfig) -> Iterator[str]:
    """Where the lock file for ``config``'s token may be, best place first (computed lazily)."""
    if config.softhsm_conf is not None:
        tokendir = softhsm_tokendir(config.softhsm_conf)
        if tokendir is not None:
            yield os.path.join(tokendir, LOCK_NAME)
        key = "softhsm\0" + os.path.realpath(tokendir or config.softhsm_conf)
    else:
        key = "module\0" + os.path.realpath(module.path) + "\0" + config.token_label
    directory = _private_tempdir()
    if directory is not None:
        yield os.path.join(directory, hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")


def softhsm_tokendir(conf: str) -> str | None:
    """``directories.tokendir`` of a SoftHSM2 config file, as a real path."""
    try:
        with open(conf, encoding="utf-8") as fh:
            lines = fh.read(1 << 16).splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and name.strip() == "directories.tokendir":
            return os.path.realpath(value.strip()) if value.strip() else None
    return None


def _private_tempdir() -> str | None:
    """A directory under the temporary directory that only this user can write to."""
    path = os.path.join(tempfile.gettempdir(), f"ztpki-locks-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        log.warning("no login lock in %s: %s", path, exc.strerror)
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        log.warning("no login lock: %s is not a private directory of this user", path)
        return None
    return path


@contextlib.contextmanager
def login_lock(paths: Iterable[str], timeout: float) -> Iterator[bool]:
    """Hold an exclusive flock on the first of ``paths`` that opens, waiting up to ``timeout`` s.

    Yields whether the wait timed out; the block runs in every case, locked or not.
    """
    fd = _open_lock_file(paths)
    if fd is None:
        yield False
        return
    try:
        held, timed_out = _acquire(fd, timeout)
        try:
            yield timed_out
        finally:
            if held:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock_file(paths: Iterable[str]) -> int | None:
    # Read-only is enough for flock, and lets users who share a token
    # directory share the lock file too.
    flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    tried = []
    for path in paths:
        try:
            return os.open(path, flags, 0o644)
        except OSError as exc:
            tried.append(f"{path}: {exc.strerror}")
    log.warning("no usable login lock file (%s); opening the token unlocked", "; ".join(tried) or "none")
    return None


def _acquire(fd: int, timeout: float) -> tuple[bool, bool]:
    """(held, timed out)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True, False
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                log.warning("login lock unusable (%s); opening the token unlocked", exc.strerror)
                return False, False
        if time.monotonic() >= deadline:
            log.warning("login lock still held by another process after %.1f s; going on without it", timeout)
            return False, True
        time.sleep(random.uniform(0.002, 0.01))
