"""Instance configuration: HOME/ztpki.toml, written by `ztpki init`. The
instance's own tables ([instance], [token], [serve], [crl], [ocsp]) and the
whole Settings are here; the protocol and service tables in tables.py; the
typed readers in values.py.

HOME/
  ztpki.toml       this file's data
  profiles.toml    certificate profiles (ca/default_profiles.toml at init)
  token.pin        the token user PIN (0600), unless the PIN comes from elsewhere
  softhsm2.conf, tokens/   the instance's own SoftHSM2 token, when no module is configured
  ztpki.db         the SQLite store, unless `database` names PostgreSQL
  tls-client-ca.pem  written by `serve` when [tls] has no client_ca: the
                   anchors a TLS client certificate may chain to
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from hsm import HsmConfigError, TokenConfig
from ztpki.config.tables import (
    CMP_BOUNDS,
    RA_BOUNDS,
    TLS_CLIENT_CA_NAME,
    CmpSettings,
    EstSettings,
    MaintenanceSettings,
    RaSettings,
    TlsSettings,
    cmp_settings,
    est_settings,
    maintenance_settings,
    ra_settings,
    tls_settings,
)
from ztpki.config.values import ConfigError, bounded, table, typed

__all__ = [
    "CMP_BOUNDS", "CONFIG_NAME", "DEFAULT_PORT", "PIN_ENV", "RA_BOUNDS", "SERVE_BOUNDS", "TLS_CLIENT_CA_NAME",
    "CmpSettings", "ConfigError", "EstSettings", "MaintenanceSettings", "RaSettings", "Settings", "TlsSettings",
    "TokenSettings", "load_settings", "write_secret", "write_settings",
]

CONFIG_NAME = "ztpki.toml"
PIN_ENV = "ZTPKI_TOKEN_PIN"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class TokenSettings:
    module: str | None = None
    label: str = "ztpki"
    uri: str | None = None
    pin_file: str | None = "token.pin"
    pin_env: str | None = None
    softhsm_conf: str | None = None


@dataclass(frozen=True)
class Settings:
    home: Path
    base_url: str
    default_ca: str
    database: str
    token: TokenSettings
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    workers: int = 2
    # Per client: the wait for its request headers (or its next request on a
    # kept-alive connection) and for each socket read or write (ztpki/http/worker.py).
    client_timeout: int = 10
    max_connections: int = 1000  # per worker process
    sqlite_synchronous: str = "FULL"
    crl_validity_hours: int = 24
    crl_refresh_minutes: int = 60
    ocsp_validity_minutes: int = 60
    ocsp_refresh_seconds: int = 300
    cmp: CmpSettings = field(default_factory=CmpSettings)
    ra: RaSettings = field(default_factory=RaSettings)
    tls: TlsSettings | None = None
    est: EstSettings = field(default_factory=EstSettings)
    maintenance: MaintenanceSettings = field(default_factory=lambda: MaintenanceSettings())
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def profiles_path(self) -> Path:
        return self.home / "profiles.toml"

    def database_url(self) -> str:
        if self.database.startswith("sqlite:///") and not self.database.startswith("sqlite:////"):
            relative = self.database.removeprefix("sqlite:///")
            return f"sqlite:///{(self.home / relative).resolve()}"
        return self.database

    def token_config(self) -> TokenConfig:
        """The token to open; the PIN from ZTPKI_TOKEN_PIN, pin_env, the URI or pin_file."""
        t = self.token
        pin = os.environ.get(PIN_ENV)
        pin_file = str(self.home / t.pin_file) if t.pin_file else None
        if pin_file and not Path(pin_file).exists():
            pin_file = None
        softhsm_conf = str(self.home / t.softhsm_conf) if t.softhsm_conf else None
        try:
            if t.uri:
                return TokenConfig.from_uri(
                    t.uri,
                    module=t.module,
                    pin=pin,
                    pin_env=t.pin_env,
                    pin_file=None if pin else pin_file,
                    softhsm_conf=softhsm_conf,
                )
            if t.module is None:
                raise ConfigError("no PKCS#11 module configured in [token]")
            if pin is None and t.pin_env:
                pin = os.environ.get(t.pin_env)
            if pin is None and pin_file:
                pin = Path(pin_file).read_text(encoding="utf-8").strip()
            if not pin:
                raise ConfigError(
                    f"no token PIN: set {PIN_ENV}, or [token] pin_env, or put it in {self.home / 'token.pin'}"
                )
            return TokenConfig(
                module=t.module, token_label=t.label, pin=pin, softhsm_conf=softhsm_conf
            )
        except HsmConfigError as exc:
            raise ConfigError(str(exc)) from None

    def to_toml(self) -> str:
        token = {k: v for k, v in vars(self.token).items() if v is not None}
        data = {
            "instance": {
                "base_url": self.base_url,
                "default_ca": self.default_ca,
                "database": self.database,
                "sqlite_synchronous": self.sqlite_synchronous,
            },
            "token": token,
            "serve": {
                "host": self.host,
                "port": self.port,
                "workers": self.workers,
                "client_timeout": self.client_timeout,
                "max_connections": self.max_connections,
            },
            "crl": {
                "validity_hours": self.crl_validity_hours,
                "refresh_minutes": self.crl_refresh_minutes,
            },
            "ocsp": {
                "validity_minutes": self.ocsp_validity_minutes,
                "refresh_seconds": self.ocsp_refresh_seconds,
            },
            "cmp": self.cmp.to_table(),
            "ra": self.ra.to_table(),
            **({"tls": self.tls.to_table()} if self.tls is not None else {}),
            "est": self.est.to_table(),
            "maintenance": vars(self.maintenance),
            **self.extra,
        }
        return tomli_w.dumps(data)



# A client_timeout long enough for a device on a slow cellular link to send its
# headers, short enough that idle connections cannot pile up for minutes.
SERVE_BOUNDS = {"client_timeout": (1, 120), "max_connections": (10, 100_000)}


def load_settings(home: Path) -> Settings:
    path = home / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{home} is not a ztpki instance (no {CONFIG_NAME}); run `ztpki init --home {home}`")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    instance = table(data, "instance")
    token = table(data, "token")
    serve = table(data, "serve")
    crl = table(data, "crl")
    ocsp = table(data, "ocsp")
    cmp = table(data, "cmp")
    est = table(data, "est")
    known = {"instance", "token", "serve", "crl", "ocsp", "cmp", "ra", "tls", "est", "maintenance"}
    port = typed(serve, "port", int, DEFAULT_PORT, "serve")
    return Settings(
        home=home.resolve(),
        base_url=typed(instance, "base_url", str, f"http://127.0.0.1:{DEFAULT_PORT}", "instance"),
        default_ca=typed(instance, "default_ca", str, "issuing", "instance"),
        database=typed(instance, "database", str, "sqlite:///ztpki.db", "instance"),
        sqlite_synchronous=typed(instance, "sqlite_synchronous", str, "FULL", "instance"),
        token=TokenSettings(
            module=typed(token, "module", str, None, "token"),
            label=typed(token, "label", str, "ztpki", "token"),
            uri=typed(token, "uri", str, None, "token"),
            pin_file=typed(token, "pin_file", str, None, "token"),
            pin_env=typed(token, "pin_env", str, None, "token"),
            softhsm_conf=typed(token, "softhsm_conf", str, None, "token"),
        ),
        host=typed(serve, "host", str, "127.0.0.1", "serve"),
        port=port,
        workers=typed(serve, "workers", int, 2, "serve"),
        client_timeout=bounded(serve, "client_timeout", 10, SERVE_BOUNDS),
        max_connections=bounded(serve, "max_connections", 1000, SERVE_BOUNDS),
        crl_validity_hours=typed(crl, "validity_hours", int, 24, "crl"),
        crl_refresh_minutes=typed(crl, "refresh_minutes", int, 60, "crl"),
        ocsp_validity_minutes=typed(ocsp, "validity_minutes", int, 60, "ocsp"),
        ocsp_refresh_seconds=typed(ocsp, "refresh_seconds", int, 300, "ocsp"),
        cmp=cmp_settings(cmp, home.resolve()),
        ra=ra_settings(table(data, "ra")),
        tls=tls_settings(data.get("tls"), port),
        est=est_settings(est),
        maintenance=maintenance_settings(table(data, "maintenance")),
        extra={k: v for k, v in data.items() if k not in known},
    )


def write_settings(settings: Settings) -> None:
    path = settings.home / CONFIG_NAME
    path.write_text(settings.to_toml(), encoding="utf-8")


def write_secret(path: Path, value: str) -> None:
    """Create a 0600 file holding a secret (never world-readable, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")

