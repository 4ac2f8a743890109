"""What the rest of ztpki holds on to: one token key bound to one use.

Both classes are thin: every call goes through their token (:class:`hsm.token.Token`), so they
inherit its session pool, recovery and fork safety, and they can be built at
start-up without touching the token.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from .algorithms import KeyType, SignAlgorithm
from .errors import HsmError


class TokenOperations(Protocol):
    """What the handles call on their token (hsm/token.py's Token). A protocol
    here rather than an import of Token, so that token.py, which builds the
    handles, is the only one of the two that imports the other."""

    def sign(self, label: str, data: bytes, algorithm: SignAlgorithm) -> bytes: ...

    def public_key(self, label: str) -> PublicKeyTypes: ...

    def seal(self, label: str, plaintext: bytes, aad: bytes = b"") -> bytes: ...

    def unseal(self, label: str, blob: bytes, aad: bytes = b"") -> bytes: ...


class KeySigner:
    """One key plus one algorithm: what ca/ and the protocols hold on to."""

    def __init__(self, token: TokenOperations, label: str, algorithm: SignAlgorithm, key_type: KeyType) -> None:
        self.token = token
        self.label = label
        self.algorithm = algorithm
        self.key_type = key_type
        self._public_key: PublicKeyTypes | None = None

    def __repr__(self) -> str:
        return f"KeySigner(label={self.label!r}, algorithm={self.algorithm.value}, key_type={self.key_type.value})"

    def sign(self, data: bytes) -> bytes:
        return self.token.sign(self.label, data, self.algorithm)

    def public_key(self) -> PublicKeyTypes:
        if self._public_key is None:
            self._public_key = self.token.public_key(self.label)
        return self._public_key


class TokenSealer:
    """One secret key of one token: seals what vendor_trust stores (CMP MAC secrets).

    ``aad`` is authenticated but not encrypted, and must be given again to
    unseal; passing the database row's identity (e.g. the credential
    reference) stops a sealed secret from being copied to another row.
    """

    def __init__(self, token: TokenOperations, label: str) -> None:
        if not isinstance(label, str) or not label:
            raise HsmError("a key label must be a non-empty string")
        self.token = token
        self.label = label

    def __repr__(self) -> str:
        return f"TokenSealer(label={self.label!r}, token={self.token!r})"

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        return self.token.seal(self.label, plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes:
        """The plaintext; SealError if the blob was altered or belongs to another key or aad."""
        return self.token.unseal(self.label, blob, aad)
