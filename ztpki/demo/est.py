"""The demo's HTTPS listener and EST (DESIGN F5), beside ztpki/demo/cmp.py.

- A TLS server certificate issued by the demo's own CA (profile "server",
  SAN IP:127.0.0.1; the profile refuses a single-label DNS name such as
  localhost) in HOME/tls/, and [tls] in ztpki.toml on the HTTP port + 1.
- EST password credentials of registered uCPE devices: one reusable, more
  that are good for one enrolment each.
- A profile "ucpe-approval" whose requests wait for an administrator, and
  a small auto-approver in the demo process that plays the administrator:
  it approves, with `ztpki requests approve`, what waited a few seconds, so
  a client sees 202 and then its certificate.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys
import threading
import tomllib
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.template import IssuanceOrder
from ra.pending import PendingRequests
from vendor_trust.credentials import Credentials
from ztpki.demo.files import private_dir, write_key
from ztpki.instance import Instance
from ztpki.config import TlsSettings, write_settings

log = logging.getLogger("ztpki.demo")

EST_PATH = ".well-known/est"
TLS_DIR = "tls"
EST_PROFILE = "ucpe"
APPROVAL_PROFILE = "ucpe-approval"
EST_DEVICE = "DEMO-UCPE-0001"  # the reusable password credential's device
EXTRA_EST_DEVICES = tuple(f"DEMO-UCPE-{n:04d}" for n in range(2, 26))  # one-time passwords
APPROVAL_DEVICE = "DEMO-UCPE-APPROVAL"
AUTO_APPROVE_SECONDS = 2
# What a pending client hears (202 Retry-After, CMP checkAfter): the demo's
# instance says 10 s instead of the production default of 30 ([ra]
# poll_interval_seconds), so the printed wait matches what the server says.
# Not less: the approval (2 s, then `ztpki requests approve` starting up)
# took over 5 s on a loaded 2-core machine.
DEMO_POLL_SECONDS = 10
RENEW_BEFORE = timedelta(days=30)


# -- the HTTPS listener ------------------------------------------------------------------


def ensure_tls(instance: Instance, directory: Path, tls_port: int) -> TlsSettings:
    """HOME/tls/server.pem (certificate, then the issuing CA) and server.key
    (0600), issued again when missing or near expiry; [tls] written."""

    tls_dir = private_dir(directory / TLS_DIR)
    cert_path, key_path = tls_dir / "server.pem", tls_dir / "server.key"
    if not _still_good(cert_path, key_path):
        key = ec.generate_private_key(ec.SECP256R1())
        issued = instance.cas.issue(IssuanceOrder(
            ca=instance.settings.default_ca,
            profile="server",
            subject=x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ztpki demo"),
                x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            ]),
            public_key=key.public_key(),
            sans=(x509.IPAddress(ipaddress.ip_address("127.0.0.1")),),
        ))
        write_key(key_path, key)
        chain = (issued.certificate, *instance.cas.authority().chain[:-1])  # without the root
        partial = cert_path.with_name(f".{cert_path.name}.tmp")
        partial.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        partial.replace(cert_path)
    tls = TlsSettings(certificate=f"{TLS_DIR}/server.pem", key=f"{TLS_DIR}/server.key", port=tls_port)
    if instance.settings.tls != tls:
        write_settings(replace(instance.settings, tls=tls))
    return tls


def _still_good(cert_path: Path, key_path: Path) -> bool:
    try:
        certificate = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, IndexError):
        return False
    same_key = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return same_key and certificate.not_valid_after_utc - RENEW_BEFORE > datetime.now(timezone.utc)


# -- the profile that needs approval -----------------------------------------------------


def ensure_approval_profile(home: Path) -> None:
    """Add [profiles.ucpe-approval] (ucpe with approval = "manual") to
    HOME/profiles.toml once. Call before the instance loads its profiles."""
    path = home / "profiles.toml"
    text = path.read_text(encoding="utf-8")
    profiles = tomllib.loads(text).get("profiles", {})
    if APPROVAL_PROFILE in profiles or EST_PROFILE not in profiles:
        return
    table = dict(profiles[EST_PROFILE])
    table["description"] = "uCPE over EST, each request approved by an administrator (ztpki demo)"
    table["approval"] = "manual"
    addition = (
        "\n# Added by `ztpki demo`: EST requests under /.well-known/est/ucpe-approval wait\n"
        "# for `ztpki requests approve ID`; the running demo approves them after a few seconds.\n"
        + tomli_w.dumps({"profiles": {APPROVAL_PROFILE: table}})
    )
    path.write_text(text.rstrip("\n") + "\n" + addition, encoding="utf-8")


# -- EST credentials and demo.json -------------------------------------------------------


def _register_with(instance: Instance, serial: str, profile: str) -> None:
    if instance.registry.get(serial) is None:
        instance.registry.register(serial=serial, vendor=None, profile=profile)


def _password(credentials: Credentials, serial: str, previous: Any, *, one_time: bool) -> dict[str, str]:
    """The credential demo.json named before while it can still be used; else a new one."""
    if isinstance(previous, dict) and isinstance(previous.get("user"), str) and isinstance(previous.get("password"), str):
        info = credentials.info(previous["user"])
        if (info is not None and info.kind == "password" and info.device_serial == serial
                and info.failure(datetime.now(timezone.utc)) is None):
            return {"user": previous["user"], "password": previous["password"]}
    user, password = credentials.create_password(device_serial=serial, max_uses=1 if one_time else None)
    return {"user": user, "password": password}


def ensure_demo_polling(home: Path) -> None:
    """[ra] poll_interval_seconds = DEMO_POLL_SECONDS in the demo's ztpki.toml
    (only while it still has the production default)."""
    from ztpki.config import RaSettings, load_settings

    settings = load_settings(home)
    if settings.ra.poll_interval_seconds == RaSettings().poll_interval_seconds:
        write_settings(replace(settings, ra=replace(settings.ra, poll_interval_seconds=DEMO_POLL_SECONDS)))


def prepare_est(instance: Instance, tls: TlsSettings, previous: dict[str, Any], device: dict[str, str]) -> dict[str, Any]:
    """What demo.json says about EST; `device` is a registered vendor device (IDevID)."""
    found = previous.get("est")
    old: dict[str, Any] = found if isinstance(found, dict) else {}
    found = old.get("extra_credentials")
    old_extra: list[Any] = found if isinstance(found, list) else []
    _register_with(instance, EST_DEVICE, EST_PROFILE)
    _register_with(instance, APPROVAL_DEVICE, APPROVAL_PROFILE)
    main = _password(instance.credentials, EST_DEVICE, old, one_time=False)
    extra = []
    for n, serial in enumerate(EXTRA_EST_DEVICES):
        _register_with(instance, serial, EST_PROFILE)
        extra.append(_password(instance.credentials, serial, old_extra[n] if n < len(old_extra) else None, one_time=True))
    pending = _password(instance.credentials, APPROVAL_DEVICE, old.get("pending_credential"), one_time=False)
    url = f"https://127.0.0.1:{tls.port}/{EST_PATH}"
    return {
        "est_url": url,
        "est": {
            "tls_ca": str(instance.settings.home / "root.pem"),
            **main,
            "device": EST_DEVICE,
            "extra_credentials": extra,
            "device_serial": device["serial"],
            "device_cert": device["cert"],
            "device_key": device["key"],
            "pending_url": f"{url}/{APPROVAL_PROFILE}",
            "pending_credential": pending,
            "auto_approve_seconds": AUTO_APPROVE_SECONDS,
            "retry_after_seconds": instance.settings.ra.poll_interval_seconds,
        },
    }


# -- the auto-approver ---------------------------------------------------------------------


class AutoApprover(threading.Thread):
    """Approves requests for the approval profile once they waited
    AUTO_APPROVE_SECONDS, the way an administrator would: `ztpki requests
    approve ID` (audited, actor "ztpki demo auto-approver"). Runs in the demo's
    supervisor process, after the servers forked; reads the store only, the
    token is the CLI's business."""

    def __init__(self, home: Path, interval: float = 0.5) -> None:
        super().__init__(name="ztpki-demo-approver", daemon=True)
        self.home = home
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        instance = Instance.open(self.home)
        try:
            pending = PendingRequests(instance.engine)
            while not self.stopped.wait(self.interval):
                for record in pending.list(status="pending"):
                    age = datetime.now(timezone.utc) - record.created_at
                    if record.profile == APPROVAL_PROFILE and age >= timedelta(seconds=AUTO_APPROVE_SECONDS):
                        self._approve(record.id)
        finally:
            instance.close()

    def _approve(self, request_id: str) -> None:
        ztpki = Path(sys.executable).parent / "ztpki"
        env = {**os.environ, "ZTPKI_ADMIN": "ztpki demo auto-approver"}
        done = subprocess.run(
            [str(ztpki), "--home", str(self.home), "requests", "approve", request_id],
            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60,
        )
        if done.returncode != 0:
            log.warning("demo auto-approver: %s", (done.stderr or done.stdout).strip())


