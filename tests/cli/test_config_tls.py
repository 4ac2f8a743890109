"""[tls] and [est] in ztpki.toml: parsing, what is refused with ConfigError,
the file checks `serve` makes, what `ztpki init` writes, and the client CA
bundle written from the instance's anchors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography import x509
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clihelpers import home  # noqa: F401  (fixture)
from ztpki.instance import Instance
from ztpki.config import ConfigError, EstSettings, TlsSettings, load_settings
from ztpki.http.tls import refresh_client_ca


def self_signed(name: str, *, ca: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def write_config(home: Path, **tables: Any) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"instance": {"database": "sqlite:///ztpki.db"}, **tables}
    (home / "ztpki.toml").write_text(tomli_w.dumps(data), encoding="utf-8")
    return home


def test_without_tables_there_is_no_tls_and_no_trusted_proxy(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    assert settings.tls is None
    assert settings.est == EstSettings()
    assert settings.est.trusted_proxies == () and settings.est.client_cert_header == "X-SSL-Client-Cert"


def test_tls_and_est_tables_are_read(tmp_path: Path) -> None:
    settings = load_settings(write_config(
        tmp_path,
        serve={"port": 8080},
        tls={"certificate": "tls/server.pem", "key": "tls/server.key", "port": 8443, "client_ca": "/etc/anchors.pem"},
        est={"trusted_proxies": ["127.0.0.1", "10.0.0.0/24", "fd00::1"], "client_cert_header": "X-Client-Cert"},
    ))
    tls = settings.tls
    assert tls == TlsSettings(certificate="tls/server.pem", key="tls/server.key", port=8443, client_ca="/etc/anchors.pem")
    assert tls.certificate_path(settings.home) == settings.home / "tls/server.pem"
    assert tls.client_ca_path(settings.home) == Path("/etc/anchors.pem")  # absolute stays absolute
    assert [str(n) for n in settings.est.proxy_networks()] == ["127.0.0.1/32", "10.0.0.0/24", "fd00::1/128"]
    assert settings.est.client_cert_header == "X-Client-Cert"


def test_a_key_left_out_is_in_the_certificate_file_and_the_default_bundle_is_in_home(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, tls={"certificate": "both.pem", "port": 8443}))
    assert settings.tls is not None
    assert settings.tls.key_path(settings.home) == settings.home / "both.pem"
    assert settings.tls.client_ca_path(settings.home) == settings.home / "tls-client-ca.pem"


@pytest.mark.parametrize(("tables", "message"), [
    ({"tls": {"port": 8443}}, "certificate is required"),
    ({"tls": {"certificate": "a.pem"}}, "port is required"),
    ({"tls": {"certificate": "a.pem", "port": 0}}, "from 1 to 65535"),
    ({"tls": {"certificate": "a.pem", "port": "8443"}}, "from 1 to 65535"),
    ({"tls": {"certificate": "a.pem", "port": 8080}, "serve": {"port": 8080}}, "plain HTTP port"),
    ({"tls": {"certificate": "a.pem", "port": 8443, "cert": "x"}}, "unknown key"),
    ({"tls": "on"}, "must be a table"),
    ({"est": {"trusted_proxies": "127.0.0.1"}}, "must be a list"),
    ({"est": {"trusted_proxies": ["localhost"]}}, "not an IP address"),
    ({"est": {"trusted_proxies": ["10.0.0.0/33"]}}, "not an IP address"),
    ({"est": {"client_cert_header": "X SSL"}}, "not an HTTP header name"),
    ({"est": {"client_cert_header": "x-ssl-client-chain"}}, "must differ"),
    ({"est": {"trusted_proxy": []}}, "unknown key"),
])
def test_wrong_tables_are_config_errors(tmp_path: Path, tables: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write_config(tmp_path, **tables))


def _tls_files(home: Path, key_mode: int = 0o600) -> TlsSettings:
    certificate, key = self_signed("server")
    (home / "server.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (home / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (home / "server.key").chmod(key_mode)
    return TlsSettings(certificate="server.pem", key="server.key", port=8443)


def test_serve_checks_the_files(tmp_path: Path) -> None:
    tls = _tls_files(tmp_path)
    tls.check_files(tmp_path)
    with pytest.raises(ConfigError, match="cannot read"):
        replace(tls, certificate="missing.pem").check_files(tmp_path)
    with pytest.raises(ConfigError, match="no PEM private key"):
        (tmp_path / "other.pem").write_bytes((tmp_path / "server.pem").read_bytes())
        (tmp_path / "other.pem").chmod(0o600)
        replace(tls, key="other.pem").check_files(tmp_path)
    with pytest.raises(ConfigError, match="client_ca: cannot read"):
        replace(tls, client_ca="missing-anchors.pem").check_files(tmp_path)


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    tls = _tls_files(tmp_path, key_mode=0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        tls.check_files(tmp_path)


def test_init_writes_est_defaults_and_no_tls(home: Path) -> None:  # noqa: F811
    text = (home / "ztpki.toml").read_text()
    assert "[est]" in text and "trusted_proxies = []" in text and "[tls]" not in text


def test_the_client_ca_bundle_holds_vendor_anchors_and_the_instance_cas(home: Path) -> None:  # noqa: F811
    vendor_root, _ = self_signed("Bundle Vendor Root", ca=True)
    instance = Instance.open(home)
    try:
        instance.trust.add_vendor("bundle-vendor", exist_ok=True)
        instance.trust.add_anchor("bundle-vendor", vendor_root)
        authorities = {r.certificate for r in instance.store.list_authorities()}
        settings = replace(instance.settings, tls=TlsSettings(certificate="x.pem", port=65000))
    finally:
        instance.close()
    path = refresh_client_ca(settings)
    assert path == home / "tls-client-ca.pem"
    found = x509.load_pem_x509_certificates(path.read_bytes())
    der = {c.public_bytes(serialization.Encoding.DER) for c in found}
    assert vendor_root.public_bytes(serialization.Encoding.DER) in der
    assert authorities <= der and len(found) == len(der)
    # A configured bundle is the operator's: never rewritten.
    mine = replace(settings, tls=TlsSettings(certificate="x.pem", port=65000, client_ca="mine.pem"))
    assert refresh_client_ca(mine) == home / "mine.pem" and not (home / "mine.pem").exists()
