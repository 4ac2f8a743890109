"""Key types and signature algorithms, named the way the CLI spells them."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class KeyType(str, enum.Enum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @property
    def is_ec(self) -> bool:
        return self in (KeyType.EC_P256, KeyType.EC_P384)

    @property
    def is_rsa(self) -> bool:
        return not self.is_ec


class SignAlgorithm(str, enum.Enum):
    ECDSA_SHA256 = "ecdsa-sha256"
    ECDSA_SHA384 = "ecdsa-sha384"
    RSA_PKCS1_SHA256 = "rsa-pkcs1-sha256"
    RSA_PKCS1_SHA384 = "rsa-pkcs1-sha384"
    # PSS always uses MGF1 with the message hash and a salt as long as the hash,
    # the only parameter set the CA/Browser and IETF profiles allow.
    RSA_PSS_SHA256 = "rsa-pss-sha256"
    RSA_PSS_SHA384 = "rsa-pss-sha384"

    @property
    def is_ecdsa(self) -> bool:
        return self in (SignAlgorithm.ECDSA_SHA256, SignAlgorithm.ECDSA_SHA384)

    @property
    def is_pss(self) -> bool:
        return self in (SignAlgorithm.RSA_PSS_SHA256, SignAlgorithm.RSA_PSS_SHA384)

    @property
    def hash_name(self) -> str:
        """hashlib name of the message digest."""
        return "sha384" if self.value.endswith("384") else "sha256"

    def fits(self, key_type: KeyType) -> bool:
        return self.is_ecdsa == key_type.is_ec


_DEFAULTS: dict[KeyType, SignAlgorithm] = {
    KeyType.EC_P256: SignAlgorithm.ECDSA_SHA256,
    KeyType.EC_P384: SignAlgorithm.ECDSA_SHA384,
    KeyType.RSA_2048: SignAlgorithm.RSA_PKCS1_SHA256,
    KeyType.RSA_3072: SignAlgorithm.RSA_PKCS1_SHA256,
    KeyType.RSA_4096: SignAlgorithm.RSA_PKCS1_SHA256,
}


def default_sign_algorithm(key_type: KeyType) -> SignAlgorithm:
    return _DEFAULTS[KeyType(key_type)]


@dataclass(frozen=True)
class KeyInfo:
    label: str
    key_type: KeyType
    sensitive: bool
    extractable: bool
    private: bool
