"""Issuance checked by openssl: CSRs from `openssl req`, certificates from
`ztpki issue`, verified with `openssl verify` and read with `openssl x509`;
requests a server profile must refuse are refused cleanly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftools import Instance, cert_serial, issue, openssl_csr, run, split_pem, ztpki
from conftools import instance, workdir  # noqa: F401  (fixtures)


def fingerprint(pem: str | Path) -> str:
    text = pem.read_text() if isinstance(pem, Path) else pem + "\n"
    return run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=text).stdout.strip()


@pytest.mark.parametrize("key", ["ec-p256", "rsa-2048"])
def test_issued_certificate_verifies_with_openssl(instance: Instance, workdir: Path, key: str) -> None:
    cn = f"gw-{key}.example.net"
    csr = openssl_csr(workdir, "leaf", cn, key)
    leaf = workdir / "leaf.pem"
    issue(instance, csr, leaf)

    verify = run(["openssl", "verify", "-CAfile", instance.root_pem, "-untrusted", instance.issuing_pem, leaf])
    assert verify.stdout.strip() == f"{leaf}: OK"

    # The certificate first, then its chain up to the root.
    certs = split_pem(leaf.read_text())
    assert len(certs) == 3, leaf.read_text()
    assert fingerprint(certs[1]) == fingerprint(instance.issuing_pem)
    assert fingerprint(certs[2]) == fingerprint(instance.root_pem)
    leaf_subject = run(["openssl", "x509", "-in", leaf, "-noout", "-subject", "-nameopt", "RFC2253"]).stdout
    assert f"CN={cn}" in leaf_subject

    text = run(["openssl", "x509", "-in", leaf, "-noout", "-text"]).stdout
    san = re.search(r"X509v3 Subject Alternative Name:.*\n\s+(.+)", text)
    assert san and san.group(1).strip() == f"DNS:{cn}", text
    assert f"OCSP - URI:{instance.base_url}/ocsp" in text
    crl_dp = re.search(r"X509v3 CRL Distribution Points:.*\n\s+Full Name:\s*\n\s+(.+)", text)
    assert crl_dp and crl_dp.group(1).strip() == f"URI:{instance.base_url}/crl/issuing.crl", text
    assert re.search(r"X509v3 Basic Constraints: critical\s*\n\s+CA:FALSE", text), text
    assert re.search(r"X509v3 Extended Key Usage:.*\n\s+TLS Web Server Authentication\s*\n", text), text
    usage = re.search(r"X509v3 Key Usage: critical\s*\n\s+(.+)", text)
    assert usage, text
    expected_usage = "Digital Signature, Key Encipherment" if key.startswith("rsa") else "Digital Signature"
    assert usage.group(1).strip() == expected_usage


def certs_list(instance: Instance) -> list[dict[str, object]]:
    data = json.loads(ztpki("certs", "list", "--json", home=instance.home).stdout)
    assert isinstance(data, list)
    return data


REFUSED = {
    "rsa-1024": (("rsa-1024",), r"1024"),
    "ca-true": (("ec-p256", "-addext", "basicConstraints=critical,CA:TRUE"), r"CA:TRUE"),
    "key-cert-sign": (("ec-p256", "-addext", "keyUsage=critical,digitalSignature,keyCertSign"), r"key.?cert.?sign"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unacceptable_csr_is_refused_cleanly(instance: Instance, workdir: Path, case: str) -> None:
    openssl_args, problem = REFUSED[case]
    csr = openssl_csr(workdir, "bad", f"{case}.example.net", *openssl_args)
    before = certs_list(instance)
    out = workdir / "bad.pem"

    proc = ztpki("issue", "--csr", csr, "--profile", "server", "--out", out, home=instance.home, check=False)

    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.search(problem, lines[0], re.I), f"the message does not name the problem: {lines[0]!r}"
    assert "internal error" not in lines[0]
    assert proc.stdout == ""
    assert not out.exists() or out.read_text() == ""
    assert certs_list(instance) == before


def test_issue_records_the_certificate(instance: Instance, workdir: Path) -> None:
    csr = openssl_csr(workdir, "rec", "rec.example.net")
    leaf = workdir / "rec.pem"
    serial = issue(instance, csr, leaf)
    records = {r["serial"]: r for r in certs_list(instance)}
    assert serial.lower().lstrip("0") in records
    record = records[serial.lower().lstrip("0")]
    assert record["status"] == "valid" and record["profile"] == "server" and record["ca"] == "issuing"
    assert cert_serial(leaf) == serial
