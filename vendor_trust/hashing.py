"""Salted hashes for the secrets we only need to check, never to read back
(EST passwords, one-time PINs), so that a copy of the database does not
hand them out.

Two schemes, chosen by the secret's strength:

* ``scrypt$ln=14,r=8,p=1$<salt>$<hash>`` for secrets a person could guess
  (one-time PINs): a stolen table must cost a guesser dearly. The
  parameters travel with the hash, so raising the cost later leaves old
  hashes checkable.
* ``sha256$<salt>$<hash>`` for secrets the server generated with at least
  128 random bits (EST passwords): nobody can search such a space, slow or
  fast, so scrypt would only cost the server ~35 ms of CPU per check (the
  whole of an EST Basic enrolment, bench/est.py) and hand anyone who sends
  bogus Basic headers a cheap way to burn it.

base64url without padding. Named hashing.py: a module called secrets.py here
would shadow the standard library's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from functools import lru_cache

SALT_BYTES = 16
HASH_BYTES = 32
# hashlib refuses n*r*128 above maxmem; 64 MiB leaves room up to ln=15, r=8
# while still bounding what a tampered hash string can make us allocate.
MAX_MEMORY = 64 * 1024 * 1024
MAX_LOG_N = 16


@dataclass(frozen=True)
class ScryptCost:
    log_n: int = 14  # n = 16384: ~16 MiB and ~50 ms per hash on one core
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if not (1 <= self.log_n <= MAX_LOG_N and 1 <= self.r <= 32 and 1 <= self.p <= 4):
            raise ValueError(f"scrypt cost out of range: {self}")
        if 128 * self.r * (1 << self.log_n) > MAX_MEMORY:
            raise ValueError(f"scrypt cost needs more than {MAX_MEMORY >> 20} MiB: {self}")


DEFAULT_COST = ScryptCost()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret: bytes, salt: bytes, cost: ScryptCost) -> bytes:
    return hashlib.scrypt(
        secret, salt=salt, n=1 << cost.log_n, r=cost.r, p=cost.p, maxmem=MAX_MEMORY, dklen=HASH_BYTES
    )


def hash_secret(secret: bytes, cost: ScryptCost = DEFAULT_COST) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(secret, salt, cost)
    return f"scrypt$ln={cost.log_n},r={cost.r},p={cost.p}${_b64(salt)}${_b64(digest)}"


def hash_random_secret(secret: bytes) -> str:
    """A fast salted hash, for secrets of at least 128 random bits only."""
    salt = os.urandom(SALT_BYTES)
    return f"sha256${_b64(salt)}${_b64(hashlib.sha256(salt + secret).digest())}"


def _parse(encoded: str) -> tuple[ScryptCost, bytes, bytes]:
    scheme, params, salt, digest = encoded.split("$")
    if scheme != "scrypt":
        raise ValueError(f"unknown hash scheme {scheme!r}")
    fields = dict(item.split("=", 1) for item in params.split(","))
    cost = ScryptCost(log_n=int(fields["ln"]), r=int(fields["r"]), p=int(fields["p"]))
    return cost, _unb64(salt), _unb64(digest)


def verify_secret(secret: bytes, encoded: str) -> bool:
    """True if secret hashes to encoded; the final comparison is constant-time."""
    if encoded.startswith("sha256$"):
        try:
            _, salt_text, digest_text = encoded.split("$")
            salt, expected = _unb64(salt_text), _unb64(digest_text)
        except ValueError:
            salt, expected = b"\0" * SALT_BYTES, b""
        return hmac.compare_digest(hashlib.sha256(salt + secret).digest(), expected)
    try:
        cost, salt, expected = _parse(encoded)
    except (ValueError, KeyError):
        # A damaged hash never matches; still spend the work so that a bad row
        # is not told apart by its timing.
        _scrypt(secret, b"\0" * SALT_BYTES, DEFAULT_COST)
        return False
    return hmac.compare_digest(_scrypt(secret, salt, cost), expected)


@lru_cache(maxsize=8)
def dummy_hash(cost: ScryptCost = DEFAULT_COST) -> str:
    """A hash of a random secret nobody knows, with the given cost: checking a
    secret for an unknown name against it costs what a real check costs."""
    return hash_secret(os.urandom(HASH_BYTES), cost)


@lru_cache(maxsize=1)
def dummy_random_secret_hash() -> str:
    """dummy_hash for hash_random_secret: an unknown name costs what a real one does."""
    return hash_random_secret(os.urandom(HASH_BYTES))
