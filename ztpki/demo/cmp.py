"""The demo's CMP part (DESIGN F1): MAC credentials of registered eNBs,
factory IDevIDs of registered devices under the trusted vendor root, plus
devices that must be refused (unregistered, untrusted vendor, blocked), and
the openssl cmp commands that try each flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ra.admin import block_device
from vendor_trust.credentials import BadCredential
from ztpki.demo.vendor import VENDOR, VendorPki, trust_vendor
from ztpki.instance import Instance

MAC_DEVICE = "DEMO-ENB-MAC"  # the device of the main MAC credential
DEVICES = tuple(f"DEMO-ENB-{n:04d}" for n in range(1, 7))  # registered, with IDevIDs
EXTRA_MAC_DEVICES = tuple(f"DEMO-MAC-{n:02d}" for n in range(1, 25))  # one credential each
UNREGISTERED = "DEMO-ENB-UNREGISTERED"
UNTRUSTED = "DEMO-ENB-FAKE"
BLOCKED = "DEMO-ENB-BLOCKED"
PROFILE = "enb"
CMP_PATH = ".well-known/cmp"


def _register(instance: Instance, serial: str, vendor: str | None) -> None:
    if instance.registry.get(serial) is None:
        instance.registry.register(serial=serial, vendor=vendor, profile=PROFILE)


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


def prepare_cmp(instance: Instance, directory: Path, previous: dict[str, Any]) -> dict[str, Any]:
    old = previous.get("cmp")
    old = old if isinstance(old, dict) else {}
    old_extra = old.get("extra_credentials")
    old_extra = [c if isinstance(c, dict) else None for c in old_extra] if isinstance(old_extra, list) else []
    main = _mac_credential(instance, MAC_DEVICE, old)
    extra = [
        _mac_credential(instance, serial, old_extra[n] if n < len(old_extra) else None)
        for n, serial in enumerate(EXTRA_MAC_DEVICES)
    ]
    vendor = VendorPki(directory / "vendor", "Demo Devices")
    trust_vendor(instance, vendor.root)
    devices = []
    for serial in DEVICES:
        _register(instance, serial, VENDOR)
        devices.append(vendor.idevid(serial))
    # Same names as the trusted vendor, other keys: a counterfeit.
    stranger = VendorPki(directory / "vendor" / "untrusted", "Demo Devices")
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
