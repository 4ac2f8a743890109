"""CA keys in a PKCS#11 token: the only part of ztpki that talks PKCS#11.

Everything above this package asks one of two questions: "sign these bytes
with key K", through :class:`Token` and :class:`KeySigner`, or "seal (unseal)
this secret with key S", through :class:`Token` and :class:`TokenSealer`. No
python-pkcs11 type or exception crosses this boundary; errors are
:class:`HsmError` subclasses whose messages never contain the PIN (nor, for
sealing, the data).

Design
======

Module state (``_module.py``)
    One :class:`_module.Module` per module file (symlinks resolved, because
    dlopen shares one copy of the library between them). It calls
    ``C_Initialize`` itself, through ctypes, with ``CKF_OS_LOCKING_OK``:
    python-pkcs11 0.10 passes ``NULL``, which lets a module assume a single
    thread, and SoftHSM2 then disables its internal locks and crashes under
    concurrent signing. The python-pkcs11 ``lib`` object is created without
    its ``__init__`` so that it never initialises the module a second time.
    Should a module refuse OS locking, every call into it is serialised.

    The module keeps a *generation* counter, bumped whenever its PKCS#11
    state is reset (re-initialisation, fork). Every session pool remembers
    the generation it was opened under and is abandoned when that changes.

One login, a pool of sessions (``token.py``)
    PKCS#11 login state belongs to the application, not to a session: a
    Token logs in once (``C_Login`` on its first session, with
    ``CKR_USER_ALREADY_LOGGED_IN`` treated as success, as happens when two
    Token objects share a token) and further sessions inherit it. A session
    runs one operation at a time, so each operation borrows a session from a
    LIFO pool that grows on demand up to ``max_sessions`` and then makes
    callers wait. Each session caches its key objects by label, so the
    steady state of ``sign`` is: borrow a session, one ``C_SignInit`` and
    ``C_Sign``, give the session back; no login and no object search.
    Generating a key bumps the pool's epoch, which empties those caches.

Several processes on one token (``_login.py``)
    SoftHSM2 rewrites ``token.object`` in place on every ``C_Login``, and a
    process that initialises the module, looks the token up or logs in at
    that moment can read it half-written: no token with our label,
    ``CKR_GENERAL_ERROR`` from ``C_Login`` or from the token lookup
    (SoftHSMv2 issue #757), and that process keeps the broken view until it
    initialises the module again. So the whole opening step (``C_Initialize``
    when due, token lookup, first session, ``C_Login``) runs under an
    exclusive ``flock`` shared by all ztpki processes. Its file lies in the
    token directory of a SoftHSM2 home; for other modules, in a per-user
    temporary directory, named after a hash of (module, token label). It is
    never held during operations, and is waited for at most 10 s. The
    opening step is retried, up to 5 attempts with 20-50 ms random pauses
    and the module initialised afresh each time, for those symptoms only
    (token not found, general or device error, user PIN "not
    initialised"); a refused PIN is never retried, so a retry cannot lock
    the token.

Recovery
    When an operation fails because the session, the login or the module
    state went away (session handle invalid, device removed, not logged in,
    module not initialised, ...), the pool is abandoned, the Token logs in
    again on fresh sessions and the operation is retried once; a second
    failure raises :class:`TokenUnavailable`. ``CKR_GENERAL_ERROR`` is
    handled the same way, except that the module is initialised afresh
    before the new login (other Tokens of the process on that module then
    reopen too, as with several homes) and a second failure stays an
    :class:`HsmError`. RSA decryption is left out, since SoftHSM2 also says
    ``CKR_GENERAL_ERROR`` to a ciphertext that does not decrypt, and so is
    the AES-GCM decryption of ``unseal`` (see Sealing). Abandoned sessions
    are never closed, because after a reset their handle numbers may
    already belong to new sessions. A stale key handle only empties the key
    caches.

Fork (pre-forking servers such as gunicorn)
    ``os.register_at_fork`` and a pid check make a child drop every session,
    pool and lock it inherited, without one PKCS#11 call on the parent's
    handles. On first use the child calls ``C_Initialize``, under the login
    lock like every opening; a module that did not notice the fork answers
    ``CKR_CRYPTOKI_ALREADY_INITIALIZED``, and only then does the child call
    ``C_Finalize`` first, which for an in-process module such as SoftHSM2
    discards only the child's copy of the state. The child then logs in
    afresh. The parent is unaffected.

Sealing (``_secret.py``)
    Enrolment secrets (CMP MAC shared secrets) are stored in the database
    sealed under an AES-256 key that never leaves the token (sensitive, not
    extractable), so a database leak alone reveals nothing. ``seal`` runs
    ``CKM_AES_GCM`` as one single-part ``C_Encrypt`` with a 12-byte IV from
    ``os.urandom`` and a 128-bit tag, and returns ``0x01 || IV ||
    ciphertext || tag``; the version byte is part of the authenticated data,
    followed by the caller's ``aad``. A blob that does not authenticate
    (altered, another key, another ``aad``) raises :class:`SealError`.
    SoftHSM2 reports that as ``CKR_GENERAL_ERROR``, which may also be the
    trace of a disturbed token file: the blob is then tried once more, and
    only if the key still round-trips a random canary is it a SealError
    (if not, the token's error goes to the ``_run`` recovery).
    Secret keys have their own per-session cache and go through the same
    ``_run`` recovery and fork handling as signing; ``list_keys``,
    ``key_info`` and ``signer`` never take a secret key for a signing key
    (``list_secret_keys`` lists them).

Several SoftHSM2 homes in one process
    A process has one copy of a module, and SoftHSM2 reads ``SOFTHSM2_CONF``
    only in ``C_Initialize``. A Token whose ``softhsm_conf`` differs from the
    one the module was initialised with re-initialises the module
    (``C_Finalize``, point ``SOFTHSM2_CONF`` at its file, ``C_Initialize``).
    Limitation: that pulls the sessions away from every other Token on the
    same module file; such a Token notices the generation change and
    reopens (and re-initialises back to its own home) on its next use. This
    is meant for tests and the CLI using homes one after another; Tokens of
    different homes must not be used concurrently from several threads.
"""

from __future__ import annotations

from .algorithms import KeyInfo, KeyType, SignAlgorithm, default_sign_algorithm
from .config import TokenConfig
from .errors import HsmConfigError, HsmError, KeyExists, KeyNotFound, SealError, TokenUnavailable
from .handles import KeySigner, TokenSealer
from .softhsm import ensure_softhsm_token
from .token import Token

__all__ = [
    "HsmConfigError",
    "HsmError",
    "KeyExists",
    "KeyInfo",
    "KeyNotFound",
    "KeySigner",
    "KeyType",
    "SealError",
    "SignAlgorithm",
    "Token",
    "TokenConfig",
    "TokenSealer",
    "TokenUnavailable",
    "default_sign_algorithm",
    "ensure_softhsm_token",
]
