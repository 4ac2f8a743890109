"""Constants and helpers shared by the hsm tests (a unique name: tests/ has no packages)."""

from __future__ import annotations

import os
import subprocess

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from hsm import SignAlgorithm, TokenConfig

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


def pkcs11_tool_objects(config: TokenConfig, login: bool) -> list[dict[str, str]]:
    """What pkcs11-tool --list-objects shows: per object its kind ("Private Key Object"),
    the detail after the kind ("AES length 32") and its indented fields ("label", "Access", ...)."""
    cmd = ["pkcs11-tool", "--module", config.module, "--token-label", config.token_label, "--list-objects"]
    if login:
        cmd += ["--login", "--pin", config.pin]
    assert config.softhsm_conf is not None
    env = {**os.environ, "SOFTHSM2_CONF": config.softhsm_conf}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    objects: list[dict[str, str]] = []
    for line in out.splitlines():
        if line and not line[0].isspace():
            kind, _, detail = line.partition(";")
            objects.append({"kind": kind.strip(), "detail": detail.strip()})
        elif objects and ":" in line:
            key, _, value = line.strip().partition(":")
            objects[-1][key.strip()] = value.strip()
    return objects
