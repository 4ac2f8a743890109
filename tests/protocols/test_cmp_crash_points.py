"""A crash in the CMP side of issuance (issue 18), then a restart and one
maintenance sweep: no certificate row is `signing`, no transaction is still
open or awaiting a certConf past its wait, every never-confirmed certificate
is revoked in the store, by OCSP and on the CRL, the confirmed one is still
good, every automatic revocation is audited and the audit log verifies. On
SQLite and PostgreSQL; the child dies with os._exit at the point
(storage.db.crash_point), as under kill -9.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from sqlalchemy import select, update

from storage.db import CRASH_ENV, CRASH_EXIT_CODE
from ra.schema import cmp_transactions
from ztpki.instance import Instance
from ztpki.maintenance import run_once, tasks_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ca"))
from test_crash_points import _ocsp_status, home  # noqa: E402, F401  (home: the SQLite/PostgreSQL fixture)

ROOT = Path(__file__).resolve().parents[2]

# Three devices enrol with ir; the first confirms, the others never do.
# Then the confirmation wait is over and the sweep runs. Each line printed
# is a promise: "confirmed S" must stay good, "unconfirmed S" must end revoked.
WORKLOAD = r"""
import json, sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update
from protocols.cmp import codec
from protocols.cmp.client import MacCredential, cert_conf, cert_request, issued_certificate
from ra.schema import cmp_transactions
from ztpki.http.cmp import cmp_server_for
from ztpki.instance import Instance

instance = Instance.open(Path(sys.argv[1]))
server = cmp_server_for(instance)
for index, (reference, secret) in enumerate(json.loads(sys.argv[2])):
    mac = MacCredential(reference, secret.encode())
    tid, request = cert_request(mac, ec.generate_private_key(ec.SECP256R1()))
    certificate = issued_certificate(codec.decode_message(server.handle(request, peer="192.0.2.50")[1]))
    serial = format(x509.load_der_x509_certificate(certificate).serial_number, "x")
    if index == 0:
        confirmed = codec.decode_message(server.handle(cert_conf(mac, tid, certificate), peer="192.0.2.50")[1])
        assert confirmed.body_type == "pkiconf"
        print("confirmed", serial, flush=True)
    else:
        print("unconfirmed", serial, flush=True)
with instance.engine.begin() as conn:
    conn.execute(update(cmp_transactions).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
instance.cmp_transactions.expire_unconfirmed()
print("swept", flush=True)
"""

# (CA or CMP point, what it interrupts)
SCENARIOS = [
    "issue.reserved",  # the first ir: serial reserved, transaction open, nothing signed
    "issue.signed",  # the first ir: signed, never stored as issued, transaction open
    "cmp.unconfirmed.moved",  # the sweep: transaction unconfirmed, certificate not yet revoked
    "cmp.revoked",  # the sweep: revoked, audit record not yet written
    "revoke.marked",  # the sweep's revocation marked, CRL stale
]


def _credentials(home: Path) -> list[tuple[str, str]]:
    instance = Instance.open(home)
    try:
        found = []
        for _ in range(3):
            serial = f"CRASH-{uuid.uuid4().hex[:8].upper()}"
            instance.registry.register(serial=serial, vendor=None, profile="enb")
            found.append(instance.credentials.create_mac(device_serial=serial))
        return found
    finally:
        instance.close()


def _crash_at(home: Path, point: str) -> list[tuple[str, str]]:
    env = {**os.environ, CRASH_ENV: point, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", WORKLOAD, str(home), json.dumps(_credentials(home))],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )
    assert child.returncode == CRASH_EXIT_CODE, f"never reached {point}: {child.returncode} {child.stderr[-2000:]}"
    return [tuple(line.split(" ", 1)) for line in child.stdout.splitlines() if " " in line]  # type: ignore[misc]


@pytest.mark.parametrize("point", SCENARIOS)
def test_crash_on_the_cmp_path_is_repaired_by_one_sweep(home: Path, point: str) -> None:
    promised = _crash_at(home, point)
    instance = Instance.open(home)
    try:
        # The restarted node's sweep, once every wait is over.
        with instance.engine.begin() as conn:
            conn.execute(update(cmp_transactions).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        results = run_once(tasks_for(instance, signing_bound=timedelta(0)))
        assert None not in results.values(), results
        store = instance.store
        assert store.count_certificates("signing") == 0
        with instance.engine.connect() as conn:
            statuses = [row.status for row in conn.execute(select(cmp_transactions.c.status))]
        assert not {"open", "awaiting_confirm"} & set(statuses), statuses
        crl = x509.load_der_x509_crl(instance.revocations.current_crl("issuing").der)
        listed = {format(entry.serial_number, "x") for entry in crl}
        revoked_audit = {r.serial for r in instance.audit.records() if r.outcome == "revoked"}
        for word, serial in promised:
            status = _ocsp_status(instance, int(serial, 16))
            if word == "confirmed":
                assert store.certificate(int(serial, 16)).status == "valid"
                assert status is ocsp.OCSPCertStatus.GOOD and serial not in listed
            else:
                assert store.certificate(int(serial, 16)).status == "revoked"
                assert status is ocsp.OCSPCertStatus.REVOKED and serial in listed
                assert serial in revoked_audit
        assert instance.audit.verify().ok
        # A second sweep has nothing left to do.
        again = run_once(tasks_for(instance, signing_bound=timedelta(0)))
        assert again == {"possibly-issued": 0, "cmp-unconfirmed": 0, "crls": 0}, again
    finally:
        instance.close()
