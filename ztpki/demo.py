"""`ztpki demo`: a demo instance in DIR, demo.json for scripts, and the server.

Besides the CA hierarchy, the demo sets up what a CMP client needs to try
every flow (DESIGN F1): MAC credentials of registered eNBs, a simulated
vendor PKI whose root the instance trusts and factory IDevIDs (IEEE 802.1AR
style: the device serial in the subject serialNumber) of registered devices,
plus devices that must be refused (unregistered, untrusted vendor, blocked).
Running it again on the same DIR reuses all of it.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.template import IssuanceOrder
from ra.admin import block_device
from vendor_trust.credentials import BadCredential
from ztpki.assembly import Instance
from ztpki.config import CONFIG_NAME
from ztpki.demo_est import (
    AutoApprover, ensure_approval_profile, ensure_demo_polling, ensure_tls, est_instructions, prepare_est,
)
from ztpki.setup_instance import init_instance

VENDOR = "demo-vendor"
MAC_DEVICE = "DEMO-ENB-MAC"  # the device of the main MAC credential
DEVICES = tuple(f"DEMO-ENB-{n:04d}" for n in range(1, 7))  # registered, with IDevIDs
EXTRA_MAC_DEVICES = tuple(f"DEMO-MAC-{n:02d}" for n in range(1, 25))  # one credential each
UNREGISTERED = "DEMO-ENB-UNREGISTERED"
UNTRUSTED = "DEMO-ENB-FAKE"
BLOCKED = "DEMO-ENB-BLOCKED"
PROFILE = "enb"
CMP_PATH = ".well-known/cmp"


def _demo_certificate(instance: Instance, clients: Path, name: str, *, revoke: bool = False) -> dict[str, str]:
    """A client-side key (the device's, not the CA's) and its certificate."""
    key_path = clients / f"{name}.key"
    cert_path = clients / f"{name}.pem"
    if not cert_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        order = IssuanceOrder(
            ca=instance.settings.default_ca,
            profile="client",
            subject=x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ztpki demo"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]),
            public_key=key.public_key(),
            device_id=name,
        )
        issued = instance.cas.issue(order)
        _write_key(key_path, key)
        cert_path.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
        if revoke:
            instance.revocations.revoke(issued.serial, "keyCompromise")
    return {"cert": str(cert_path), "key": str(key_path)}


# -- a simulated vendor PKI: root → device CA → IDevIDs ------------------------------


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    partial = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    os.chmod(partial, 0o600)  # whatever the umask
    os.replace(partial, path)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


class _VendorPki:
    """A vendor root and device CA kept in a directory (made on first use)."""

    def __init__(self, directory: Path, organization: str) -> None:
        self.directory = _private_dir(directory)
        self.organization = organization
        self.root, self.root_key = self._authority("root", None)
        self.ca, self.ca_key = self._authority("ca", (self.root, self.root_key))

    def _name(self, common_name: str, serial: str | None = None) -> x509.Name:
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization)]
        if serial is not None:
            attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        return x509.Name(attributes)

    def _authority(
        self, stem: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert_path, key_path = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
        key = ec.generate_private_key(ec.SECP256R1())
        name = self._name(f"{self.organization} {'Root CA' if issuer is None else 'Device CA'}")
        certificate = _sign(
            name, key, issuer, years=20 if issuer is None else 15,
            constraints=x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0),
            usage=x509.KeyUsage(False, False, False, False, False, True, True, False, False),
        )
        _write_key(key_path, key)
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return certificate, key

    def idevid(self, serial: str) -> dict[str, str]:
        """A factory certificate for the device; its file holds the device
        certificate followed by the device CA and the root."""
        devices = _private_dir(self.directory / "devices")
        cert_path, key_path = devices / f"{serial}.pem", devices / f"{serial}.key"
        if not (cert_path.exists() and key_path.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            certificate = _sign(
                self._name(f"eNB {serial}", serial), key, (self.ca, self.ca_key), years=10,
                constraints=x509.BasicConstraints(ca=False, path_length=None),
                usage=x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            )
            _write_key(key_path, key)
            chain = (certificate, self.ca, self.root)
            cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        return {"serial": serial, "cert": str(cert_path), "key": str(key_path)}


def _sign(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    years: int,
    constraints: x509.BasicConstraints,
    usage: x509.KeyUsage,
) -> x509.Certificate:
    issuer_name, issuer_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    now = datetime.now(timezone.utc).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365 * years))
        .add_extension(constraints, critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


# -- registry, credentials, trust -------------------------------------------------------


def _register(instance: Instance, serial: str, vendor: str | None) -> None:
    if instance.registry.get(serial) is None:
        instance.registry.register(serial=serial, vendor=vendor, profile=PROFILE)


def _trust(instance: Instance, root: x509.Certificate) -> None:
    instance.trust.add_vendor(VENDOR, exist_ok=True)
    if all(anchor.certificate != root for anchor in instance.trust.anchors(VENDOR)):
        instance.trust.add_anchor(VENDOR, root)


def _mac_credential(instance: Instance, serial: str, previous: dict[str, str] | None) -> dict[str, str]:
    """The credential demo.json named before, if it still works; else a new one."""
    _register(instance, serial, None)
    if previous and previous.get("ref") and previous.get("secret"):
        try:
            found = instance.credentials.mac_secret(previous["ref"])
            if found.device_serial == serial and found.secret == previous["secret"].encode():
                return {"ref": previous["ref"], "secret": previous["secret"]}
        except BadCredential:
            pass
    # No use limit: each credential may enrol (ir + certConf) as often as a script likes.
    reference, secret = instance.credentials.create_mac(device_serial=serial)
    return {"ref": reference, "secret": secret}


def _previous(directory: Path) -> dict[str, Any]:
    try:
        found = json.loads((directory / "demo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _prepare_cmp(instance: Instance, directory: Path, previous: dict[str, Any]) -> dict[str, Any]:
    old = previous.get("cmp")
    old = old if isinstance(old, dict) else {}
    old_extra = old.get("extra_credentials")
    old_extra = [c if isinstance(c, dict) else None for c in old_extra] if isinstance(old_extra, list) else []
    main = _mac_credential(instance, MAC_DEVICE, old)
    extra = [
        _mac_credential(instance, serial, old_extra[n] if n < len(old_extra) else None)
        for n, serial in enumerate(EXTRA_MAC_DEVICES)
    ]
    vendor = _VendorPki(directory / "vendor", "Demo Devices")
    _trust(instance, vendor.root)
    devices = []
    for serial in DEVICES:
        _register(instance, serial, VENDOR)
        devices.append(vendor.idevid(serial))
    # Same names as the trusted vendor, other keys: a counterfeit.
    stranger = _VendorPki(directory / "vendor" / "untrusted", "Demo Devices")
    _register(instance, UNTRUSTED, VENDOR)
    _register(instance, BLOCKED, VENDOR)
    if instance.registry.require(BLOCKED).state != "blocked":
        block_device(instance.core, BLOCKED, "cessationOfOperation", admin="ztpki demo")
    unregistered = vendor.idevid(UNREGISTERED)
    untrusted = stranger.idevid(UNTRUSTED)
    protection = instance.cmp_protection()
    return {
        "cmp_url": f"{instance.settings.base_url.rstrip('/')}/{CMP_PATH}",
        "cmp": {
            **main,
            "server_cert": str(instance.settings.home / f"{protection.key_label}.pem"),
            "extra_credentials": extra,
        },
        "vendor": {
            "root": str(directory / "vendor" / "root.pem"),
            "devices": devices,
            "unregistered_device": {"cert": unregistered["cert"], "key": unregistered["key"]},
            "untrusted_device": {"cert": untrusted["cert"], "key": untrusted["key"]},
        },
        "blocked_device": vendor.idevid(BLOCKED),
    }


def prepare_demo(directory: Path, *, port: int, tls_port: int | None = None) -> dict[str, Any]:
    directory = directory.resolve()
    if not (directory / CONFIG_NAME).exists():
        init_instance(directory, port=port, organization="ztpki demo").close()
    ensure_approval_profile(directory)  # before the instance reads its profiles
    ensure_demo_polling(directory)
    instance = Instance.open(directory)
    try:
        settings = instance.settings
        base_url = settings.base_url
        clients = directory / "clients"
        clients.mkdir(exist_ok=True)
        _private_dir(directory / "try")  # where the printed commands write
        good = _demo_certificate(instance, clients, "demo-device")
        revoked = _demo_certificate(instance, clients, "revoked-device", revoke=True)
        urls = instance.cas.urls
        tls = ensure_tls(instance, directory, tls_port or settings.port + 1)
        previous = _previous(directory)
        cmp_info = _prepare_cmp(instance, directory, previous)
        info: dict[str, Any] = {
            "home": str(directory),
            "root_ca": str(directory / "root.pem"),
            "issuing_ca": str(directory / f"{settings.default_ca}.pem"),
            "base_url": base_url,
            "crl_url": urls.crl_url(settings.default_ca),
            "root_crl_url": urls.crl_url("root"),
            "ocsp_url": urls.ocsp_url(),
            "examples": {"good_certificate": good, "revoked_certificate": revoked},
            **cmp_info,
            **prepare_est(instance, tls, previous, cmp_info["vendor"]["devices"][1]),
        }
        partial = directory / ".demo.json.tmp"
        partial.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        partial.replace(directory / "demo.json")
        return info
    finally:
        instance.close()


def cmp_instructions(info: dict[str, Any]) -> str:
    """openssl cmp (OpenSSL 3.0) commands for each CMP flow, in an order that works."""
    url = urlsplit(info["cmp_url"])
    server = f"-server {url.hostname}:{url.port} -path {url.path.lstrip('/')}"
    root, issuing, cmp = info["root_ca"], info["issuing_ca"], info["cmp"]
    mac = f"-ref {cmp['ref']} -secret pass:{cmp['secret']} -recipient \"/CN=ztpki\""
    device, blocked = info["vendor"]["devices"][0], info["blocked_device"]
    t = f"{info['home']}/try"
    genkey = "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out"
    verify = f"openssl verify -CAfile {root} -untrusted {issuing}"
    return f"""
