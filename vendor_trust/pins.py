"""One-time enrolment PINs (flow F4: the SCEP challengePassword, RFC 8894 §2.2).

A PIN is random, bound to one device, expires, is accepted once, and is
locked after a few wrong tries. Only a salted scrypt hash is stored (the
device serial is hashed with it, so a hash copied to another device's row
does not verify there). A device has at most one live PIN: its newest;
creating a new one revokes the old.

Single use and the failure count hold with many workers because each is one
conditional UPDATE on the PIN's row whose row count decides; the hash is
checked outside any transaction because it takes tens of milliseconds.
"""

from __future__ import annotations

import builtins
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NoReturn

from sqlalchemy import Engine, case, insert, select, update

from storage import db
from storage.db import now, utc
from vendor_trust.hashing import (
    DEFAULT_COST,
    ScryptCost,
    dummy_hash,
    hash_secret,
    verify_secret,
)
from vendor_trust.schema import pins

PinState = Literal["active", "used", "locked", "revoked"]
RejectReason = Literal["no_pin", "wrong", "expired", "used", "locked", "revoked"]

# Crockford's base32: no I, L, O or U, so what is read aloud or typed from a
# label is what was printed; 12 characters carry 60 bits.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PIN_LENGTH = 12
MAX_FAILURES = 5
DEFAULT_TTL = timedelta(days=7)
_TYPED = str.maketrans({"O": "0", "I": "1", "L": "1", "-": None, " ": None})
_LONGEST_INPUT = 256  # bounds the hashing work a caller can ask for


class PinRejected(Exception):
    """`reason` is for the audit log; a protocol answers every reason alike."""

    def __init__(self, reason: RejectReason, *, locked: bool = False) -> None:
        super().__init__(f"PIN rejected: {reason}" + (" (now locked)" if locked else ""))
        self.reason: RejectReason = reason
        self.locked = locked  # this wrong try was the one that locked the PIN


@dataclass(frozen=True)
class PinInfo:
    id: int
    device_serial: str
    state: PinState
    failures: int
    expires_at: datetime
    created_at: datetime
    used_at: datetime | None

    def shown_state(self, at: datetime) -> str:
        """The state an admin wants to see: an active PIN past its time is 'expired'."""
        return "expired" if self.state == "active" and self.expires_at <= at else self.state


def normalise_pin(text: str) -> str:
    """What was typed -> the PIN: upper case, separators dropped, O/I/L read as 0/1."""
    return text[:_LONGEST_INPUT].upper().translate(_TYPED)


def format_pin(pin: str) -> str:
    """'ABCD1234EFGH' -> 'ABCD-1234-EFGH' for reading aloud and printing."""
    return "-".join(pin[i : i + 4] for i in range(0, len(pin), 4))


def _hash_input(device_serial: str, pin: str) -> bytes:
    return device_serial.encode("utf-8") + b"\0" + pin.encode("ascii", "replace")


def _pin_info(row: Any) -> PinInfo:
    return PinInfo(
        id=row.id,
        device_serial=row.device_serial,
        state=row.state,
        failures=row.failures,
        expires_at=utc(row.expires_at),
        created_at=utc(row.created_at),
        used_at=utc(row.used_at) if row.used_at is not None else None,
    )


_INFO_COLUMNS = (
    pins.c.id,
    pins.c.device_serial,
    pins.c.state,
    pins.c.failures,
    pins.c.expires_at,
    pins.c.created_at,
    pins.c.used_at,
)


