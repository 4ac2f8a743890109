"""Signing cryptography-built structures with a key that lives in the token.

See ca/der.py for why: the builder signs with a throw-away P-256 key (~40 µs),
we keep its to-be-signed bytes with the real AlgorithmIdentifier put in and
let the token sign those.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ca import der
from hsm import SignAlgorithm

# Anything that signs bytes the way X.509 wants them: hsm.KeySigner.
class Signer(Protocol):
    @property
    def algorithm(self) -> SignAlgorithm: ...

    def sign(self, data: bytes) -> bytes: ...


@lru_cache(maxsize=1)
def scratch_key() -> ec.EllipticCurvePrivateKey:
    # Never signs anything that leaves the process: its signatures are
    # discarded, only the TBS bytes it produced are kept.
    return ec.generate_private_key(ec.SECP256R1())


@lru_cache(maxsize=1)
def scratch_certificate() -> x509.Certificate:
    """A certificate for the scratch key: cryptography's OCSP builder insists
    the responder certificate matches the signing key; ca/ocsp.py then puts
    the real responder's id into the response data."""
    key = scratch_key()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "scratch")])
    start = datetime(2000, 1, 1, tzinfo=timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def tbs_certificate(builder: x509.CertificateBuilder, algorithm: SignAlgorithm) -> bytes:
    scratch = builder.sign(scratch_key(), hashes.SHA256())
    return der.tbs_certificate_with_algorithm(scratch.tbs_certificate_bytes, algorithm)


def tbs_crl(builder: x509.CertificateRevocationListBuilder, algorithm: SignAlgorithm) -> bytes:
    scratch = builder.sign(scratch_key(), hashes.SHA256())
    return der.tbs_crl_with_algorithm(scratch.tbs_certlist_bytes, algorithm)


def unsigned_certificate(tbs: bytes, algorithm: SignAlgorithm) -> bytes:
    """The certificate with a placeholder signature, for linting before signing."""
    return der.signed_structure(tbs, algorithm, b"\x00" * 64)


def sign_tbs(tbs: bytes, signer: Signer) -> bytes:
    """Certificate or CertificateList DER: tbs signed by the token."""
    return der.signed_structure(tbs, signer.algorithm, signer.sign(tbs))
