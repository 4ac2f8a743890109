"""Enrolment credentials: shared secrets for MAC-protected CMP and EST passwords.

Each credential is bound to one device or one batch (and optionally a
profile), may expire and may be limited to a number of uses. What a database
copy alone reveals is nothing usable:

* a CMP MAC secret must be read back to check a PBM/PBMAC1 protection
  (RFC 4210 §5.1.3.1, RFC 9480 §2.7), so it is sealed under a key that never
  leaves the token (the `sealer`), with the reference as associated data so a
  sealed blob cannot be moved to another row;
* an EST password only needs checking (RFC 7030 §3.2.3, HTTP Basic), so it is
  stored as a salted scrypt hash.

Use limits hold under concurrency because a use is one conditional UPDATE
whose row count decides; nothing about a credential lives in process memory.
"""

from __future__ import annotations

import builtins
import functools
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy import Engine, bindparam, false, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from storage import db
from storage.db import now, utc
from vendor_trust.hashing import (
    dummy_random_secret_hash,
    hash_random_secret,
    verify_secret,
)
from vendor_trust.schema import credentials

CredentialKind = Literal["mac", "password"]
FailureReason = Literal["unknown", "wrong", "expired", "revoked", "used_up"]

# Domain separation: the token key behind the sealer may seal other things too.
AAD_PREFIX = b"ztpki vendor_trust credential\0"
MAC_SECRET_BYTES = 32
PASSWORD_BYTES = 18  # 144 bits, 24 characters


