"""Exception hierarchy of the hsm package and the mapping from python-pkcs11 errors.

Nothing raised from hsm's public API is a pkcs11 type: every python-pkcs11
exception is translated here, and messages are built from constant text,
labels and PKCS#11 error names only, so a PIN can never end up in one.
"""

from __future__ import annotations

import pkcs11.exceptions as p11e


class HsmError(Exception):
    """Base of every error raised by hsm."""


class HsmConfigError(HsmError, ValueError):
    """A token configuration (URI, PIN source, module path) is unusable."""


class TokenUnavailable(HsmError):
    """Module cannot load, token not found, login failed or the device went away."""


class KeyNotFound(HsmError):
    """No key with the requested label exists on the token."""


class KeyExists(HsmError):
    """A key with the requested label exists already."""


class SealError(HsmError):
    """A sealed blob is malformed or does not authenticate (altered, other key, other aad)."""


# Errors after which the session, the login state or the whole module state
# must be considered gone; the operation is worth one retry on fresh sessions.
# Stale object handles are included because another process may have deleted
# and recreated a key, which only a fresh lookup notices.
_LOSS: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.UserNotLoggedIn,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
)

# Errors that say "the token cannot be used", as opposed to "this request is wrong".
_UNAVAILABLE: tuple[type[p11e.PKCS11Error], ...] = _LOSS + (
    p11e.NoSuchToken,
    p11e.MultipleTokensReturned,
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinExpired,
    p11e.PinLocked,
    p11e.UserPinNotInitialized,
    p11e.SessionCount,
    p11e.DeviceMemory,
)


def is_session_loss(exc: BaseException) -> bool:
    if isinstance(exc, _LOSS):
        return True
    # python-pkcs11 has no class for CKR_CRYPTOKI_NOT_INITIALIZED: it raises a
    # bare PKCS11Error whose text is the only thing that identifies it.
    return type(exc) is p11e.PKCS11Error and "not initialized" in str(exc)


def error_name(exc: BaseException) -> str:
    if type(exc) is p11e.PKCS11Error and "not initialized" in str(exc):
        return "CryptokiNotInitialized"
    return type(exc).__name__


def translate(exc: p11e.PKCS11Error, what: str) -> HsmError:
    """Turn a python-pkcs11 exception into the matching HsmError subclass."""
    name = error_name(exc)
    if isinstance(exc, p11e.NoSuchKey):
        return KeyNotFound(f"{what}: no such key")
    if isinstance(exc, _UNAVAILABLE) or is_session_loss(exc):
        return TokenUnavailable(f"{what}: token unavailable ({name})")
    return HsmError(f"{what}: {name}")
