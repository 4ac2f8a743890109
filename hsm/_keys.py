"""Translation between hsm's key/algorithm vocabulary and PKCS#11 objects."""

from __future__ import annotations

import hashlib
import traceback
from dataclasses import dataclass
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, Mechanism, MechanismFlag, ObjectClass

from .algorithms import KeyInfo, KeyType, SignAlgorithm
from .errors import HsmError, KeyNotFound

# DER of the named-curve OIDs as they appear in CKA_EC_PARAMS.
_P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")
_P384_PARAMS = bytes.fromhex("06052b81040022")
_EC_PARAMS = {KeyType.EC_P256: _P256_PARAMS, KeyType.EC_P384: _P384_PARAMS}
_EC_CURVES: dict[bytes, tuple[KeyType, ec.EllipticCurve, int]] = {
    _P256_PARAMS: (KeyType.EC_P256, ec.SECP256R1(), 32),
    _P384_PARAMS: (KeyType.EC_P384, ec.SECP384R1(), 48),
}
_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}
_RSA_TYPES = {bits: kt for kt, bits in _RSA_BITS.items()}
_KEY_CLASSES = (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY)

_RSA_MECHANISMS: dict[SignAlgorithm, tuple[Mechanism, Any]] = {
    SignAlgorithm.RSA_PKCS1_SHA256: (Mechanism.SHA256_RSA_PKCS, None),
    SignAlgorithm.RSA_PKCS1_SHA384: (Mechanism.SHA384_RSA_PKCS, None),
    # python-pkcs11 would default every PSS mechanism to SHA-1/MGF1-SHA1/20,
    # so the parameters must always be spelled out.
    SignAlgorithm.RSA_PSS_SHA256: (Mechanism.SHA256_RSA_PKCS_PSS, (Mechanism.SHA256, MGF.SHA256, 32)),
    SignAlgorithm.RSA_PSS_SHA384: (Mechanism.SHA384_RSA_PKCS_PSS, (Mechanism.SHA384, MGF.SHA384, 48)),
}


@dataclass
class KeyObjects:
    """The PKCS#11 objects of one key pair, bound to one session."""

    private: pkcs11.PrivateKey
    public: pkcs11.PublicKey | None
    info: KeyInfo


def check_label(label: str) -> None:
    if not isinstance(label, str) or not label:
        raise HsmError("a key label must be a non-empty string")


def check_fits(algorithm: SignAlgorithm, info: KeyInfo) -> None:
    if not algorithm.fits(info.key_type):
        raise HsmError(
            f"algorithm {algorithm.value} cannot be used with key {info.label!r} ({info.key_type.value})"
        )


def keypair_templates(
    key_type: KeyType, label: str, key_id: bytes
) -> tuple[pkcs11.KeyType, int | None, MechanismFlag, dict[Attribute, Any], dict[Attribute, Any]]:
    """(pkcs11 key type, RSA bits, capabilities, public template, private template)."""
    common = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id}
    public: dict[Attribute, Any] = {
        **common,
        Attribute.PRIVATE: False,
        Attribute.VERIFY: True,
        Attribute.WRAP: False,
    }
    private: dict[Attribute, Any] = {
        **common,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }
    if key_type.is_ec:
        public[Attribute.EC_PARAMS] = _EC_PARAMS[key_type]
        public[Attribute.ENCRYPT] = False
        private[Attribute.DECRYPT] = False
        return pkcs11.KeyType.EC, None, MechanismFlag.SIGN | MechanismFlag.VERIFY, public, private
    public[Attribute.ENCRYPT] = True
    private[Attribute.DECRYPT] = True
    caps = MechanismFlag.SIGN | MechanismFlag.VERIFY | MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT
    return pkcs11.KeyType.RSA, _RSA_BITS[key_type], caps, public, private


def key_info(label: str, private: pkcs11.PrivateKey) -> KeyInfo | None:
    """KeyInfo of a private key object, or None if its type is not one hsm handles."""
    attrs = private.get_attributes(
        [Attribute.KEY_TYPE, Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.PRIVATE]
    )
    kt = attrs[Attribute.KEY_TYPE]
    key_type: KeyType | None = None
    if kt == pkcs11.KeyType.EC:
        curve = _EC_CURVES.get(bytes(private[Attribute.EC_PARAMS]))
        key_type = curve[0] if curve else None
    elif kt == pkcs11.KeyType.RSA:
        bits = int.from_bytes(bytes(private[Attribute.MODULUS]), "big").bit_length()
        key_type = _RSA_TYPES.get(bits)
    if key_type is None:
        return None
    return KeyInfo(
        label=label,
        key_type=key_type,
        sensitive=bool(attrs[Attribute.SENSITIVE]),
        extractable=bool(attrs[Attribute.EXTRACTABLE]),
        private=bool(attrs[Attribute.PRIVATE]),
    )