Enrol over CMP at {info['cmp_url']} (RFC 9483; 3GPP TS 33.310 §9) with openssl cmp (OpenSSL 3.0).
Replies are signed by the CMP protection certificate {cmp['server_cert']}:
trust the root with -trusted, or pin that certificate with -srvcert. The commands write to {t}/.

ir protected by a MAC credential (PBM; the operator root comes back in caPubs):
  {genkey} {t}/mac.key
  openssl cmp -cmd ir {server} \\
      {mac} -trusted {root} \\
      -newkey {t}/mac.key -subject "/CN={MAC_DEVICE}" -certout {t}/mac.pem -cacertsout {t}/capubs.pem
  {verify} {t}/mac.pem

ir signed by the factory IDevID of eNB {device['serial']} (its vendor chain goes in extraCerts):
  {genkey} {t}/enb.key
  openssl cmp -cmd ir {server} \\
      -cert {device['cert']} -key {device['key']} -srvcert {cmp['server_cert']} \\
      -newkey {t}/enb.key -subject "/CN={device['serial']}" -certout {t}/enb.pem -cacertsout {t}/enb-capubs.pem
  openssl verify -CAfile {t}/enb-capubs.pem -untrusted {issuing} {t}/enb.pem

cr signed with the certificate the first ir gave:
  {genkey} {t}/cr.key
  openssl cmp -cmd cr {server} \\
      -cert {t}/mac.pem -key {t}/mac.key -trusted {root} \\
      -newkey {t}/cr.key -subject "/CN={MAC_DEVICE}" -certout {t}/cr.pem
  {verify} {t}/cr.pem