class Pins:
    def __init__(self, engine: Engine, *, cost: ScryptCost = DEFAULT_COST, max_failures: int = MAX_FAILURES) -> None:
        self.engine = engine
        self.cost = cost
        self.max_failures = max_failures

    def create(self, device_serial: str, ttl: timedelta = DEFAULT_TTL) -> str:
        """A new PIN for the device (grouped for reading), shown only now."""
        if not device_serial or len(device_serial) > 128 or not device_serial.isprintable():
            raise ValueError("device serial: give 1 to 128 printable characters")
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        pin = "".join(secrets.choice(ALPHABET) for _ in range(PIN_LENGTH))
        pin_hash = hash_secret(_hash_input(device_serial, pin), self.cost)
        stamp = now()
        with db.begin(self.engine) as conn:
            conn.execute(
                update(pins)
                .where(pins.c.device_serial == device_serial, pins.c.state == "active")
                .values(state="revoked")
            )
            conn.execute(
                insert(pins).values(
                    device_serial=device_serial,
                    pin_hash=pin_hash,
                    state="active",
                    failures=0,
                    expires_at=stamp + ttl,
                    created_at=stamp,
                )
            )
        return format_pin(pin)

    def _latest(self, device_serial: str) -> Any:
        with db.connect(self.engine) as conn:
            return conn.execute(
                select(*_INFO_COLUMNS, pins.c.pin_hash)
                .where(pins.c.device_serial == device_serial)
                .order_by(pins.c.id.desc())
                .limit(1)
            ).first()

    def _reason_now(self, pin_id: int) -> RejectReason:
        """Why a conditional update on this PIN found nothing to change."""
        with db.connect(self.engine) as conn:
            row = conn.execute(select(*_INFO_COLUMNS).where(pins.c.id == pin_id)).first()
        if row is None:
            return "no_pin"
        state: str = row.state
        if state in ("used", "locked", "revoked"):
            return state  # type: ignore[return-value]
        return "expired"

    def redeem(self, device_serial: str, pin: str) -> None:
        """Accept the device's PIN once, or raise PinRejected.

        The hash is checked whatever the PIN's state (against a dummy hash
        when the device has none) so the time taken does not depend on it.
        """
        row = self._latest(device_serial)
        encoded = row.pin_hash if row is not None else dummy_hash(self.cost)
        matches = verify_secret(_hash_input(device_serial, normalise_pin(pin)), encoded)
        if row is None:
            raise PinRejected("no_pin")
        if row.state != "active":
            raise PinRejected(row.state)
        stamp = now()
        if utc(row.expires_at) <= stamp:
            raise PinRejected("expired")
        if not matches:
            self._count_failure(row.id)
        with db.begin(self.engine) as conn:
            used = conn.execute(
                update(pins)
                .where(pins.c.id == row.id, pins.c.state == "active", pins.c.expires_at > stamp)
                .values(state="used", used_at=stamp)
            ).rowcount
        if used != 1:  # another worker redeemed, revoked or locked it first
            raise PinRejected(self._reason_now(row.id))

    def _count_failure(self, pin_id: int) -> NoReturn:
        with db.begin(self.engine) as conn:
            state = conn.execute(
                update(pins)
                .where(pins.c.id == pin_id, pins.c.state == "active")
                .values(
                    failures=pins.c.failures + 1,
                    # SET expressions see the row before the update, on
                    # SQLite and PostgreSQL alike.
                    state=case((pins.c.failures + 1 >= self.max_failures, "locked"), else_=pins.c.state),
                )
                .returning(pins.c.state)
            ).scalar()
        if state is None:  # no longer active: report what it became
            raise PinRejected(self._reason_now(pin_id))
        raise PinRejected("wrong", locked=state == "locked")

    def list(self, device_serial: str | None = None) -> builtins.list[PinInfo]:
        query = select(*_INFO_COLUMNS).order_by(pins.c.id)
        if device_serial is not None:
            query = query.where(pins.c.device_serial == device_serial)
        with db.connect(self.engine) as conn:
            return [_pin_info(row) for row in conn.execute(query)]

    def revoke(self, device_serial: str | None = None, *, pin_id: int | None = None) -> int:
        """Revoke the live PIN of a device, or one PIN by id; how many were revoked."""
        if (device_serial is None) == (pin_id is None):
            raise ValueError("revoke needs a device serial or a PIN id")
        query = update(pins).where(pins.c.state == "active")
        if device_serial is not None:
            query = query.where(pins.c.device_serial == device_serial)
        else:
            query = query.where(pins.c.id == pin_id)
        with db.begin(self.engine) as conn:
            return int(conn.execute(query.values(state="revoked")).rowcount)
