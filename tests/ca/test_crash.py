"""kill -9 in the middle of issuance: the store stays consistent and lists
every serial the token may have signed (record before sign)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from ca.store import Store
from ztpki.setup_instance import init_instance

ISSUE_FOREVER = r"""
import sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from ca.template import IssuanceOrder
from ztpki.instance import Instance

instance = Instance.open(Path(sys.argv[1]))
keys = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(20)]
name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "crash-test")])
i = 0
while True:
    order = IssuanceOrder(ca="issuing", profile="client", subject=name, public_key=keys[i % 20])
    issued = instance.cas.issue(order)
    print(format(issued.serial, "x"), flush=True)
    i += 1
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("crash")
    init_instance(home).close()
    return home


@pytest.mark.parametrize("round_", range(3))
def test_kill_9_during_issuance_leaves_every_signed_serial_in_the_store(home: Path, round_: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", ISSUE_FOREVER, str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    printed = []
    deadline = time.monotonic() + 60
    # Let it get going, then kill at a moment that varies per round.
    while len(printed) < 15 + 7 * round_ and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        printed.append(line.strip())
    time.sleep(0.003 * round_)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert len(printed) >= 15, child.stderr.read() if child.stderr else ""

    db = home / "ztpki.db"
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = Store(f"sqlite:///{db}")
    try:
        issuing = x509.load_der_x509_certificate(store.authority("issuing").certificate)
        records = list(store.certificates(authority="issuing", subject_contains="crash-test"))
    finally:
        store.close()
    by_serial = {r.serial_hex: r for r in records}
    # Everything the child handed out is recorded as valid, with its certificate.
    for serial in printed:
        assert by_serial[serial].status == "valid"
    for record in records:
        assert record.status in ("valid", "signing")
        if record.status == "valid":
            assert record.der is not None
            x509.load_der_x509_certificate(record.der).verify_directly_issued_by(issuing)
    # One process issuing one at a time: at most one signature in flight.
    assert sum(r.status == "signing" for r in records) <= 1
