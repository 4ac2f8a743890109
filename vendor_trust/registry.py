"""The device registry: which devices exist, what they are, where they belong.

The production line's records (flow F3), phones registered before enrolment
(F4), and devices that registered themselves (a profile allowing
auto-registration for a trusted vendor). Every method is one short
transaction and state changes are single conditional UPDATEs, so any number
of worker processes on any node can share the table.

Identifiers are normalised on the way in (MAC in lower-case colon form, IMEI
checked against its Luhn digit, public keys re-encoded as canonical
SubjectPublicKeyInfo DER) so that lookups and key comparisons are exact.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator, Literal, get_args

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
    load_pem_public_key,
)
from sqlalchemy import Engine, bindparam, func, insert, select, true, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from storage import db
from storage.db import now, utc
from vendor_trust.schema import devices

DeviceState = Literal["registered", "active", "blocked"]
DEVICE_STATES: tuple[str, ...] = get_args(DeviceState)

# Column widths of vendor_trust.schema.devices: PostgreSQL enforces them and
# SQLite does not, so we check here to behave the same on both.
TEXT_LIMITS = {"serial": 128, "vendor": 64, "model": 128, "hnb_id": 64, "tenant": 64, "profile": 64}
REASON_LIMIT = 64
_PAGE = 1000


class RegistryError(Exception):
    """Base of the registry's refusals; the message is meant for the admin."""


class DeviceNotFound(RegistryError):
    pass


class DeviceExists(RegistryError):
    pass


class AmbiguousIdentifier(RegistryError):
    """Several devices share the identifier asked for; refusing beats guessing."""


