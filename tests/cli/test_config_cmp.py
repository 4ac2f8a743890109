"""[cmp] in ztpki.toml: defaults, bounds, types, the trusted RA file, what
`ztpki init` writes, and how the Instance wires it (CmpTransactions, CmpPolicy)."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clihelpers import assert_user_error, cli
from clihelpers import home  # noqa: F401  (fixture)
from protocols.cmp import macs
from ztpki.instance import Instance
from ztpki.config import CmpSettings, ConfigError, Settings, TokenSettings, load_settings, write_settings


def write_config(home: Path, cmp: dict[str, Any] | None) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"instance": {"database": "sqlite:///ztpki.db"}}
    if cmp is not None:
        data["cmp"] = cmp
    (home / "ztpki.toml").write_text(tomli_w.dumps(data), encoding="utf-8")
    return home


def ra_certificate_pem(name: str = "RA") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_defaults_without_a_cmp_table(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, None))
    assert settings.cmp == CmpSettings()
    assert (settings.cmp.confirm_wait_seconds, settings.cmp.message_time_tolerance_seconds) == (600, 600)
    assert settings.cmp.allow_implicit_confirm and not settings.cmp.allow_unprotected_genm  # RFC 9483 §3.2
    assert settings.cmp.max_mac_iterations == macs.MAX_ITERATIONS
    assert settings.cmp.trusted_ras(settings.home) == ()


def test_values_are_read_and_the_ra_file_is_relative_to_home(tmp_path: Path) -> None:
    (tmp_path / "ras.pem").write_bytes(ra_certificate_pem("RA 1") + ra_certificate_pem("RA 2"))
    settings = load_settings(write_config(tmp_path, {
        "confirm_wait_seconds": 30,
        "message_time_tolerance_seconds": 120,
        "allow_implicit_confirm": False,
        "allow_unprotected_genm": False,
        "max_mac_iterations": 20_000,
        "trusted_ra_certificates": "ras.pem",
    }))
    assert settings.cmp == CmpSettings(30, 120, False, False, 20_000, "ras.pem")
    names = [c.subject.rfc4514_string() for c in settings.cmp.trusted_ras(settings.home)]
    assert names == ["CN=RA 1", "CN=RA 2"]


def test_an_absolute_ra_path_is_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.pem"
    elsewhere.write_bytes(ra_certificate_pem())
    settings = load_settings(write_config(tmp_path / "home", {"trusted_ra_certificates": str(elsewhere)}))
    assert len(settings.cmp.trusted_ras(settings.home)) == 1


@pytest.mark.parametrize(
    ("cmp", "fragment"),
    [
        ({"confirm_wait_seconds": 9}, "confirm_wait_seconds must be from 10 to 86400"),
        ({"confirm_wait_seconds": 86_401}, "confirm_wait_seconds must be from 10 to 86400"),
        ({"message_time_tolerance_seconds": 0}, "message_time_tolerance_seconds must be from 10"),
        ({"max_mac_iterations": 99}, "max_mac_iterations must be from 100 to 100000"),
        ({"max_mac_iterations": 100_001}, "max_mac_iterations must be from 100"),
        ({"mac_failures_per_kid": 0}, "mac_failures_per_kid must be from 1 to 1000"),
        ({"mac_failures_per_address": 100_001}, "mac_failures_per_address must be from 1 to 100000"),
        ({"mac_failure_window_seconds": 3_601}, "mac_failure_window_seconds must be from 1 to 3600"),
        ({"confirm_wait_seconds": "600"}, "confirm_wait_seconds must be a int"),
        ({"confirm_wait_seconds": True}, "confirm_wait_seconds must be a int"),
        ({"allow_unprotected_genm": "yes"}, "allow_unprotected_genm must be a bool"),
        ({"trusted_ra_certificates": 7}, "trusted_ra_certificates must be a str"),
        ({"trusted_ra_certificates": "missing.pem"}, "trusted_ra_certificates: no file"),
        ({"confirm_wait": 600}, "unknown key(s) confirm_wait"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, cmp: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(tmp_path, cmp))
    assert "[cmp]" in str(info.value) and fragment in str(info.value)


def test_cmp_must_be_a_table(tmp_path: Path) -> None:
    tmp_path.joinpath("ztpki.toml").write_text('cmp = "fast"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[cmp\] must be a table"):
        load_settings(tmp_path)


def test_a_ra_file_without_certificates_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ras.pem").write_text("not a certificate\n", encoding="utf-8")
    settings = load_settings(write_config(tmp_path, {"trusted_ra_certificates": "ras.pem"}))
    with pytest.raises(ConfigError, match="trusted_ra_certificates"):
        settings.cmp.trusted_ras(settings.home)


def test_settings_round_trip_through_the_file(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {"confirm_wait_seconds": 45, "allow_unprotected_genm": False}))
    write_settings(replace(settings, cmp=replace(settings.cmp, max_mac_iterations=5000)))
    again = load_settings(tmp_path)
    assert again.cmp == CmpSettings(confirm_wait_seconds=45, allow_unprotected_genm=False, max_mac_iterations=5000)
    assert "cmp" not in again.extra


def test_instance_wires_confirm_wait_and_the_policy(tmp_path: Path) -> None:
    (tmp_path / "ras.pem").write_bytes(ra_certificate_pem())
    settings = Settings(
        home=tmp_path, base_url="http://127.0.0.1:8080", default_ca="issuing", database="sqlite:///ztpki.db",
        token=TokenSettings(),
        cmp=CmpSettings(confirm_wait_seconds=30, message_time_tolerance_seconds=900, allow_implicit_confirm=False,
                        allow_unprotected_genm=False, max_mac_iterations=2000, trusted_ra_certificates="ras.pem"),
    )
    instance = Instance(settings)
    try:
        transactions = instance.cmp_transactions
        assert transactions.confirm_wait == timedelta(seconds=30)
        assert transactions.nonce_memory == timedelta(seconds=1800)  # ≥ twice the messageTime tolerance
        assert transactions.begin(b"\x01" * 16, "kid:01", "ir")
        record = transactions.get(b"\x01" * 16, "kid:01")
        assert record.expires_at - record.created_at == timedelta(seconds=30)
        policy = instance.cmp_policy
        assert policy.message_time_tolerance == timedelta(seconds=900)
        assert not policy.allow_implicit_confirm and not policy.allow_unprotected_genm
        assert policy.max_mac_iterations == 2000
        assert len(policy.trusted_ras) == 1
    finally:
        instance.close()


def test_init_writes_the_cmp_table_with_its_defaults(home: Path) -> None:  # noqa: F811
    data = tomllib.loads((home / "ztpki.toml").read_text(encoding="utf-8"))
    assert data["cmp"] == {
        "confirm_wait_seconds": 600,
        "message_time_tolerance_seconds": 600,
        "allow_implicit_confirm": True,
        "allow_unprotected_genm": False,
        "max_mac_iterations": macs.MAX_ITERATIONS,
        "mac_failures_per_kid": 10,
        "mac_failures_per_address": 100,
        "mac_failure_window_seconds": 300,
    }


def test_a_bad_cmp_value_is_a_one_line_cli_error(home: Path) -> None:  # noqa: F811
    path = home / "ztpki.toml"
    original = path.read_text(encoding="utf-8")
    try:
        path.write_text(original.replace("confirm_wait_seconds = 600", "confirm_wait_seconds = 5"), encoding="utf-8")
        assert_user_error(cli("--home", home, "certs", "list"), "confirm_wait_seconds")
    finally:
        path.write_text(original, encoding="utf-8")
