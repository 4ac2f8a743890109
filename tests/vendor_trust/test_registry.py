"""The device registry: identifiers, CRUD, states; SQLite and a real PostgreSQL."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine

from storage.db import make_engine
from vendor_trust import registry as registry_module
from vendor_trust.db import migrate
from vendor_trust.registry import (
    AmbiguousIdentifier,
    DeviceExists,
    DeviceNotFound,
    DeviceRegistry,
    InvalidField,
    canonical_public_key,
    imei_check_digit,
    normalise_mac,
    validate_imei,
)

IMEI = "490154203237518"  # the example of 3GPP TS 23.003 annex B


def open_engine(url: str) -> Engine:
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    migrate(engine)
    return engine


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[DeviceRegistry]:
    engine = open_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    yield DeviceRegistry(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeviceRegistry]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("postgres_db_url")
    engine = open_engine(url)
    yield DeviceRegistry(engine)
    engine.dispose()


def spki(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# -- identifiers ---------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "aa:bb:cc:dd:ee:0f", "AA:BB:CC:DD:EE:0F", "AA-BB-CC-DD-EE-0F", "aabb.ccdd.ee0f", "AABBCCDDEE0F", " aa:bb:cc:dd:ee:0f ",
])
def test_mac_addresses_in_every_common_form_normalise_to_lower_case_colons(text: str) -> None:
    assert normalise_mac(text) == "aa:bb:cc:dd:ee:0f"


@pytest.mark.parametrize("text", ["aa:bb:cc:dd:ee", "aa:bb-cc:dd:ee:ff", "gg:bb:cc:dd:ee:ff", "aabb.ccdd.eeff.0011", "", "aa:bb:cc:dd:ee:ff:00"])
def test_malformed_mac_addresses_are_refused_with_the_field_named(text: str) -> None:
    with pytest.raises(InvalidField, match="^mac: not a MAC address"):
        normalise_mac(text)


def test_imei_check_digit_is_the_luhn_digit_of_ts_23_003() -> None:
    assert imei_check_digit(IMEI[:14]) == 8
    assert validate_imei(IMEI) == IMEI
    assert validate_imei("49-015420-323751-8") == IMEI


@pytest.mark.parametrize("text, message", [
    ("490154203237519", "check digit"),
    ("49015420323751", "15 digits"),
    ("4901542032375180", "IMEISV"),
    ("49015420323751x", "not an IMEI"),
    ("٤٩٠١٥٤٢٠٣٢٣٧٥١٨", "not an IMEI"),  # Arabic-Indic digits are digits to str.isdigit
])
def test_bad_imeis_are_refused_saying_why(text: str, message: str) -> None:
    with pytest.raises(InvalidField, match=message):
        validate_imei(text)


def test_public_keys_in_pem_base64_or_der_become_canonical_spki_der() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = spki(key)
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    assert canonical_public_key(der) == der
    assert canonical_public_key(pem) == der
    assert canonical_public_key(base64.b64encode(der).decode()) == der
    # Wrapped base64 (as in a spreadsheet cell) is fine too.
    wrapped = base64.encodebytes(der).decode()
    assert canonical_public_key(wrapped) == der


def test_compressed_ec_points_and_pkcs1_rsa_keys_are_stored_as_plain_spki() -> None:
    ec_key = ec.generate_private_key(ec.SECP384R1()).public_key()
    canonical = spki(ec_key)
    compressed_point = ec_key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    # Build the compressed SPKI by hand: same header, shorter BIT STRING.
    header = bytes.fromhex("3046301006072a8648ce3d020106052b81040022033200")
    assert canonical_public_key(header + compressed_point) == canonical
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pkcs1 = rsa_key.public_bytes(Encoding.DER, PublicFormat.PKCS1)
    assert canonical_public_key(pkcs1) == spki(rsa_key)


@pytest.mark.parametrize("value", ["not base64!", "aGVsbG8=", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"])
def test_unparseable_public_keys_are_refused(value: str) -> None:
    with pytest.raises(InvalidField, match="^public_key: not a PEM or base64 DER"):
        canonical_public_key(value)


def test_a_key_that_cannot_sign_is_refused() -> None:
    der = x25519.X25519PrivateKey.generate().public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(InvalidField, match="cannot sign"):
        canonical_public_key(der)


# -- CRUD ----------------------------------------------------------------------------


def test_register_normalises_and_get_returns_the_device(any_registry: DeviceRegistry) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    device = any_registry.register(
        " SN-1 ", vendor="acme", model="cell-5", mac="AA-BB-CC-DD-EE-FF", imei=IMEI, hnb_id="hnb-1",
        tenant="op", profile="small-cell", public_key=base64.b64encode(spki(key)).decode(),
    )
    assert device.serial == "SN-1"
    assert device.mac == "aa:bb:cc:dd:ee:ff"
    assert device.public_key == spki(key)
    assert device.state == "registered" and device.blocked_reason is None and device.blocked_at is None
    assert device.created_at.tzinfo is not None
    assert any_registry.get("SN-1") == device
    assert any_registry.get("SN-2") is None


def test_registering_a_serial_twice_is_refused(any_registry: DeviceRegistry) -> None:
    any_registry.register("SN-1")
    with pytest.raises(DeviceExists, match="SN-1"):
        any_registry.register("SN-1", vendor="other")


@pytest.mark.parametrize("fields, field", [
    ({"serial": ""}, "serial"),
    ({"serial": "x" * 129}, "serial"),
    ({"serial": "a\nb"}, "serial"),
    ({"serial": "ok", "vendor": "v" * 65}, "vendor"),
    ({"serial": "ok", "mac": "nope"}, "mac"),
    ({"serial": "ok", "imei": "123"}, "imei"),
])
def test_invalid_fields_are_refused_naming_the_field(registry: DeviceRegistry, fields: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        registry.register(**fields)
    assert caught.value.field == field


def test_find_by_mac_in_any_form_imei_or_hnb_id(any_registry: DeviceRegistry) -> None:
    any_registry.register("SN-1", mac="aa:bb:cc:dd:ee:01", imei=IMEI, hnb_id="hnb-1")
    any_registry.register("SN-2", mac="aa:bb:cc:dd:ee:02")
    found = any_registry.find(mac="AABB.CCDD.EE01")
    assert found is not None and found.serial == "SN-1"
    assert any_registry.find(imei=IMEI) == found
    assert any_registry.find(hnb_id="hnb-1", mac="aa:bb:cc:dd:ee:01") == found
    assert any_registry.find(hnb_id="hnb-1", mac="aa:bb:cc:dd:ee:02") is None
    assert any_registry.find(hnb_id="nope") is None
    with pytest.raises(ValueError):
        any_registry.find()


def test_find_refuses_to_guess_between_devices_sharing_an_identifier(registry: DeviceRegistry) -> None:
    registry.register("SN-1", mac="aa:bb:cc:dd:ee:01")
    registry.register("SN-2", mac="aa:bb:cc:dd:ee:01")
    with pytest.raises(AmbiguousIdentifier):
        registry.find(mac="aa:bb:cc:dd:ee:01")


def test_list_filters_and_pages_through_the_registry(registry: DeviceRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_PAGE", 3)  # several pages with few rows
    for i in range(10):
        registry.register(f"SN-{i:02d}", vendor="acme" if i % 2 else "other", profile="p" if i < 4 else None)
    assert [d.serial for d in registry.list()] == [f"SN-{i:02d}" for i in range(10)]
    assert [d.serial for d in registry.list(vendor="acme")] == ["SN-01", "SN-03", "SN-05", "SN-07", "SN-09"]
    assert [d.serial for d in registry.list(vendor="acme", limit=4)] == ["SN-01", "SN-03", "SN-05", "SN-07"]
    assert [d.serial for d in registry.list(profile="p", vendor="other")] == ["SN-00", "SN-02"]
    registry.block("SN-05", "keyCompromise")
    assert [d.serial for d in registry.list(state="blocked")] == ["SN-05"]
    with pytest.raises(InvalidField):
        list(registry.list(state="lost"))


def test_profiles_are_assigned_singly_or_by_vendor_and_model(registry: DeviceRegistry) -> None:
    registry.register("A", vendor="acme", model="m1")
    registry.register("B", vendor="acme", model="m2", profile="keep")
    registry.register("C", vendor="other", model="m1")
    assert registry.assign_profile("C", "phones").profile == "phones"
    assert registry.set_profile_for(vendor="acme", profile="cells", only_unassigned=True) == 1
    assert [(d.serial, d.profile) for d in registry.list()] == [("A", "cells"), ("B", "keep"), ("C", "phones")]
    assert registry.set_profile_for(vendor="acme", model="m2", profile="cells") == 1
    assert registry.require("B").profile == "cells"
    assert registry.assign_profile("A", None).profile is None
    with pytest.raises(DeviceNotFound):
        registry.assign_profile("nope", "x")


def test_states_registered_active_blocked_and_back(any_registry: DeviceRegistry) -> None:
    any_registry.register("SN-1")
    assert any_registry.mark_active("SN-1") is True
    assert any_registry.mark_active("SN-1") is False
    assert any_registry.require("SN-1").state == "active"
    blocked = any_registry.block("SN-1", "keyCompromise")
    assert blocked.state == "blocked" and blocked.blocked_reason == "keyCompromise"
    assert blocked.blocked_at is not None
    # Blocking again keeps the first record; activation never unblocks.
    assert any_registry.block("SN-1", "superseded") == blocked
    assert any_registry.mark_active("SN-1") is False
    assert any_registry.require("SN-1").state == "blocked"
    unblocked = any_registry.unblock("SN-1")
    assert (unblocked.state, unblocked.blocked_reason, unblocked.blocked_at) == ("registered", None, None)
    assert any_registry.unblock("SN-1") == unblocked  # not blocked: unchanged
    with pytest.raises(DeviceNotFound):
        any_registry.block("nope", "x")
    with pytest.raises(DeviceNotFound):
        any_registry.mark_active("nope")
    with pytest.raises(InvalidField):
        any_registry.block("SN-1", "")


def test_counts_per_state(registry: DeviceRegistry) -> None:
    for serial in "ABCD":
        registry.register(serial)
    registry.mark_active("A")
    registry.block("B", "x")
    assert registry.counts() == {"registered": 2, "active": 1, "blocked": 1, "total": 4}
