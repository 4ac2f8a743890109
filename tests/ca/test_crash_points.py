"""A crash at each fault-injection point of the CA's multi-commit steps,
then a restart and one reconciliation sweep (issue 18): nothing is missing,
nothing is left 'signing', OCSP and the stored CRL agree with the store, and
the audit log records every repair and verifies. On SQLite and PostgreSQL.

The child process dies with os._exit at the point (storage.db.crash_point), as
under kill -9 between two commits.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
from asn1crypto import keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from storage.db import CRASH_ENV, CRASH_EXIT_CODE
from ztpki.instance import Instance
from ztpki.maintenance import run_once, tasks_for
from ztpki.setup_instance import init_instance

ROOT = Path(__file__).resolve().parents[2]

# Start-up reconciliation, three issuances, a revocation, the CRL fetch
# that re-issues the stale CRL. Each line printed is a promise the store
# must keep after the crash.
WORKLOAD = r"""
import sys
from datetime import timedelta
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from ca.reconcile import reconcile_signing
from ca.template import IssuanceOrder
from ztpki.instance import Instance

instance = Instance.open(Path(sys.argv[1]))
reconcile_signing(instance.revocations, timedelta(0))
name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "crash-point")])
serials = []
for _ in range(3):
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    issued = instance.cas.issue(IssuanceOrder(ca="issuing", profile="client", subject=name, public_key=key))
    serials.append(issued.serial)
    print("issued", format(issued.serial, "x"), flush=True)
instance.revocations.revoke(serials[0], "keyCompromise")
print("revoked", format(serials[0], "x"), flush=True)
instance.revocations.current_crl("issuing")
print("crl", flush=True)
"""

# (points to crash at first, to set the scene; the point under test)
SCENARIOS = [
    ((), "issue.reserved"),
    ((), "issue.signed"),
    ((), "revoke.marked"),
    ((), "crl.numbered"),
    ((), "crl.signed"),
    (("issue.signed",), "reconcile.revoked"),
]


@pytest.fixture(params=["sqlite", "postgres"])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    database = None
    if request.param == "postgres":
        cluster = request.getfixturevalue("postgres_cluster")
        name = f"ztpki_crash_{uuid.uuid4().hex[:12]}"
        database = cluster.create_database(name)
    home = tmp_path / "home"
    init_instance(home, database=database).close()
    yield home
    if database is not None:
        cluster.drop_database(name)


def _crash_at(home: Path, point: str) -> list[tuple[str, str]]:
    """Run the workload until it dies at `point`; what it printed."""
    env = {**os.environ, CRASH_ENV: point, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", WORKLOAD, str(home)], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=120,
    )
    assert child.returncode == CRASH_EXIT_CODE, f"never reached {point}: {child.returncode} {child.stderr}"
    return [_parse(line) for line in child.stdout.splitlines()]


def _parse(line: str) -> tuple[str, str]:
    word, _, rest = line.partition(" ")
    return word, rest


def _ocsp_status(instance: Instance, serial: int) -> ocsp.OCSPCertStatus | None:
    """What the responder answers for `serial` under the issuing CA, by CertID
    hashes: rows without a certificate can be asked about too."""
    issuer = instance.cas.authority("issuing").certificate
    spki = issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_bits = bytes(keys.PublicKeyInfo.load(spki)["public_key"].contents[1:])
    request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        hashlib.sha1(issuer.subject.public_bytes()).digest(), hashlib.sha1(key_bits).digest(), serial, hashes.SHA1()
    ).build()
    response = ocsp.load_der_ocsp_response(instance.ocsp.respond(request.public_bytes(serialization.Encoding.DER)))
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    return response.certificate_status


def _assert_consistent(instance: Instance, promised: list[tuple[str, str]]) -> None:
    store = instance.store
    issuing = instance.cas.authority("issuing")
    records = {r.serial_hex: r for r in store.certificates(authority="issuing")}
    # Nothing missing: what the child handed out is stored, with its certificate.
    for word, serial in promised:
        if word == "issued":
            assert records[serial].der is not None
            assert records[serial].status in ("valid", "revoked")
        if word == "revoked":
            assert records[serial].status == "revoked"
    # Nothing non-final.
    assert store.count_certificates("signing") == 0
    # The stored CRL (not re-issued on the way: the sweep must have done it)
    # lists exactly what the store calls revoked or on hold.
    latest = store.latest_crl(issuing.record.id)
    assert latest is not None
    crl = x509.load_der_x509_crl(latest.der)
    assert crl.is_signature_valid(issuing.certificate.public_key())  # type: ignore[arg-type]
    listed = {format(entry.serial_number, "x") for entry in crl}
    assert listed == {s for s, r in records.items() if r.status in ("revoked", "hold")}
    assert latest.revocation_revision == store.revocation_revision(issuing.record.id)
    # OCSP agrees with the store for every row.
    expected = {
        "valid": ocsp.OCSPCertStatus.GOOD,
        "revoked": ocsp.OCSPCertStatus.REVOKED,
        "hold": ocsp.OCSPCertStatus.REVOKED,
        "failed": ocsp.OCSPCertStatus.UNKNOWN,
    }
    for serial, record in records.items():
        assert _ocsp_status(instance, int(serial, 16)) is expected[record.status], (serial, record.status)
    # The audit log verifies.
    assert instance.audit.verify().ok


def _restart_and_reconcile(home: Path) -> Instance:
    """A new process's view, after one sweep past the signing bound."""
    instance = Instance.open(home)
    results = run_once(tasks_for(instance, signing_bound=timedelta(0)))
    assert None not in results.values(), results
    return instance


@pytest.mark.parametrize(("setup", "point"), SCENARIOS, ids=[p for _, p in SCENARIOS])
def test_crash_at_each_point_is_repaired_by_one_sweep(home: Path, setup: tuple[str, ...], point: str) -> None:
    promised: list[tuple[str, str]] = []
    for earlier in setup:
        promised += _crash_at(home, earlier)
    promised += _crash_at(home, point)
    instance = _restart_and_reconcile(home)
    try:
        _assert_consistent(instance, promised)
        repairs = [r for r in instance.audit.records() if r.protocol == "maintenance"]
        left_signing = point in ("issue.reserved", "issue.signed") or setup
        if left_signing:
            revoked = [r for r in repairs if r.operation == "possibly-issued-revoked"]
            assert len(revoked) == 1
            record = instance.store.certificate(int(revoked[0].serial or "0", 16), "issuing")
            assert record.status == "revoked" and record.der is None
            assert record.revocation_reason == "cessationOfOperation"
        if point in ("revoke.marked", "crl.numbered", "crl.signed") or left_signing:
            assert any(r.operation == "stale-crl-reissued" for r in repairs)
        # A second sweep finds nothing to repair and writes no audit record.
        count = instance.audit.count()
        assert run_once(tasks_for(instance, signing_bound=timedelta(0))) == {"possibly-issued": 0, "cmp-unconfirmed": 0, "crls": 0}
        assert instance.audit.count() == count
    finally:
        instance.close()
