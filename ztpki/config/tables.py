"""The tables of ztpki.toml beyond the instance's own: [cmp], [ra], [tls],
[est] and [maintenance], each a frozen dataclass with its bounds and its
parser (called by load_settings in ztpki/config/__init__.py)."""

from __future__ import annotations

import ipaddress
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from ztpki.config.values import ConfigError, typed

# [cmp] bounds: (minimum, maximum) of each integer key.
CMP_BOUNDS = {
    "confirm_wait_seconds": (10, 86_400),
    "message_time_tolerance_seconds": (10, 86_400),
    "max_mac_iterations": (100, 100_000),
    "mac_failures_per_kid": (1, 1_000),
    "mac_failures_per_address": (1, 100_000),
    "mac_failure_window_seconds": (1, 3_600),  # ra.ratelimit.MAX_WINDOW_SECONDS
}


@dataclass(frozen=True)
class CmpSettings:
    """The CMP server's policy ([cmp] in ztpki.toml)."""

    # RFC 4210 §5.3.18: how long an issued certificate waits for certConf
    # before it is revoked.
    confirm_wait_seconds: int = 600
    # RFC 9483 §3.1: how far messageTime may be from the server's clock.
    message_time_tolerance_seconds: int = 600
    # RFC 4210 §5.1.1.1: grant implicitConfirm when asked (and the profile allows it).
    allow_implicit_confirm: bool = True
    # RFC 9483 §3.2 protects every message; true answers a genm without
    # protection (caCerts, CRLs: public, but an unauthenticated client then
    # costs the server a signed reply each).
    allow_unprotected_genm: bool = False
    # The highest PBM / PBMAC1 iterationCount accepted (work an attacker can
    # force per guess): 10,000 is what LightweightCmpRa sends, openssl 500.
    max_mac_iterations: int = 10_000
    # PEM file (relative to HOME allowed) of RA certificates whose signed
    # requests may carry raVerified POP (RFC 9483 §5.2, RFC 4211 §4).
    trusted_ra_certificates: str | None = None
    # Failed MACs allowed per senderKID and per source address in a window;
    # beyond them the request is refused before any key derivation.
    mac_failures_per_kid: int = 10
    mac_failures_per_address: int = 100
    mac_failure_window_seconds: int = 300

    def trusted_ra_path(self, home: Path) -> Path | None:
        if self.trusted_ra_certificates is None:
            return None
        return home / self.trusted_ra_certificates  # an absolute path stays as it is

    def trusted_ras(self, home: Path) -> tuple[x509.Certificate, ...]:
        """The certificates in trusted_ra_certificates (none when unset)."""
        path = self.trusted_ra_path(home)
        if path is None:
            return ()
        try:
            found = tuple(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[cmp] trusted_ra_certificates: cannot read {path}: {exc}") from None
        if not found:
            raise ConfigError(f"[cmp] trusted_ra_certificates: no certificate in {path}")
        return found

    def to_table(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


RA_BOUNDS = {
    "per_device_limit": (1, 1_000_000),
    "per_device_window_seconds": (1, 3_600),  # ra.ratelimit.MAX_WINDOW_SECONDS
    "global_limit": (1, 10_000_000),
    "global_window_seconds": (1, 3_600),
    "poll_interval_seconds": (1, 86_400),
    "noise_interval_seconds": (60, 86_400),
    "noise_sources_per_interval": (1, 100_000),
    "noise_retention_days": (1, 3_650),
}


@dataclass(frozen=True)
class RaSettings:
    """The enrolment core's rate limits and polling hint ([ra] in ztpki.toml).

    A request over either limit is refused as busy (CMP systemUnavail, EST
    503 with Retry-After) and not counted, so a device retrying later gets in.
    """

    per_device_limit: int = 10  # requests of one device per window
    per_device_window_seconds: int = 60
    global_limit: int = 200  # requests of all devices per window
    global_window_seconds: int = 1
    poll_interval_seconds: int = 30  # how long a pending client should wait before asking again
    # Refusals nobody authenticated are counted per interval, source and
    # reason, not chained (ra/noise.py); past this many sources in one
    # interval the rest share the source "*".
    noise_interval_seconds: int = 3600
    noise_sources_per_interval: int = 256
    noise_retention_days: int = 30

    def to_table(self) -> dict[str, Any]:
        return dict(vars(self))


def ra_settings(section: dict[str, Any]) -> RaSettings:
    defaults = RaSettings()
    unknown = set(section) - set(vars(defaults))
    if unknown:
        raise ConfigError(f"[ra] unknown key(s) {', '.join(sorted(unknown))}")
    values = {key: typed(section, key, int, default, "ra") for key, default in vars(defaults).items()}
    for key, (low, high) in RA_BOUNDS.items():
        if not low <= values[key] <= high:
            raise ConfigError(f"[ra] {key} must be from {low} to {high}")
    return RaSettings(**values)


TLS_CLIENT_CA_NAME = "tls-client-ca.pem"


@dataclass(frozen=True)
class TlsSettings:
    """ztpki's own HTTPS listener ([tls] in ztpki.toml); None when absent.

    Paths are relative to HOME (an absolute path stays as it is). `key` may
    be left out when `certificate` holds the key too; the file holding the
    key must be readable by its owner only.
    """

    certificate: str
    port: int
    key: str | None = None
    # PEM bundle of the anchors client certificates may chain to. Unset:
    # `serve` writes HOME/tls-client-ca.pem at start from every vendor anchor
    # the instance trusts and its own CA certificates (re-enrolment).
    client_ca: str | None = None

    def certificate_path(self, home: Path) -> Path:
        return home / self.certificate

    def key_path(self, home: Path) -> Path:
        return home / (self.key or self.certificate)

    def client_ca_path(self, home: Path) -> Path:
        return home / (self.client_ca or TLS_CLIENT_CA_NAME)

    def check_files(self, home: Path) -> None:
        """ConfigError unless the certificate, the key (owner-only) and a
        configured client_ca bundle are there and readable."""
        certificate, key = self.certificate_path(home), self.key_path(home)
        try:
            if not x509.load_pem_x509_certificates(certificate.read_bytes()):
                raise ValueError("no certificate")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[tls] certificate: cannot read {certificate}: {exc}") from None
        try:
            mode = key.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"[tls] key: cannot read {key}: {exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"[tls] key: {key} is readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
        if b"PRIVATE KEY-----" not in key.read_bytes():
            raise ConfigError(f"[tls] key: no PEM private key in {key}")
        if self.client_ca is not None:
            bundle = self.client_ca_path(home)
            try:
                if not x509.load_pem_x509_certificates(bundle.read_bytes()):
                    raise ValueError("no certificate")
            except (OSError, ValueError) as exc:
                raise ConfigError(f"[tls] client_ca: cannot read {bundle}: {exc}") from None

    def to_table(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class EstSettings:
    """How EST learns the TLS client certificate ([est] in ztpki.toml).

    Over ztpki's own TLS the handshake says it. Behind a TLS-terminating
    proxy (nginx) the proxy's header says it, and it is believed only from
    the addresses in trusted_proxies: anyone else could write that header.
    """

    trusted_proxies: tuple[str, ...] = ()
    # nginx: proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
    # URL-escaped PEM of the client certificate, optionally followed by its chain.
    client_cert_header: str = "X-SSL-Client-Cert"
    # More certificates of the chain (URL-escaped or plain PEM), for proxies
    # that can send them (nginx cannot; Envoy, HAProxy with Lua can).
    client_chain_header: str = "X-SSL-Client-Chain"

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in self.trusted_proxies)

    def to_table(self) -> dict[str, Any]:
        return {
            "trusted_proxies": list(self.trusted_proxies),
            "client_cert_header": self.client_cert_header,
            "client_chain_header": self.client_chain_header,
        }



@dataclass(frozen=True)
class MaintenanceSettings:
    """[maintenance]: the background sweep each `serve` worker runs (issue 18)."""

    interval_seconds: int = 60  # between sweeps (each worker sweeps at 0.5-1x this)
    # A certificate row still 'signing' this long after its reservation is
    # revoked as possibly issued. Longer than any live signing takes: should
    # a live request still finish after it, its certificate is stored on the
    # revoked row and never delivered (ca/reconcile.py).
    signing_bound_seconds: int = 60


_MAINTENANCE_BOUNDS = {"interval_seconds": (1, 3600), "signing_bound_seconds": (5, 86_400)}


def maintenance_settings(section: dict[str, Any]) -> MaintenanceSettings:
    unknown = set(section) - set(_MAINTENANCE_BOUNDS)
    if unknown:
        raise ConfigError(f"[maintenance] unknown key(s) {', '.join(sorted(unknown))}")
    values: dict[str, int] = {}
    for key, (low, high) in _MAINTENANCE_BOUNDS.items():
        value = typed(section, key, int, getattr(MaintenanceSettings(), key), "maintenance")
        if not low <= value <= high:
            raise ConfigError(f"[maintenance] {key} must be from {low} to {high}")
        values[key] = value
    return MaintenanceSettings(**values)



def cmp_settings(section: dict[str, Any], home: Path) -> CmpSettings:
    defaults = CmpSettings()
    unknown = set(section) - set(vars(defaults))
    if unknown:
        raise ConfigError(f"[cmp] unknown key(s) {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for key, default in vars(defaults).items():
        kind = bool if isinstance(default, bool) else int if isinstance(default, int) else str
        values[key] = typed(section, key, kind, default, "cmp")
    for key, (low, high) in CMP_BOUNDS.items():
        if not low <= values[key] <= high:
            raise ConfigError(f"[cmp] {key} must be from {low} to {high}")
    settings = CmpSettings(**values)
    path = settings.trusted_ra_path(home)
    if path is not None and not path.is_file():
        raise ConfigError(f"[cmp] trusted_ra_certificates: no file {path}")
    return settings


_HEADER_NAME = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ConfigError(f"[{where}] port must be an integer from 1 to 65535")
    return value


def tls_settings(section: dict[str, Any] | None, serve_port: int) -> TlsSettings | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError("[tls] must be a table")
    unknown = set(section) - {"certificate", "key", "client_ca", "port"}
    if unknown:
        raise ConfigError(f"[tls] unknown key(s) {', '.join(sorted(unknown))}")
    certificate = typed(section, "certificate", str, None, "tls")
    if not certificate:
        raise ConfigError("[tls] certificate is required (PEM path, relative to HOME)")
    if "port" not in section:
        raise ConfigError("[tls] port is required (the HTTPS port)")
    port = _port(section["port"], "tls")
    if port == serve_port:
        raise ConfigError(f"[tls] port {port} is the plain HTTP port of [serve]; give HTTPS its own")
    return TlsSettings(
        certificate=certificate,
        port=port,
        key=typed(section, "key", str, None, "tls") or None,
        client_ca=typed(section, "client_ca", str, None, "tls") or None,
    )


def est_settings(section: dict[str, Any]) -> EstSettings:
    defaults = EstSettings()
    unknown = set(section) - set(vars(defaults))
    if unknown:
        raise ConfigError(f"[est] unknown key(s) {', '.join(sorted(unknown))}")
    proxies = section.get("trusted_proxies", [])
    if not isinstance(proxies, list) or not all(isinstance(p, str) for p in proxies):
        raise ConfigError('[est] trusted_proxies must be a list of addresses or networks, e.g. ["127.0.0.1", "10.0.0.0/24"]')
    for entry in proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"[est] trusted_proxies: {entry!r} is not an IP address or network") from None
    headers = {}
    for key in ("client_cert_header", "client_chain_header"):
        name = typed(section, key, str, getattr(defaults, key), "est")
        if not name or not set(name) <= _HEADER_NAME:
            raise ConfigError(f"[est] {key}: {name!r} is not an HTTP header name")
        headers[key] = name
    if headers["client_cert_header"].lower() == headers["client_chain_header"].lower():
        raise ConfigError("[est] client_cert_header and client_chain_header must differ")
    return EstSettings(trusted_proxies=tuple(proxies), **headers)