# -- what the demo prints ------------------------------------------------------------------


def est_instructions(info: dict[str, Any]) -> str:
    """curl + openssl and strongSwan `pki` (5.9) commands for each EST flow."""
    est, url, t = info["est"], info["est_url"], f"{info['home']}/try"
    server = url.removesuffix(f"/{EST_PATH}")  # pki appends /.well-known/est/<operation> itself
    ca = est["tls_ca"]
    verify = f"openssl verify -CAfile {info['root_ca']} -untrusted {info['issuing_ca']}"
    curl = f"curl -sS --cacert {ca}"
    post = "-H 'Content-Type: application/pkcs10' --data-binary"
    csr = "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    p7 = "openssl base64 -d | openssl pkcs7 -inform DER -print_certs"
    blocked = info["blocked_device"]
    extra = est["extra_credentials"][0]
    pending = est["pending_credential"]
    return f"""
Enrol over EST at {url} (RFC 7030; DESIGN F5) with curl and openssl, or strongSwan's pki.
HTTPS on 127.0.0.1 only (the certificate names IP 127.0.0.1), trusted through the root {ca}.
Plain HTTP ({info['base_url']}) serves EST only to a TLS-terminating proxy listed in [est] trusted_proxies.

CA certificates, and the attributes the CSR should have:
  {curl} {url}/cacerts | {p7}
  {curl} {url}/csrattrs | openssl base64 -d | openssl asn1parse -inform DER

simpleenroll with HTTP Basic (user {est['user']}, device {est['device']}):
  {csr} -keyout {t}/est.key -subj "/CN={est['device']}" -outform DER | openssl base64 > {t}/est.csr
  {curl} --user {est['user']}:{est['password']} {post} @{t}/est.csr {url}/simpleenroll | {p7} > {t}/est.pem
  {verify} {t}/est.pem

simpleenroll authenticated by the TLS client certificate: the factory IDevID of {est['device_serial']}:
  {csr} -keyout {t}/idev-est.key -subj "/CN={est['device_serial']}" -outform DER | openssl base64 > {t}/idev-est.csr
  {curl} --cert {est['device_cert']} --key {est['device_key']} \\
      {post} @{t}/idev-est.csr {url}/simpleenroll | {p7} > {t}/idev-est.pem
  {verify} {t}/idev-est.pem

simplereenroll with the certificate just issued (same subject, new key):
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {t}/est2.key
  openssl x509 -x509toreq -in {t}/est.pem -signkey {t}/est2.key | openssl req -outform DER | openssl base64 > {t}/est2.csr
  {curl} --cert {t}/est.pem --key {t}/est.key {post} @{t}/est2.csr {url}/simplereenroll | {p7} > {t}/est2.pem
  {verify} {t}/est2.pem

serverkeygen: the server makes the key; the reply is multipart/mixed (PKCS#8 key, certificate):
  {curl} --user {est['user']}:{est['password']} {post} @{t}/est.csr {url}/serverkeygen -o {t}/skg.multipart

Refused: no credentials (401), a wrong password (401), a blocked device (403):
  {curl} -o /dev/null -w '%{{http_code}}\\n' {post} @{t}/est.csr {url}/simpleenroll
  {curl} -o /dev/null -w '%{{http_code}}\\n' --user {est['user']}:wrong {post} @{t}/est.csr {url}/simpleenroll
  {curl} -o /dev/null -w '%{{http_code}}\\n' --cert {blocked['cert']} --key {blocked['key']} {post} @{t}/est.csr {url}/simpleenroll

Waiting for approval: 202 with Retry-After: {est['retry_after_seconds']}; the same request sent again after that gets the
certificate (the demo approves after {est['auto_approve_seconds']} s with `ztpki requests approve ID`, as an administrator would;
the demo's [ra] poll_interval_seconds is {est['retry_after_seconds']}, the production default 30):
  {csr} -keyout {t}/wait.key -subj "/CN=approval" -outform DER | openssl base64 > {t}/wait.csr
  {curl} -i --user {pending['user']}:{pending['password']} {post} @{t}/wait.csr {est['pending_url']}/simpleenroll
  sleep {est['retry_after_seconds']}; {curl} --user {pending['user']}:{pending['password']} {post} @{t}/wait.csr {est['pending_url']}/simpleenroll | {p7}

strongSwan 5.9 pki (one-time credential {extra['user']}; pki --est polls a 202 every --interval;
it checks the issued certificate against its --cacert files, so it gets the issuing CA too):
  pki --estca --url {server} --cacert {ca} --caout {t}/pki-ca.pem --outform pem --force
  pki --gen --type ecdsa --size 256 --outform pem > {t}/pki.key
  pki --req --in {t}/pki.key --type ecdsa --dn "CN=pki" --outform pem > {t}/pki.csr
  pki --est --url {server} --cacert {ca} --cacert {info['issuing_ca']} --userpass {extra['user']}:{extra['password']} --in {t}/pki.csr --outform pem > {t}/pki.pem
  pki --gen --type ecdsa --size 256 --outform pem > {t}/pki2.key
  openssl x509 -x509toreq -in {t}/pki.pem -signkey {t}/pki2.key -out {t}/pki2.csr
  pki --est --url {server} --cacert {ca} --cacert {info['issuing_ca']} --cert {t}/pki.pem --key {t}/pki.key --in {t}/pki2.csr --outform pem > {t}/pki2.pem

demo.json "est" names {len(est['extra_credentials'])} more one-time credentials (one enrolment each), the IDevID
above with its chain, and pending_url with its own credential.
"""


__all__ = [
    "AutoApprover", "ensure_approval_profile", "ensure_demo_polling", "ensure_tls", "est_instructions", "prepare_est",
]