class Sealer(Protocol):
    """Authenticated encryption under a key held in the token."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def unseal(self, blob: bytes, aad: bytes) -> bytes: ...


class CredentialError(Exception):
    pass


class BadCredential(CredentialError):
    """The credential cannot be used. `reason` is for the audit log; a
    protocol answers every reason alike (bad_credential)."""

    def __init__(self, reason: FailureReason, reference: str) -> None:
        super().__init__(f"credential {reference!r}: {reason}")
        self.reason: FailureReason = reason
        self.reference = reference


class CredentialExists(CredentialError):
    pass


class CredentialNotFound(CredentialError):
    pass


class NoSealer(CredentialError):
    pass


@dataclass(frozen=True)
class CredentialInfo:
    reference: str  # the MAC reference (CMP senderKID) or the EST username
    kind: CredentialKind
    device_serial: str | None
    batch: str | None
    profile: str | None
    expires_at: datetime | None
    max_uses: int | None
    uses: int
    revoked: bool
    created_at: datetime
    last_used_at: datetime | None

    def failure(self, at: datetime) -> FailureReason | None:
        """Why the credential cannot be used at `at`, or None if it can."""
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= at:
            return "expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "used_up"
        return None


@dataclass(frozen=True)
class MacCredential:
    reference: str
    secret: bytes = field(repr=False)  # the PBM/PBMAC1 shared secret octets
    device_serial: str | None
    batch: str | None
    profile: str | None


_INFO_COLUMNS = (
    credentials.c.reference,
    credentials.c.kind,
    credentials.c.device_serial,
    credentials.c.batch,
    credentials.c.profile,
    credentials.c.expires_at,
    credentials.c.max_uses,
    credentials.c.uses,
    credentials.c.revoked,
    credentials.c.created_at,
    credentials.c.last_used_at,
)

# The statements every enrolment runs, built once: building a SQLAlchemy
# statement costs several times executing it (bench/README.md).
_SELECT_INFO = select(*_INFO_COLUMNS).where(credentials.c.reference == bindparam("reference"))
_SELECT_MAC = select(*_INFO_COLUMNS, credentials.c.sealed_secret).where(
    credentials.c.reference == bindparam("reference"), credentials.c.kind == "mac"
)
_USE_ONCE = (
    update(credentials)
    .where(
        credentials.c.reference == bindparam("b_reference"),
        credentials.c.revoked == false(),
        or_(credentials.c.max_uses.is_(None), credentials.c.uses < credentials.c.max_uses),
        or_(credentials.c.expires_at.is_(None), credentials.c.expires_at > bindparam("stamp")),
    )
    .values(uses=credentials.c.uses + 1, last_used_at=bindparam("stamp"))
    .returning(*_INFO_COLUMNS)
)


def _info(row: Any) -> CredentialInfo:
    return CredentialInfo(
        reference=row.reference,
        kind=row.kind,
        device_serial=row.device_serial,
        batch=row.batch,
        profile=row.profile,
        expires_at=utc(row.expires_at) if row.expires_at is not None else None,
        max_uses=row.max_uses,
        uses=row.uses,
        revoked=bool(row.revoked),
        created_at=utc(row.created_at),
        last_used_at=utc(row.last_used_at) if row.last_used_at is not None else None,
    )


def _aad(reference: str) -> bytes:
    return AAD_PREFIX + reference.encode("utf-8")


def _hash_input(username: str, password: str) -> bytes:
    # The username is hashed with the password so a hash copied onto
    # another row does not verify there.
    return username.encode("utf-8") + b"\0" + password.encode("utf-8")


def _check_text(name: str, value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    if not value or len(value) > limit or not value.isprintable() or value != value.strip():
        raise ValueError(f"{name}: give 1 to {limit} printable characters without surrounding spaces")
    return value


class Credentials:
    def __init__(self, engine: Engine, sealer: Sealer | None) -> None:
        self.engine = engine
        self.sealer = sealer
        # Unsealing is a token operation (~0.4 ms); a CMP exchange asks for the
        # same secret for the request and its certConf. The sealed bytes are
        # unique per credential (random nonce) and bound to the reference as
        # AAD, so they are a safe key; usability is still read from the row.
        self._unsealed = functools.lru_cache(maxsize=1024)(self._unseal)

    # -- creating -------------------------------------------------------------------

    def _insert(
        self,
        *,
        reference: str,
        kind: CredentialKind,
        device_serial: str | None,
        batch: str | None,
        profile: str | None,
        ttl: timedelta | None,
        max_uses: int | None,
        sealed_secret: bytes | None = None,
        password_hash: str | None = None,
    ) -> None:
        if (device_serial is None) == (batch is None):
            raise ValueError("bind the credential to one device or to one batch")
        if ttl is not None and ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        if max_uses is not None and max_uses < 1:
            raise ValueError("max_uses must be at least 1")
        stamp = now()
        try:
            with db.begin(self.engine) as conn:
                conn.execute(
                    insert(credentials).values(
                        reference=reference,
                        kind=kind,
                        device_serial=_check_text("device", device_serial, 128),
                        batch=_check_text("batch", batch, 64),
                        profile=_check_text("profile", profile, 64),
                        sealed_secret=sealed_secret,
                        password_hash=password_hash,
                        expires_at=stamp + ttl if ttl is not None else None,
                        max_uses=max_uses,
                        uses=0,
                        revoked=False,
                        created_at=stamp,
                    )
                )
        except IntegrityError:
            raise CredentialExists(f"a credential named {reference!r} exists already") from None

    def create_mac(
        self,
        *,
        device_serial: str | None = None,
        batch: str | None = None,
        profile: str | None = None,
        ttl: timedelta | None = None,
        max_uses: int | None = None,
    ) -> tuple[str, str]:
        """A new CMP shared secret: (reference, secret), the secret shown only now.

        The secret is 32 random octets in base64url (43 characters), a
        password-like string a client can carry as `openssl cmp -secret
        pass:...`; the PBM key is its UTF-8 bytes, and those are sealed.
        """
        if self.sealer is None:
            raise NoSealer("MAC credentials need the token's sealing key, and none is configured")
        reference = "mac-" + secrets.token_hex(8)
        secret = secrets.token_urlsafe(MAC_SECRET_BYTES)
        sealed = self.sealer.seal(secret.encode("ascii"), _aad(reference))
        self._insert(
            reference=reference, kind="mac", device_serial=device_serial, batch=batch, profile=profile,
            ttl=ttl, max_uses=max_uses, sealed_secret=sealed,
        )
        return reference, secret

    def create_password(
        self,
        *,
        username: str | None = None,
        device_serial: str | None = None,
        batch: str | None = None,
        profile: str | None = None,
        ttl: timedelta | None = None,
        max_uses: int | None = None,
    ) -> tuple[str, str]:
        """A new EST password: (username, password), the password shown only now."""
        if username is None:
            username = "est-" + secrets.token_hex(8)
        else:
            _check_text("username", username, 128)
            if ":" in username:
                raise ValueError("username: HTTP Basic usernames cannot contain ':' (RFC 7617 §2)")
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        self._insert(
            reference=username, kind="password", device_serial=device_serial, batch=batch, profile=profile,
            # 144 random bits (PASSWORD_BYTES): a fast hash is as safe as scrypt
            # here and keeps a Basic check cheap (vendor_trust/hashing.py).
            ttl=ttl, max_uses=max_uses, password_hash=hash_random_secret(_hash_input(username, password)),
        )
        return username, password

    # -- using ------------------------------------------------------------------------

    def info(self, reference: str) -> CredentialInfo | None:
        with db.connect(self.engine) as conn:
            row = conn.execute(_SELECT_INFO, {"reference": reference}).first()
        return _info(row) if row is not None else None

    def mac_secret(self, reference: str, *, allow_used_up: bool = False) -> MacCredential:
        """The shared secret behind a CMP senderKID, for checking the MAC. Does
        not use the credential up: call consume() once the request is accepted.
        allow_used_up: for the later messages of a transaction (certConf,
        pollReq) whose first message took the credential's last use.
        A sealer error (a tampered row, the wrong key) propagates: it is a
        system failure, not a bad credential."""
        with db.connect(self.engine) as conn:
            row = conn.execute(_SELECT_MAC, {"reference": reference}).first()
        if row is None:
            raise BadCredential("unknown", reference)
        info = _info(row)
        reason = info.failure(now())
        if reason is not None and not (reason == "used_up" and allow_used_up):
            raise BadCredential(reason, reference)
        if self.sealer is None:
            raise NoSealer("MAC credentials need the token's sealing key, and none is configured")
        secret = self._unsealed(bytes(row.sealed_secret), reference)
        return MacCredential(reference, secret, info.device_serial, info.batch, info.profile)

    def _unseal(self, sealed: bytes, reference: str) -> bytes:
        assert self.sealer is not None
        return self.sealer.unseal(sealed, _aad(reference))

    def _use(self, reference: str) -> CredentialInfo | None:
        """One use, atomically: the row after it, or None if none was left."""
        stamp = now()
        with db.begin(self.engine) as conn:
            row = conn.execute(_USE_ONCE, {"b_reference": reference, "stamp": stamp}).first()
        return _info(row) if row is not None else None

    def consume(self, reference: str) -> bool:
        """Use the credential once; False if it is unknown, revoked, expired or used up."""
        return self._use(reference) is not None

    def verify_password(self, username: str, password: str, *, allow_used_up: bool = False) -> CredentialInfo:
        """Check an EST password without using it, or raise BadCredential.

        An unknown username is checked against a dummy hash of the same
        scheme, so the answer takes as long as for a real one and timing does
        not tell which usernames exist (passwords stored by older versions
        as scrypt hashes still check, at scrypt's cost). allow_used_up: a
        retried request whose first try took the last use (the caller spends
        a use with consume() only for a new request).
        """
        with db.connect(self.engine) as conn:
            row = conn.execute(
                select(*_INFO_COLUMNS, credentials.c.password_hash).where(
                    credentials.c.reference == username, credentials.c.kind == "password"
                )
            ).first()
        encoded = row.password_hash if row is not None else dummy_random_secret_hash()
        matches = verify_secret(_hash_input(username, password), encoded)
        if row is None:
            raise BadCredential("unknown", username)
        if not matches:
            raise BadCredential("wrong", username)
        info = _info(row)
        reason = info.failure(now())
        if reason is not None and not (reason == "used_up" and allow_used_up):
            raise BadCredential(reason, username)
        return info

    def check_password(self, username: str, password: str) -> CredentialInfo:
        """Check an EST password and use it once (atomically), or raise BadCredential."""
        self.verify_password(username, password, allow_used_up=True)
        used = self._use(username)
        if used is None:
            current = self.info(username)
            raise BadCredential((current.failure(now()) if current else None) or "unknown", username)
        return used

    # -- administration -----------------------------------------------------------------

    def revoke(self, reference: str) -> None:
        with db.begin(self.engine) as conn:
            result = conn.execute(
                update(credentials).where(credentials.c.reference == reference).values(revoked=True)
            )
        if result.rowcount == 0:
            raise CredentialNotFound(f"no credential {reference!r}")

    def list(self, *, device_serial: str | None = None, batch: str | None = None) -> builtins.list[CredentialInfo]:
        query = select(*_INFO_COLUMNS).order_by(credentials.c.id)
        if device_serial is not None:
            query = query.where(credentials.c.device_serial == device_serial)
        if batch is not None:
            query = query.where(credentials.c.batch == batch)
        with db.connect(self.engine) as conn:
            return [_info(row) for row in conn.execute(query)]