class InvalidField(RegistryError, ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# -- identifiers ------------------------------------------------------------------

_HEX = "[0-9A-Fa-f]"
_MAC = re.compile(
    rf"{_HEX}{{2}}([:-]){_HEX}{{2}}(?:\1{_HEX}{{2}}){{4}}"  # aa:bb:cc:dd:ee:ff, AA-BB-...
    rf"|{_HEX}{{4}}\.{_HEX}{{4}}\.{_HEX}{{4}}"  # Cisco style aabb.ccdd.eeff
    rf"|{_HEX}{{12}}"
)
_CANONICAL_MAC = re.compile("[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_MAC_SEPARATORS = str.maketrans("", "", ":-.")
# Luhn doubles every second digit and adds the digits of the product.
_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")
_IMEI_SEPARATORS = str.maketrans("", "", " -")


def normalise_mac(text: str) -> str:
    """'AA-BB-CC-DD-EE-FF', 'aabb.ccdd.eeff', 'aabbccddeeff' -> 'aa:bb:cc:dd:ee:ff'."""
    value = text.strip().lower()
    if _CANONICAL_MAC.fullmatch(value) is not None:  # the common case, 5x cheaper
        return value
    if _MAC.fullmatch(value) is None:
        raise InvalidField(
            "mac",
            f"not a MAC address: {text!r} (expected aa:bb:cc:dd:ee:ff, "
            "AA-BB-CC-DD-EE-FF, aabb.ccdd.eeff or 12 hex digits)",
        )
    d = value.translate(_MAC_SEPARATORS)
    return f"{d[0:2]}:{d[2:4]}:{d[4:6]}:{d[6:8]}:{d[8:10]}:{d[10:12]}"


def imei_check_digit(body: str) -> int:
    """Luhn check digit over the 14 digits TAC+SNR (3GPP TS 23.003 annex B).

    Summing the ASCII codes of the digits (minus 48 each) keeps the loop in
    C: the import checks every IMEI of a million-row file.
    """
    total = sum(body[0::2].encode()) + sum(body[1::2].translate(_LUHN_DOUBLED).encode()) - 48 * len(body)
    return -total % 10


def validate_imei(text: str) -> str:
    """15 digits whose last is the Luhn check digit; spaces and hyphens are dropped."""
    value = text.strip().translate(_IMEI_SEPARATORS)
    if not (value.isascii() and value.isdigit()):
        raise InvalidField("imei", f"not an IMEI: {text!r} (15 digits expected)")
    if len(value) == 16:
        raise InvalidField("imei", f"{text!r} has 16 digits, an IMEISV; give the 15-digit IMEI")
    if len(value) != 15:
        raise InvalidField("imei", f"an IMEI has 15 digits, {text!r} has {len(value)}")
    if imei_check_digit(value[:14]) != ord(value[14]) - 48:
        raise InvalidField("imei", f"check digit of {text!r} is wrong (Luhn)")
    return value


def clean_text(field: str, value: str | None) -> str | None:
    """Strip; empty means absent; refuse over-long or non-printable text."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > TEXT_LIMITS[field]:
        raise InvalidField(field, f"longer than {TEXT_LIMITS[field]} characters")
    if not value.isprintable():
        raise InvalidField(field, f"contains control characters: {value!r}")
    return value


def clean_serial(value: str | None) -> str:
    serial = clean_text("serial", value)
    if serial is None:
        raise InvalidField("serial", "missing")
    return serial


_EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def _ec_spki_prefix(curve: type[ec.EllipticCurve]) -> tuple[bytes, int]:
    """The fixed header of a named-curve SPKI as cryptography writes it, and the
    length of the uncompressed point that follows."""
    instance = curve()
    encoded = ec.derive_private_key(1, instance).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    point = 1 + 2 * ((instance.key_size + 7) // 8)
    return encoded[:-point], point


_EC_PREFIXES = {curve.name: _ec_spki_prefix(curve) for curve in _EC_CURVES}


def _is_canonical_ec(der: bytes, curve: ec.EllipticCurve) -> bool:
    known = _EC_PREFIXES.get(curve.name)
    if known is None:
        return False
    prefix, point = known
    # An uncompressed point (0x04) after the exact header cryptography writes:
    # the parse succeeded, so these bytes are what re-encoding would produce.
    return len(der) == len(prefix) + point and der.startswith(prefix) and der[len(prefix)] == 4


_SIGNING_KEYS = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)


def canonical_public_key(value: str | bytes) -> bytes:
    """PEM, base64 DER or DER -> SubjectPublicKeyInfo DER as cryptography encodes it.

    Re-encoding makes the stored bytes canonical (compressed EC points and
    PKCS#1 RSA keys come out as plain SPKI), so the enrolment core can
    compare keys byte for byte.
    """
    der: bytes | None = None
    try:
        if isinstance(value, bytes):
            der = value
            key = load_der_public_key(der)
        elif value.lstrip().startswith("-----BEGIN"):
            key = load_pem_public_key(value.strip().encode("ascii"))
        else:
            der = base64.b64decode("".join(value.split()), validate=True)
            key = load_der_public_key(der)
    except (ValueError, TypeError, binascii.Error, UnicodeEncodeError):
        raise InvalidField(
            "public_key", "not a PEM or base64 DER SubjectPublicKeyInfo that cryptography can parse"
        ) from None
    if not isinstance(key, _SIGNING_KEYS):
        raise InvalidField("public_key", f"{type(key).__name__} cannot sign; devices need RSA, EC or EdDSA keys")
    if isinstance(key, ec.EllipticCurvePublicKey) and der is not None and _is_canonical_ec(der, key.curve):
        return der  # already what re-encoding would give; saves a third of the time per key
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def clean_reason(reason: str) -> str:
    value = reason.strip()
    if not value or len(value) > REASON_LIMIT or not value.isprintable():
        raise InvalidField("reason", f"give 1 to {REASON_LIMIT} printable characters")
    return value


# -- the value --------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    serial: str
    vendor: str | None
    model: str | None
    mac: str | None
    imei: str | None
    hnb_id: str | None
    tenant: str | None
    profile: str | None
    public_key: bytes | None  # SubjectPublicKeyInfo DER, canonical
    state: DeviceState
    blocked_reason: str | None
    blocked_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def blocked(self) -> bool:
        return self.state == "blocked"


def _device(row: Row[Any]) -> Device:
    values = {column.name: row._mapping[column.name] for column in _COLUMNS}
    for name in ("blocked_at", "created_at", "updated_at"):
        if values[name] is not None:
            values[name] = utc(values[name])  # SQLite hands back naive datetimes
    if values["public_key"] is not None:
        values["public_key"] = bytes(values["public_key"])  # memoryview from psycopg
    return Device(**values)


_COLUMNS = tuple(c for c in devices.c if c.name != "id")
# What every enrolment runs, built once (building costs more than running).
_SELECT_DEVICE = select(*_COLUMNS).where(devices.c.serial == bindparam("serial"))
_MARK_ACTIVE = (
    update(devices)
    .where(devices.c.serial == bindparam("b_serial"), devices.c.state == "registered")
    .values(state="active", updated_at=bindparam("stamp"))
    .returning(devices.c.serial)
)


class DeviceRegistry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- reading ------------------------------------------------------------------

    def get(self, serial: str) -> Device | None:
        with db.connect(self.engine) as conn:
            row = conn.execute(_SELECT_DEVICE, {"serial": serial.strip()}).first()
        return _device(row) if row is not None else None

    def require(self, serial: str) -> Device:
        device = self.get(serial)
        if device is None:
            raise DeviceNotFound(f"no device with serial {serial!r}")
        return device

    def find(self, *, mac: str | None = None, imei: str | None = None, hnb_id: str | None = None) -> Device | None:
        """The one device with all the given identifiers, None if there is none."""
        if mac is None and imei is None and hnb_id is None:
            raise ValueError("find() needs mac, imei or hnb_id")
        query = select(*_COLUMNS)
        if mac is not None:
            query = query.where(devices.c.mac == normalise_mac(mac))
        if imei is not None:
            query = query.where(devices.c.imei == validate_imei(imei))
        if hnb_id is not None:
            query = query.where(devices.c.hnb_id == hnb_id.strip())
        with db.connect(self.engine) as conn:
            rows = conn.execute(query.limit(2)).all()
        if len(rows) > 1:
            raise AmbiguousIdentifier("several devices have these identifiers; give the serial")
        return _device(rows[0]) if rows else None

    def list(
        self,
        *,
        vendor: str | None = None,
        state: str | None = None,
        profile: str | None = None,
        tenant: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Device]:
        """Devices in registration order, read a page at a time so that a
        registry of millions costs neither memory nor a long transaction."""
        if state is not None and state not in DEVICE_STATES:
            raise InvalidField("state", f"one of {', '.join(DEVICE_STATES)}")
        base = select(devices.c.id, *_COLUMNS).order_by(devices.c.id)
        for column, value in ((devices.c.vendor, vendor), (devices.c.state, state),
                              (devices.c.profile, profile), (devices.c.tenant, tenant)):
            if value is not None:
                base = base.where(column == value)
        remaining = limit
        after = 0
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            with db.connect(self.engine) as conn:
                rows = conn.execute(base.where(devices.c.id > after).limit(page)).all()
            for row in rows:
                yield _device(row)
            if len(rows) < page:
                return
            after = rows[-1].id
            if remaining is not None:
                remaining -= len(rows)

    def counts(self) -> dict[str, int]:
        """Devices per state, and 'total'."""
        with db.connect(self.engine) as conn:
            rows = conn.execute(select(devices.c.state, func.count()).group_by(devices.c.state)).all()
        result = {state: 0 for state in DEVICE_STATES}
        for state, count in rows:
            result[state] = int(count)
        result["total"] = sum(result.values())
        return result

    # -- writing ------------------------------------------------------------------

    def register(
        self,
        serial: str,
        *,
        vendor: str | None = None,
        model: str | None = None,
        mac: str | None = None,
        imei: str | None = None,
        hnb_id: str | None = None,
        tenant: str | None = None,
        profile: str | None = None,
        public_key: bytes | str | None = None,
    ) -> Device:
        """Add one device in state 'registered'. DeviceExists if the serial is taken."""
        stamp = now()
        values = dict(
            serial=clean_serial(serial),
            vendor=clean_text("vendor", vendor),
            model=clean_text("model", model),
            mac=normalise_mac(mac) if mac else None,
            imei=validate_imei(imei) if imei else None,
            hnb_id=clean_text("hnb_id", hnb_id),
            tenant=clean_text("tenant", tenant),
            profile=clean_text("profile", profile),
            public_key=canonical_public_key(public_key) if public_key else None,
            state="registered",
            blocked_reason=None,
            blocked_at=None,
            created_at=stamp,
            updated_at=stamp,
        )
        try:
            with db.begin(self.engine) as conn:
                row = conn.execute(insert(devices).values(**values).returning(*_COLUMNS)).one()
        except IntegrityError:
            raise DeviceExists(f"a device with serial {values['serial']!r} exists already") from None
        return _device(row)

    def _update_one(self, serial: str, condition: Any, **values: Any) -> Device | None:
        """Apply values where the condition holds; the new row, or None if it did not."""
        with db.begin(self.engine) as conn:
            row = conn.execute(
                update(devices)
                .where(devices.c.serial == serial.strip(), condition)
                .values(updated_at=now(), **values)
                .returning(*_COLUMNS)
            ).first()
        return _device(row) if row is not None else None

    def assign_profile(self, serial: str, profile: str | None) -> Device:
        """Takes effect at the device's next enrolment or activation (F3 re-parenting)."""
        device = self._update_one(serial, true(), profile=clean_text("profile", profile))
        if device is None:
            raise DeviceNotFound(f"no device with serial {serial!r}")
        return device

    def set_profile_for(
        self, *, vendor: str, model: str | None = None, profile: str | None, only_unassigned: bool = False
    ) -> int:
        """Assign a profile to a fleet by vendor (and model); returns how many devices."""
        query = update(devices).where(devices.c.vendor == vendor)
        if model is not None:
            query = query.where(devices.c.model == model)
        if only_unassigned:
            query = query.where(devices.c.profile.is_(None))
        with db.begin(self.engine) as conn:
            result = conn.execute(query.values(profile=clean_text("profile", profile), updated_at=now()))
        return int(result.rowcount)

    def mark_active(self, serial: str) -> bool:
        """registered -> active at the first certificate; True if this call flipped it.

        A blocked device stays blocked: the condition is on the old state, so
        a block racing with an issuance is never undone here.
        """
        with db.begin(self.engine) as conn:
            row = conn.execute(_MARK_ACTIVE, {"b_serial": serial.strip(), "stamp": now()}).first()
        if row is not None:
            return True
        self.require(serial)
        return False

    def block(self, serial: str, reason: str) -> Device:
        """Refuse every later enrolment. Idempotent: blocking a blocked device
        keeps its first reason and time, so a retried admin action (which
        must finish revoking certificates) sees the same record."""
        device = self._update_one(
            serial, devices.c.state != "blocked",
            state="blocked", blocked_reason=clean_reason(reason), blocked_at=now(),
        )
        return device if device is not None else self.require(serial)

    def unblock(self, serial: str) -> Device:
        """blocked -> registered. Not 'active': blocking revoked its
        certificates, so the device has none until it enrols again."""
        device = self._update_one(
            serial, devices.c.state == "blocked", state="registered", blocked_reason=None, blocked_at=None
        )
        return device if device is not None else self.require(serial)