p10cr with a PKCS#10 request made by openssl req:
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {t}/p10.key \\
      -subj "/CN={MAC_DEVICE}" -out {t}/p10.csr
  openssl cmp -cmd p10cr {server} \\
      {mac} -trusted {root} \\
      -csr {t}/p10.csr -certout {t}/p10.pem
  {verify} {t}/p10.pem

kur: the eNB renews with a new key, signing with its current certificate:
  {genkey} {t}/enb2.key
  openssl cmp -cmd kur {server} \\
      -cert {t}/enb.pem -key {t}/enb.key -trusted {root} \\
      -newkey {t}/enb2.key -certout {t}/enb2.pem
  {verify} {t}/enb2.pem

rr: revoke the renewed certificate (reason 1, keyCompromise); OCSP says so at once:
  openssl cmp -cmd rr {server} \\
      -cert {t}/enb2.pem -key {t}/enb2.key -trusted {root} -oldcert {t}/enb2.pem -revreason 1
  openssl ocsp -issuer {issuing} -cert {t}/enb2.pem -url {info['ocsp_url']} -CAfile {root}

genm: ask for the CA certificates (id-it-caCerts):
  openssl cmp -cmd genm {server} \\
      {mac} -trusted {root} -infotype caCerts

Refused: eNB {blocked['serial']} is blocked (notAuthorized):
  {genkey} {t}/blocked.key
  openssl cmp -cmd ir {server} \\
      -cert {blocked['cert']} -key {blocked['key']} -trusted {root} \\
      -newkey {t}/blocked.key -subject "/CN={blocked['serial']}" -certout {t}/blocked.pem

