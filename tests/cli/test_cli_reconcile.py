"""`ztpki reconcile` and what `certs show` says of a row a crash left
'signing' (issue 18)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from storage.db import CRASH_ENV, CRASH_EXIT_CODE
from ztpki.instance import Instance
from ztpki.maintenance import MaintenanceRunner, MaintenanceTask, run_once, tasks_for
from clihelpers import cli, run_ztpki, write_csr
from clihelpers import csr_dir, home  # noqa: F401  (fixtures)


def test_reconcile_revokes_what_a_killed_issue_left_and_show_tells_the_truth(home: Path, csr_dir: Path) -> None:
    csr = write_csr(csr_dir, "killed", cn="killed.example.net")
    killed = run_ztpki("--home", home, "issue", "--csr", csr, "--profile", "server", "--out", csr_dir / "k.pem",
                       env={**os.environ, CRASH_ENV: "issue.signed"})
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr
    (row,) = cli("--home", home, "certs", "list", "--status", "signing", "--json").json()
    shown = cli("--home", home, "certs", "show", row["serial"], "--json").json()
    assert shown["issuance"].startswith("being signed, or left by a crash")
    assert "was never signed" not in cli("--home", home, "certs", "show", row["serial"], "--pem").stderr

    # Younger than the bound: a live request may still be signing it.
    assert cli("--home", home, "reconcile", "--json").json()["possibly-issued"] == 0
    results = cli("--home", home, "reconcile", "--older-than", "0", "--json").json()
    assert results["possibly-issued"] == 1 and results["crls"] >= 1
    shown = cli("--home", home, "certs", "show", row["serial"], "--json").json()
    assert shown["status"] == "revoked" and shown["revocation_reason"] == "cessationOfOperation"
    assert shown["issuance"].startswith("possibly issued")
    records = cli("--home", home, "audit", "list", "--json").json()
    repairs = [r for r in records if r["operation"] == "possibly-issued-revoked"]
    assert [r["serial"] for r in repairs] == [row["serial"]]
    assert any(r["operation"] == "stale-crl-reissued" for r in records)
    assert "intact" in cli("--home", home, "audit", "verify").ok().stdout
    # Nothing left: a second run repairs nothing.
    assert cli("--home", home, "reconcile", "--older-than", "0", "--json").json() == {"possibly-issued": 0, "cmp-unconfirmed": 0, "crls": 0}


def test_a_failing_task_does_not_stop_the_others() -> None:
    def broken() -> int:
        raise RuntimeError("store down")

    tasks = [MaintenanceTask("broken", broken), MaintenanceTask("fine", lambda: 2)]
    assert run_once(tasks) == {"broken": None, "fine": 2}


def test_the_runner_sweeps_at_start_off_the_request_path_and_stops(home: Path, csr_dir: Path) -> None:
    out = csr_dir / "runner.pem"
    cli("--home", home, "issue", "--csr", write_csr(csr_dir, "runner", cn="runner.example.net"),
        "--profile", "server", "--out", out).ok()
    serial = x509.load_pem_x509_certificate(out.read_bytes()).serial_number
    instance = Instance.open(home)
    try:
        instance.revocations.revoke(serial, "keyCompromise")
        assert instance.revocations.crl_due("issuing") == "stale"
        runner = MaintenanceRunner(tasks_for(instance), interval=timedelta(hours=1)).start()
        deadline = time.monotonic() + 20
        while instance.revocations.crl_due("issuing") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert instance.revocations.crl_due("issuing") is None
        started = time.monotonic()
        runner.stop(timeout=10)
        assert not runner.thread.is_alive() and time.monotonic() - started < 10
        latest = instance.store.latest_crl(instance.cas.authority("issuing").record.id)
        assert latest is not None
        assert serial in {e.serial_number for e in x509.load_der_x509_crl(latest.der)}
    finally:
        instance.close()
