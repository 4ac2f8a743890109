"""`ztpki demo --dir DIR --no-serve`: DIR/demo.json, and a second run reuses the instance."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from clihelpers import cli


def test_demo_prepares_and_reuses(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    first = cli("demo", "--dir", demo_dir, "--no-serve", "--port", "18443").ok()
    assert "Traceback" not in first.stdout + first.stderr
    info = json.loads((demo_dir / "demo.json").read_text())
    for key in ("home", "root_ca", "issuing_ca", "base_url", "crl_url", "ocsp_url"):
        assert isinstance(info.get(key), str) and info[key], f"demo.json lacks {key}: {info}"
    assert Path(info["home"]) == demo_dir.resolve()
    assert info["base_url"] == "http://127.0.0.1:18443"
    assert info["crl_url"].startswith(info["base_url"] + "/") and info["crl_url"].endswith(".crl")
    assert info["ocsp_url"].startswith(info["base_url"] + "/")

    root = x509.load_pem_x509_certificate(Path(info["root_ca"]).read_bytes())
    issuing = x509.load_pem_x509_certificate(Path(info["issuing_ca"]).read_bytes())
    assert root.subject == root.issuer
    assert issuing.issuer == root.subject and issuing.subject != root.subject
    issuing.verify_directly_issued_by(root)

    # The URLs in the instance's certificates are the ones demo.json names.
    for example in info.get("examples", {}).values():
        leaf = x509.load_pem_x509_certificate(Path(example["cert"]).read_bytes())
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        assert info["ocsp_url"] in [d.access_location.value for d in aia]
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", info["root_ca"], "-untrusted", info["issuing_ca"], example["cert"]],
            capture_output=True, text=True,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr

    check_cmp_part(info)
    assert "openssl cmp -cmd ir" in first.stdout and info["cmp_url"] in first.stdout

    listed = cli("--home", info["home"], "certs", "list", "--json").json()
    devices = cli("--home", info["home"], "devices", "list", "--json").json()
    credentials = cli("--home", info["home"], "credentials", "list", "--json").json()
    vendors = cli("--home", info["home"], "vendors", "list", "--json").json()
    root_bytes = Path(info["root_ca"]).read_bytes()
    device_files = {path: path.read_bytes() for path in (demo_dir / "vendor").rglob("*") if path.is_file()}

    second = cli("demo", "--dir", demo_dir, "--no-serve").ok()
    assert "Traceback" not in second.stdout + second.stderr
    again = json.loads((demo_dir / "demo.json").read_text())
    assert again == info
    assert Path(again["root_ca"]).read_bytes() == root_bytes
    # Nothing made twice: no certificate, registration, credential, anchor or vendor key.
    assert cli("--home", info["home"], "certs", "list", "--json").json() == listed
    assert cli("--home", info["home"], "devices", "list", "--json").json() == devices
    assert cli("--home", info["home"], "credentials", "list", "--json").json() == credentials
    assert cli("--home", info["home"], "vendors", "list", "--json").json() == vendors
    assert {path: path.read_bytes() for path in (demo_dir / "vendor").rglob("*") if path.is_file()} == device_files


def pem_certificates(path: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def subject_serial(certificate: x509.Certificate) -> str:
    (attribute,) = certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return str(attribute.value)


def check_cmp_part(info: dict[str, Any]) -> None:
    """demo.json's CMP keys (issue 5): the URL, MAC credentials, the pinned
    server certificate, the vendor PKI and the devices that are refused."""
    home = info["home"]
    assert info["cmp_url"] == info["base_url"] + "/.well-known/cmp"
    cmp = info["cmp"]
    assert set(cmp) == {"ref", "secret", "server_cert", "extra_credentials"}
    server_cert = x509.load_pem_x509_certificate(Path(cmp["server_cert"]).read_bytes())
    eku = server_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28") in eku  # id-kp-cmcRA (RFC 9483 §3.2)
    issuing = x509.load_pem_x509_certificate(Path(info["issuing_ca"]).read_bytes())
    server_cert.verify_directly_issued_by(issuing)

    mac = [{"ref": cmp["ref"], "secret": cmp["secret"]}] + cmp["extra_credentials"]
    assert len(mac) >= 21 and all(set(c) == {"ref", "secret"} for c in mac)
    assert len({c["ref"] for c in mac}) == len(mac)
    stored = {c["reference"]: c for c in cli("--home", home, "credentials", "list", "--json").json()}
    for credential in mac:
        found = stored[credential["ref"]]
        assert found["kind"] == "mac" and found["state"] == "usable"
        assert found["max_uses"] is None or found["max_uses"] - found["uses"] >= 1  # an ir + certConf each

    vendor = info["vendor"]
    assert set(vendor) == {"root", "devices", "unregistered_device", "untrusted_device"}
    assert len(vendor["devices"]) >= 5
    root = x509.load_pem_x509_certificate(Path(vendor["root"]).read_bytes())
    assert root.subject == root.issuer
    registry = {d["serial"]: d for d in cli("--home", home, "devices", "list", "--json").json()}
    for device in vendor["devices"] + [info["blocked_device"]]:
        assert set(device) == {"serial", "cert", "key"}
        chain = pem_certificates(device["cert"])
        assert len(chain) >= 2 and subject_serial(chain[0]) == device["serial"]
        chain[0].verify_directly_issued_by(chain[1])
        assert registry[device["serial"]]["profile"] == "enb"
        for path in (device["cert"], device["key"]):
            assert Path(path).resolve().is_relative_to(Path(home) / "vendor")
        assert Path(device["key"]).stat().st_mode & 0o777 == 0o600
        checked = cli("--home", home, "vendors", "check", device["cert"])
        assert checked.exit_code == 0, checked.describe()
    assert registry[info["blocked_device"]["serial"]]["state"] == "blocked"
    assert all(registry[d["serial"]]["state"] != "blocked" for d in vendor["devices"])

    unregistered = pem_certificates(vendor["unregistered_device"]["cert"])
    assert subject_serial(unregistered[0]) not in registry
    assert cli("--home", home, "vendors", "check", vendor["unregistered_device"]["cert"]).exit_code == 0
    untrusted = pem_certificates(vendor["untrusted_device"]["cert"])
    assert untrusted[-1].subject == root.subject and untrusted[-1] != root  # a look-alike vendor root
    assert cli("--home", home, "vendors", "check", vendor["untrusted_device"]["cert"]).exit_code != 0
    for refused in (vendor["unregistered_device"], vendor["untrusted_device"]):
        assert set(refused) == {"cert", "key"}
        assert Path(refused["key"]).stat().st_mode & 0o777 == 0o600
