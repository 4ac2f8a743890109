"""One loaded PKCS#11 module per process: initialisation, re-initialisation, fork.

python-pkcs11 0.10 calls ``C_Initialize(NULL)``. By the PKCS#11 rules that
promises the module it will never be entered from two threads at once, and
SoftHSM2 takes the promise literally: it switches all its mutexes off, and
concurrent ``C_Sign`` calls on different sessions then corrupt its heap
(segfaults within a few thousand signatures with 8 threads). python-pkcs11
also releases the GIL around every call, so Python gives no protection.
So this module calls ``C_Initialize`` itself through ctypes with
``CKF_OS_LOCKING_OK``, and builds the python-pkcs11 ``lib`` object without
running its ``__init__`` (which would call ``C_Initialize(NULL)`` again).
If the module refuses OS locking, or somebody else initialised it first,
every call into it is serialised with one lock instead.

The same entry points give a clean ``C_Login`` that tolerates
``CKR_USER_ALREADY_LOGGED_IN`` (python-pkcs11 can only log in while opening a
session and leaks that session's handle when the login fails).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from typing import Any, cast

from pkcs11 import _pkcs11
from pkcs11.exceptions import PKCS11Error

from .errors import TokenUnavailable

log = logging.getLogger(__name__)

CKR_OK = 0x0
CKR_CANT_LOCK = 0x0A
CKR_PIN_INCORRECT = 0xA0
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKF_OS_LOCKING_OK = 0x2
CKU_USER = 1

_RV_NAMES = {
    0x05: "CKR_GENERAL_ERROR",
    0x06: "CKR_FUNCTION_FAILED",
    0x30: "CKR_DEVICE_ERROR",
    0x31: "CKR_DEVICE_MEMORY",
    0x32: "CKR_DEVICE_REMOVED",
    0xA0: "CKR_PIN_INCORRECT",
    0xA1: "CKR_PIN_INVALID",
    0xA2: "CKR_PIN_LEN_RANGE",
    0xA3: "CKR_PIN_EXPIRED",
    0xA4: "CKR_PIN_LOCKED",
    0xB3: "CKR_SESSION_HANDLE_INVALID",
    0xE0: "CKR_TOKEN_NOT_PRESENT",
    0x102: "CKR_USER_PIN_NOT_INITIALIZED",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
}

# CK_FUNCTION_LIST up to C_Logout; the struct is only read, never allocated,
# so the tail that is not declared here does not matter.
_FUNCTIONS = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
    "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
    "C_InitToken", "C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession",
    "C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState",
    "C_SetOperationState", "C_Login", "C_Logout",
)


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", ctypes.c_ubyte * 2)] + [(n, ctypes.c_void_p) for n in _FUNCTIONS]


class _InitArgs(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    ]


_PTR_FN = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)
_ULONG_FN = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong)
_LOGIN_FN = ctypes.CFUNCTYPE(
    ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong
)


def rv_name(rv: int) -> str:
    return _RV_NAMES.get(rv, f"CKR 0x{rv:x}")


class Module:
    """A PKCS#11 module as loaded into this process (one per real file)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.call_lock = threading.Lock()
        self._pid = os.getpid()
        self.generation = 0
        self.initialized = False
        self.serialized = False
        self.active_conf: str | None = None
        # C_Login calls made by this process, for tests and diagnostics.
        self.login_calls = 0
        try:
            dll = ctypes.CDLL(path)
            get_list = dll.C_GetFunctionList
        except (OSError, AttributeError) as exc:
            raise TokenUnavailable(f"cannot load PKCS#11 module {path!r}: {exc}") from None
        get_list.restype = ctypes.c_ulong
        get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
        table = ctypes.POINTER(_FunctionList)()
        rv = get_list(ctypes.byref(table))
        if rv != CKR_OK or not table:
            raise TokenUnavailable(f"C_GetFunctionList of {path!r} failed: {rv_name(rv)}")
        self._dll = dll  # keeps the library mapped for the life of the process
        fl = table.contents
        self._c_initialize = _PTR_FN(fl.C_Initialize)
        self._c_finalize = _PTR_FN(fl.C_Finalize)
        self._c_close_all = _ULONG_FN(fl.C_CloseAllSessions)
        self._c_login = _LOGIN_FN(fl.C_Login)
        try:
            # Bypasses lib.__init__ on purpose, see the module docstring.
            self.lib: Any = cast(Any, _pkcs11.lib).__new__(_pkcs11.lib, path)
        except PKCS11Error as exc:
            raise TokenUnavailable(f"python-pkcs11 cannot load {path!r}: {exc}") from None

    def ready(self, conf: str | None) -> int | None:
        """The generation if the module is usable with ``conf`` as it is, else None."""
        if (
            self._pid == os.getpid()
            and self.initialized
            and (conf is None or conf == self.active_conf)
        ):
            return self.generation
        return None

    def ensure(self, conf: str | None) -> int:
        """Make the module usable with ``conf`` (a SoftHSM2 config); return its generation.

        Every Token remembers the generation its sessions were opened under;
        a different number means those sessions no longer exist.
        """
        generation = self.ready(conf)
        if generation is not None:
            return generation
        with self._lock:
            if self._pid != os.getpid():
                self._after_fork()
            if not self.initialized:
                self._initialize(conf)
            elif conf is not None and conf != self.active_conf:
                log.info("re-initialising %s for SOFTHSM2_CONF=%s", self.path, conf)
                self._finalize()
                self._initialize(conf)
            return self.generation

    def reinitialize(self) -> int:
        """C_Finalize + C_Initialize: every session of every Token on this module is gone.

        Returns the new generation. SoftHSM2 reads its token directory afresh.
        """
        with self._lock:
            if self.initialized:
                self._finalize()
            self._initialize(self.active_conf)
            return self.generation

    def _initialize(self, conf: str | None) -> None:
        if conf is not None:
            os.environ["SOFTHSM2_CONF"] = conf
        args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
        rv = self._c_initialize(ctypes.byref(args))
        serialized = False
        if rv == CKR_CANT_LOCK:
            rv = self._c_initialize(None)
            serialized = True
        elif rv == CKR_CRYPTOKI_ALREADY_INITIALIZED:
            log.warning("%s was initialised by someone else; serialising calls", self.path)
            rv, serialized = CKR_OK, True
        if rv != CKR_OK:
            raise TokenUnavailable(f"C_Initialize of {self.path!r} failed: {rv_name(rv)}")
        self.serialized = serialized
        self.initialized = True
        self.active_conf = conf
        self.generation += 1

    def _finalize(self) -> None:
        self.initialized = False
        self.generation += 1
        rv = self._c_finalize(None)
        if rv != CKR_OK:
            log.warning("C_Finalize of %s returned %s", self.path, rv_name(rv))

    def _after_fork(self) -> None:
        """Give the child its own module state without touching the parent's.

        A fork-aware module (SoftHSM2 with ``library.reset_on_fork``) has
        already dropped the inherited state and accepts C_Initialize. One that
        is not still holds a private copy of the parent's state; C_Finalize in
        the child only discards that copy, and is the only way to start fresh.
        Inherited session handles are never closed: the Python objects that
        hold them are simply dropped by their Tokens.
        """
        self._pid = os.getpid()
        if not self.initialized:
            return
        if self.active_conf is not None:
            os.environ["SOFTHSM2_CONF"] = self.active_conf
        args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
        rv = self._c_initialize(ctypes.byref(args))
        if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED:
            self._c_finalize(None)
            rv = self._c_initialize(ctypes.byref(args))
        if rv == CKR_CANT_LOCK:
            rv = self._c_initialize(None)
            self.serialized = True
        self.generation += 1
        if rv != CKR_OK:
            self.initialized = False
            raise TokenUnavailable(f"C_Initialize after fork failed: {rv_name(rv)}")

    def login(self, session_handle: int, pin: str) -> int:
        """C_Login as the user; returns the CKR code, ALREADY_LOGGED_IN counting as success."""
        data = pin.encode("utf-8")
        self.login_calls += 1
        rv = int(self._c_login(session_handle, CKU_USER, data, len(data)))
        return CKR_OK if rv == CKR_USER_ALREADY_LOGGED_IN else rv

    def close_all_sessions(self, slot_id: int) -> int:
        """C_CloseAllSessions, for tests that pull sessions away under a Token."""
        return int(self._c_close_all(slot_id))

    def guard(self) -> contextlib.AbstractContextManager[Any]:
        """Lock to hold around calls into the module when it is not thread-safe."""
        return self.call_lock if self.serialized else contextlib.nullcontext()

    def reset_locks_after_fork(self) -> None:
        # Another thread of the parent may have held these at the fork.
        self._lock = threading.RLock()
        self.call_lock = threading.Lock()


_registry: dict[str, Module] = {}
_registry_lock = threading.Lock()


def get_module(path: str) -> Module:
    """The Module for ``path``; symlinks to one file share one Module as they share one dlopen."""
    key = os.path.realpath(path)
    module = _registry.get(key)
    if module is not None:
        return module
    with _registry_lock:
        module = _registry.get(key)
        if module is None:
            module = Module(path)
            _registry[key] = module
        return module


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for module in _registry.values():
        module.reset_locks_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