demo.json also names {len(cmp['extra_credentials'])} more MAC credentials (one per request for scripts),
{len(info['vendor']['devices'])} registered eNBs with IDevIDs under the trusted vendor root {info['vendor']['root']},
and devices that are refused: unregistered_device, untrusted_device (signerNotTrusted), blocked_device.
"""


def instructions(info: dict[str, Any]) -> str:
    home = info["home"]
    ztpki = Path(sys.executable).parent / "ztpki"
    good = info["examples"]["good_certificate"]["cert"]
    revoked = info["examples"]["revoked_certificate"]["cert"]
    return f"""
ztpki demo PKI is serving on {info['base_url']} and {info['est_url'].split('/.well-known')[0]}   (Ctrl-C stops it)
Instance: {home}     demo.json: {home}/demo.json

Below, each part starts with its heading; jump to the protocol you came for:
  [1] Admin: issue from a CSR, OCSP, revoke, CRL     (ztpki CLI, openssl)
  [2] CMP for eNBs and small cells                   (openssl cmp; 3GPP TS 33.310)
  [3] EST for uCPE routers                           (curl + openssl, strongSwan pki)

== [1] Admin: issue from a CSR, OCSP, revoke, CRL ==

Issue a certificate from a CSR made by openssl:
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /tmp/srv.key \\
      -subj "/O=Example/CN=gw1.example.net" -out /tmp/srv.csr
  {ztpki} --home {home} issue --csr /tmp/srv.csr --profile server --out /tmp/srv.pem
  openssl verify -CAfile {info['root_ca']} -untrusted {info['issuing_ca']} /tmp/srv.pem

Ask OCSP (the URL is in the certificate's AIA):
  openssl ocsp -issuer {info['issuing_ca']} -cert {good} -url {info['ocsp_url']} -CAfile {info['root_ca']} -resp_text
  openssl ocsp -issuer {info['issuing_ca']} -cert {revoked} -url {info['ocsp_url']} -CAfile {info['root_ca']}

Revoke, then ask again (OCSP says revoked at once):
  {ztpki} --home {home} certs list
  {ztpki} --home {home} revoke SERIAL --reason keyCompromise

Fetch and check the CRL:
  curl -s {info['crl_url']} | openssl crl -inform DER -noout -text
  curl -s {info['crl_url']} -o /tmp/issuing.crl && openssl crl -inform DER -in /tmp/issuing.crl -CAfile {info['issuing_ca']} -noout

CA certificates: {info['base_url']}/ca/root.cer  {info['base_url']}/ca/issuing.cer

== [2] CMP for eNBs and small cells ==
{cmp_instructions(info)}
== [3] EST for uCPE routers ==
{est_instructions(info)}"""


def run_demo(directory: Path, *, port: int, tls_port: int | None = None, serve: bool = True) -> None:
    info = prepare_demo(directory, port=port, tls_port=tls_port)
    if not serve:
        print(instructions(info).replace("is serving on", "is ready (not serving) for"))
        return
    from ztpki.server import serve as run_server

    settings = Instance.open(Path(info["home"])).settings
    approver = AutoApprover(settings.home)

    def when_ready() -> None:
        # Started only now: the servers have forked, so no token or database
        # connection of this thread crosses a fork.
        approver.start()
        print(instructions(info), flush=True)

    code = run_server(settings.home, host="127.0.0.1", port=settings.port, workers=2, on_ready=when_ready)
    approver.stopped.set()
    sys.exit(code)
