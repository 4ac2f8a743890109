"""The CMP transaction hijack (security issue), end to end against `ztpki serve`.

A victim enrols and confirms over HTTP. An attacker holding only a
self-signed certificate sends an ir with the victim's transactionID and the
victim's public key, then a rejecting certConf. The attacker gets refusals,
OCSP says `good` for the victim's certificate after the certConf and after
the confirmation wait, and the audit log holds every step and verifies.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftools import Instance, Server, edit_config, run, serving, ztpki
from protocols.cmp.bodies import FailInfo, PkiStatus
from protocols.cmp.client import (
    BODY_IR,
    CertCredential,
    MacCredential,
    cert_conf,
    cert_req_body,
    cert_request,
    cert_request_der,
    issued_certificate,
    post,
    protect,
    refusal,
    request_header,
)

CONFIRM_WAIT = 10  # the smallest [cmp] confirm_wait_seconds allows
SWEEP = 2  # [maintenance] interval_seconds: each worker sweeps every 1-2 s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    def quick(inst: Instance, _base: Path) -> None:
        edit_config(inst, cmp={"confirm_wait_seconds": CONFIRM_WAIT}, maintenance={"interval_seconds": SWEEP})

    yield from serving(tmp_path_factory, "hijack", quick)


def mac_device(server: Server, serial: str, tmp_path: Path) -> MacCredential:
    """A registered device and a MAC credential for it (the CLI, as an operator would)."""
    records = tmp_path / f"{serial}.csv"
    records.write_text(f"serial,vendor,profile\n{serial},,enb\n")
    ztpki("devices", "import", records, home=server.inst.home)
    out = ztpki("credentials", "create", "--device", serial, "--kind", "mac", "--json", home=server.inst.home).stdout
    created = json.loads(out[out.index("{") : out.rindex("}") + 1])
    return MacCredential(created["reference"], created["secret"].encode())


def self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    from datetime import datetime, timedelta, timezone

    from cryptography.hazmat.primitives import hashes

    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "attacker")])
    now = datetime.now(timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def ocsp_status(server: Server, certificate: Path) -> str:
    out = run(["openssl", "ocsp", "-issuer", server.inst.issuing_pem, "-cert", certificate,
               "-url", f"{server.url}/ocsp", "-CAfile", server.inst.root_pem]).stdout
    return out.split(f"{certificate}: ", 1)[1].split()[0]


def audit(server: Server) -> list[dict[str, object]]:
    out = ztpki("audit", "list", "--json", home=server.inst.home).stdout
    records: list[dict[str, object]] = json.loads(out[out.index("[") :])
    return records


def test_attacker_replaying_the_victims_transaction_is_refused_and_revokes_nothing(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/.well-known/cmp"
    victim = mac_device(server, "VICTIM-1", tmp_path)

    # The victim enrols and confirms.
    victim_key = ec.generate_private_key(ec.SECP256R1())
    tid, request = cert_request(victim, victim_key)
    der = issued_certificate(post(url, request))
    assert post(url, cert_conf(victim, tid, der)).body_type == "pkiconf"
    certificate = x509.load_der_x509_certificate(der)
    pem = tmp_path / "victim.pem"
    pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    assert ocsp_status(server, pem) == "good"

    # The attacker: the victim's transactionID and public key, no POP, a self-signed certificate.
    attacker_key = ec.generate_private_key(ec.SECP256R1())
    attacker = CertCredential(attacker_key, (self_signed(attacker_key),))
    spki = victim_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = cert_req_body(BODY_IR, [cert_request_der(spki, certificate.subject)])
    hijack = post(url, protect(attacker, request_header(attacker, tid), body))
    status = refusal(hijack)
    assert status.status == PkiStatus.REJECTION and FailInfo.SIGNER_NOT_TRUSTED in status.fail_info
    rejecting = post(url, cert_conf(attacker, tid, der, accept=False))
    assert rejecting.body_type == "error"
    assert ocsp_status(server, pem) == "good"

    # After the confirmation wait the workers' sweeps find nothing of the victim's to revoke.
    time.sleep(CONFIRM_WAIT + 2 * SWEEP + 1)
    assert ocsp_status(server, pem) == "good"
    assert ztpki("audit", "verify", home=server.inst.home).returncode == 0

    # Every step is in the audit log: the victim's issuance and confirmation
    # in the hash chain; the attacker, whom nothing authenticated, in the
    # per-source refusal counts (ztpki audit noise), with a sample naming
    # the transaction.
    log = audit(server)
    serial_hex = format(certificate.serial_number, "x")
    assert any(r["outcome"] == "issued" and r["serial"] == serial_hex for r in log)
    assert not any(r["outcome"] == "revoked" and r["serial"] == serial_hex for r in log)
    out = ztpki("audit", "noise", "--json", "--source", "127.0.0.1", home=server.inst.home).stdout
    noise = json.loads(out[out.index("[") :])
    cmp_refusals = [row for row in noise if row["protocol"] == "cmp"]
    assert sum(int(row["count"]) for row in cmp_refusals) >= 2, noise
    assert any(tid.hex() in json.dumps(row) for row in cmp_refusals), noise


def test_with_no_cmp_traffic_an_unconfirmed_certificate_is_revoked_after_the_wait(server: Server, tmp_path: Path) -> None:
    """Issue 18: the confirm-wait sweep runs in the background, not on a
    device's request; the revocation reaches OCSP and the served CRL and is
    audited."""
    url = f"{server.url}/.well-known/cmp"
    device = mac_device(server, "SILENT-1", tmp_path)
    started = time.monotonic()
    _, request = cert_request(device, ec.generate_private_key(ec.SECP256R1()))
    certificate = x509.load_der_x509_certificate(issued_certificate(post(url, request)))
    assert time.monotonic() - started < CONFIRM_WAIT  # the ir did not wait for a sweep
    pem = tmp_path / "silent.pem"
    pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    assert ocsp_status(server, pem) == "good"
    deadline = time.monotonic() + CONFIRM_WAIT + 4 * SWEEP + 15
    while ocsp_status(server, pem) != "revoked":  # OCSP is no CMP traffic
        assert time.monotonic() < deadline, "not revoked after the confirmation wait\n" + server.log()
        time.sleep(1)
    crl = run(["curl", "-sf", f"{server.url}/crl/issuing.crl", "-o", tmp_path / "issuing.crl"])
    assert crl.returncode == 0
    listed = run(["openssl", "crl", "-inform", "DER", "-in", tmp_path / "issuing.crl", "-noout", "-text"]).stdout
    assert format(certificate.serial_number, "X").upper() in listed.replace(":", "").upper()
    serial_hex = format(certificate.serial_number, "x")
    revoked = [r for r in audit(server) if r["outcome"] == "revoked" and r["serial"] == serial_hex]
    assert revoked and "no certConf" in json.dumps(revoked[0])
    assert ztpki("audit", "verify", home=server.inst.home).returncode == 0
