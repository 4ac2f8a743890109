"""Constants and helpers shared by the hsm tests (a unique name: tests/ has no packages)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from hsm import SignAlgorithm

SO_PIN = "so-pin-5678"
USER_PIN = "user-pin-1234"
LABEL = "test-ca"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}


def verify(public: PublicKeyTypes, algorithm: SignAlgorithm, signature: bytes, data: bytes) -> None:
    """Verify with cryptography; raises InvalidSignature."""
    digest = _HASHES[algorithm.hash_name]()
    if algorithm.is_ecdsa:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, data, ec.ECDSA(digest))
    elif algorithm.is_pss:
        assert isinstance(public, rsa.RSAPublicKey)
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        public.verify(signature, data, pss, digest)
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, data, padding.PKCS1v15(), digest)