def search(session: pkcs11.Session, attrs: dict[Attribute, Any]) -> list[pkcs11.Object]:
    """All objects matching ``attrs``; the search always runs to its end.

    python-pkcs11 marks a search active before C_FindObjectsInit and does not
    undo that when the call fails: the search object keeps the session's
    operation lock and calls C_FindObjectsFinal whenever it is collected,
    possibly much later, on a handle that may by then belong to another
    session. Clearing the traceback's frames collects it here and now.
    """
    try:
        return list(session.get_objects(attrs))
    except p11e.PKCS11Error as exc:
        traceback.clear_frames(exc.__traceback__)
        raise


def find_key(session: pkcs11.Session, label: str) -> KeyObjects | None:
    """Look a key pair up by label; None if there is no private key with that label."""
    privates: list[pkcs11.PrivateKey] = []
    public: pkcs11.PublicKey | None = None
    found = search(session, {Attribute.LABEL: label})
    for obj in found:
        if isinstance(obj, pkcs11.PrivateKey):
            privates.append(obj)
        elif isinstance(obj, pkcs11.PublicKey):
            public = obj
    if not privates:
        if any(isinstance(obj, pkcs11.SecretKey) for obj in found):
            raise KeyNotFound(f"label {label!r} names a secret (sealing) key, not a signing key")
        return None
    if len(privates) > 1:
        raise HsmError(f"label {label!r} names {len(privates)} private keys on the token")
    info = key_info(label, privates[0])
    if info is None:
        raise HsmError(f"key {label!r} has a key type or size hsm does not support")
    return KeyObjects(private=privates[0], public=public, info=info)


def label_taken(session: pkcs11.Session, label: str, *, any_class: bool = False) -> bool:
    """Whether a key (or, with ``any_class``, any object) carries ``label``.

    A certificate may share its key's label, so key generation only looks at keys.
    """
    found = search(session, {Attribute.LABEL: label})
    if any_class:
        return bool(found)
    return any(o[Attribute.CLASS] in _KEY_CLASSES for o in found)


def private_key_labels(session: pkcs11.Session) -> list[tuple[str, pkcs11.PrivateKey]]:
    found = search(session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY})
    return [(str(o[Attribute.LABEL]), o) for o in found if isinstance(o, pkcs11.PrivateKey)]


def public_key(objects: KeyObjects) -> PublicKeyTypes:
    """Build a cryptography public key from the token's public key object."""
    pub = objects.public
    label = objects.info.label
    if pub is None:
        raise HsmError(f"key {label!r} has no public key object on the token")
    if objects.info.key_type.is_rsa:
        n = int.from_bytes(bytes(pub[Attribute.MODULUS]), "big")
        e = int.from_bytes(bytes(pub[Attribute.PUBLIC_EXPONENT]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    _, curve, size = _EC_CURVES[bytes(pub[Attribute.EC_PARAMS])]
    point = _unwrap_ec_point(bytes(pub[Attribute.EC_POINT]), size)
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError:
        raise HsmError(f"key {label!r} has an invalid CKA_EC_POINT") from None


def _unwrap_ec_point(value: bytes, size: int) -> bytes:
    # PKCS#11 says CKA_EC_POINT is a DER OCTET STRING, but some modules store
    # the bare point, which starts with 0x04 too; the length tells them apart.
    if len(value) == 2 * size + 1:
        return value
    if len(value) >= 2 and value[0] == 0x04:
        if value[1] < 0x80:
            body = value[2:]
        else:
            n = value[1] & 0x7F
            body = value[2 + n :]
        return body
    return value


def sign(key: pkcs11.PrivateKey, algorithm: SignAlgorithm, data: bytes) -> bytes:
    """Signature over ``data`` in the form X.509 and CMS carry it."""
    if not isinstance(key, pkcs11.SignMixin):
        raise HsmError("the private key does not allow signing (CKA_SIGN is false)")
    if algorithm.is_ecdsa:
        # SoftHSM2 2.6 lacks CKM_ECDSA_SHA256/384, so hash here and sign the digest.
        digest = hashlib.new(algorithm.hash_name, data).digest()
        raw = key.sign(digest, mechanism=Mechanism.ECDSA)
        r = int.from_bytes(raw[: len(raw) // 2], "big")
        s = int.from_bytes(raw[len(raw) // 2 :], "big")
        return encode_dss_signature(r, s)
    mechanism, param = _RSA_MECHANISMS[algorithm]
    return bytes(key.sign(data, mechanism=mechanism, mechanism_param=param))


def decrypt(key: pkcs11.PrivateKey, ciphertext: bytes) -> bytes:
    if not isinstance(key, pkcs11.DecryptMixin):
        raise HsmError("the private key does not allow decryption (CKA_DECRYPT is false)")
    plain = key.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS)
    assert isinstance(plain, bytes)  # a bytes input never yields the streaming form
    return plain
