"""Secret (AES) keys in the token and the sealed-blob format built on them.

Sealing is AES-256-GCM computed by the token (``CKM_AES_GCM``, single-part
``C_Encrypt``/``C_Decrypt``), so the key never leaves it. A sealed blob is::

    version (1 byte, 0x01) || IV (12 bytes) || ciphertext || tag (16 bytes)

The IV comes from ``os.urandom`` for every seal, not from the token: some
tokens generate GCM IVs themselves and ignore or overwrite the caller's, and
a random 96-bit IV keeps the usual bound (far below 2**32 seals per key) easy
to meet for enrolment secrets. The additional authenticated data given to
GCM is the version byte followed by the caller's ``aad``, so the header is
authenticated too and a later format cannot be passed off as this one.

SoftHSM2 2.6.1 (OpenSSL backend) implements single-part GCM with AAD as the
standard specifies: its output equals ``cryptography``'s ``AESGCM`` for the
same key, IV and AAD. It reports a failed tag check as ``CKR_GENERAL_ERROR``
(a token following PKCS#11 3.0 says ``CKR_ENCRYPTED_DATA_INVALID``); both,
and the other answers that can only mean "this blob does not authenticate",
become :class:`SealError`. ``CKR_GENERAL_ERROR`` is also SoftHSM2's answer
after it read a token file that another process was rewriting, so that one
is checked first: the blob is tried once more, then the key must seal and
unseal a random canary; only if it can is the blob declared bad. A failing
canary, like every session-loss error, passes through untouched, so that
``Token._run`` can recover from it as for signing.
"""

from __future__ import annotations

import os
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11.mechanisms import GCMParams

from ._keys import search
from .errors import HsmError, KeyNotFound, SealError

VERSION_GCM = 0x01
IV_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
_HEADER = bytes([VERSION_GCM])
OVERHEAD = len(_HEADER) + IV_BYTES + TAG_BYTES

# What a token may answer when a GCM tag does not verify.
_AUTH_FAILURES: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.GeneralError,
    p11e.FunctionFailed,
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
)


def secret_key_template(label: str, key_id: bytes) -> dict[Attribute, Any]:
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.LABEL: label,
        Attribute.ID: key_id,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.ENCRYPT: True,
        Attribute.DECRYPT: True,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }


def generate(session: pkcs11.Session, label: str, key_id: bytes) -> None:
    """Generate an AES-256 key that never leaves the token."""
    session.generate_key(
        pkcs11.KeyType.AES, KEY_BYTES * 8, store=True,
        capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
        template=secret_key_template(label, key_id),
    )


def find_secret_key(session: pkcs11.Session, label: str) -> pkcs11.SecretKey | None:
    """The AES-256 key labelled ``label``; None if there is no secret key with that label."""
    found = search(session, {Attribute.LABEL: label})
    secrets = [o for o in found if isinstance(o, pkcs11.SecretKey)]
    if not secrets:
        if any(isinstance(o, pkcs11.PrivateKey) for o in found):
            raise KeyNotFound(f"label {label!r} names a signing key, not a secret key")
        return None
    if len(secrets) > 1:
        raise HsmError(f"label {label!r} names {len(secrets)} secret keys on the token")
    key = secrets[0]
    attrs = key.get_attributes([Attribute.KEY_TYPE, Attribute.VALUE_LEN])
    if attrs[Attribute.KEY_TYPE] != pkcs11.KeyType.AES or attrs[Attribute.VALUE_LEN] != KEY_BYTES:
        raise HsmError(f"secret key {label!r} is not an AES-256 key")
    return key


def labels(session: pkcs11.Session) -> list[str]:
    found = search(session, {Attribute.CLASS: ObjectClass.SECRET_KEY})
    return sorted({str(o[Attribute.LABEL]) for o in found} - {""})


def seal(key: pkcs11.SecretKey, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM in the token under a fresh random IV; returns the blob."""
    if not isinstance(key, pkcs11.EncryptMixin):
        raise HsmError("the secret key does not allow encryption (CKA_ENCRYPT is false)")
    iv = os.urandom(IV_BYTES)
    params = GCMParams(iv, _HEADER + aad, TAG_BYTES * 8)
    sealed = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    assert isinstance(sealed, bytes)  # a bytes input never yields the streaming form
    if len(sealed) != len(plaintext) + TAG_BYTES:
        raise HsmError("the token returned AES-GCM output of an unexpected length")
    return _HEADER + iv + sealed


def unseal(key: pkcs11.SecretKey, blob: bytes, aad: bytes) -> bytes:
    """Reverse :func:`seal`; SealError unless the blob authenticates under key and aad."""
    if not isinstance(key, pkcs11.DecryptMixin):
        raise HsmError("the secret key does not allow decryption (CKA_DECRYPT is false)")
    if len(blob) < OVERHEAD:
        raise SealError(f"sealed blob too short ({len(blob)} bytes, at least {OVERHEAD} needed)")
    if blob[0] != VERSION_GCM:
        raise SealError(f"sealed blob has unknown format version {blob[0]}")
    iv, body = blob[1 : 1 + IV_BYTES], blob[1 + IV_BYTES :]
    params = GCMParams(iv, _HEADER + aad, TAG_BYTES * 8)
    plain, ambiguous = _decrypt(key, body, params)
    if plain is None and ambiguous:
        # CKR_GENERAL_ERROR is also what SoftHSM2 answers when it read a token
        # file another process was rewriting. That passes: try once more, and
        # if the key cannot even open a blob of its own (a PKCS11Error escapes
        # for Token._run to recover from), the blob is not what is wrong.
        plain, _ = _decrypt(key, body, params)
        if plain is None:
            _check_round_trip(key)
    # Raised outside the except block, so that no pkcs11 exception rides along.
    if plain is None:
        raise SealError(
            "sealed blob does not authenticate: it was altered, or sealed under "
            "another key or with other associated data"
        )
    if len(plain) != len(body) - TAG_BYTES:
        raise HsmError("the token returned AES-GCM output of an unexpected length")
    return plain


def _decrypt(key: pkcs11.DecryptMixin, body: bytes, params: GCMParams) -> tuple[bytes | None, bool]:
    """(plaintext, or None if the token refused the blob; whether its refusal was CKR_GENERAL_ERROR)."""
    try:
        plain = key.decrypt(body, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    except _AUTH_FAILURES as exc:
        return None, isinstance(exc, p11e.GeneralError)
    assert isinstance(plain, bytes)  # a bytes input never yields the streaming form
    return plain, False


def _check_round_trip(key: pkcs11.DecryptMixin) -> None:
    """Seal and unseal a random canary; the token's error if that fails."""
    if not isinstance(key, pkcs11.EncryptMixin):
        return
    canary = os.urandom(16)
    params = GCMParams(os.urandom(IV_BYTES), _HEADER, TAG_BYTES * 8)
    sealed = key.encrypt(canary, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    if key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params) != canary:
        raise HsmError("the token's AES-GCM does not round-trip")
