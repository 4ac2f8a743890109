"""Crash recovery against a running `ztpki serve` (issue 18): a `ztpki issue`
killed after the token signed, a `ztpki revoke` killed before the CRL was
re-issued; then serve starts, and without any request for it its start-up
sweep revokes the possibly issued row and re-issues the CRL. openssl ocsp
and the CRL over curl agree with the store; the audit log has a record per
repair and verifies."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from conftools import (
    Instance,
    Server,
    clean_env,
    crl_entries,
    init_instance,
    issue,
    openssl_csr,
    run,
    ZTPKI,
    ztpki,
)

CRASH_EXIT_CODE = 137  # storage.db.CRASH_EXIT_CODE: os._exit at ZTPKI_CRASH_AT


def _crash(inst: Instance, point: str, *args: object) -> None:
    proc = run([ZTPKI, "--home", inst.home, *args], check=False, env=clean_env(ZTPKI_CRASH_AT=point))
    assert proc.returncode == CRASH_EXIT_CODE, f"{point}: exit {proc.returncode}\n{proc.stderr}"


def _audit(inst: Instance) -> list[dict[str, object]]:
    records: list[dict[str, object]] = json.loads(ztpki("audit", "list", "--json", home=inst.home).stdout)
    return records


def test_serve_start_up_repairs_what_killed_commands_left(tmp_path: Path) -> None:
    inst = init_instance(tmp_path / "home")
    kept = tmp_path / "kept.pem"
    kept_serial = issue(inst, openssl_csr(tmp_path, "kept", "kept.example.net"), kept)
    _crash(inst, "issue.signed", "issue", "--csr", openssl_csr(tmp_path, "lost", "lost.example.net"),
           "--profile", "server", "--out", tmp_path / "lost.pem")
    _crash(inst, "revoke.marked", "revoke", kept_serial, "--reason", "keyCompromise")
    signing = json.loads(ztpki("certs", "list", "--status", "signing", "--json", home=inst.home).stdout)
    assert len(signing) == 1
    lost_serial = signing[0]["serial"].upper()
    show = ztpki("certs", "show", lost_serial, home=inst.home).stdout
    assert "the token may have signed it" in show
    # The crash happened longer ago than the signing bound (60 s).
    with sqlite3.connect(inst.home / "ztpki.db") as db:
        db.execute("UPDATE certificates SET created_at = '2000-01-01 00:00:00.000000' WHERE status = 'signing'")

    server = Server(inst, tmp_path / "serve.log")
    assert server.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            operations = [r["operation"] for r in _audit(inst) if r["protocol"] == "maintenance"]
            if "possibly-issued-revoked" in operations and "stale-crl-reissued" in operations:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no start-up reconciliation within 20 s: {operations}\n{server.log()}")
        # Not re-issued by a request: the sweep did it.
        assert not json.loads(ztpki("certs", "list", "--status", "signing", "--json", home=inst.home).stdout)
        record = json.loads(ztpki("certs", "show", lost_serial, "--json", home=inst.home).stdout)
        assert record["status"] == "revoked" and record["revocation_reason"] == "cessationOfOperation"
        assert record["issuance"].startswith("possibly issued")

        for serial, reason in ((lost_serial, "cessationOfOperation"), (kept_serial, "keyCompromise")):
            proc = run([
                "openssl", "ocsp", "-issuer", inst.issuing_pem, "-serial", f"0x{serial}",
                "-url", f"{inst.base_url}/ocsp", "-CAfile", inst.root_pem,
            ], check=False)
            out = proc.stdout + proc.stderr
            assert "Response verify OK" in out and ": revoked" in out, out + server.log()
            assert reason in out, out
        crl = tmp_path / "issuing.crl"
        run(["curl", "-sSf", "-o", crl, f"{inst.base_url}/crl/issuing.crl"])
        text = run(["openssl", "crl", "-inform", "DER", "-in", crl, "-noout", "-text"]).stdout
        entries = crl_entries(text)
        assert {int(s, 16) for s in entries} == {int(lost_serial, 16), int(kept_serial, 16)}, text
        assert "intact" in ztpki("audit", "verify", home=inst.home).stdout
    finally:
        assert server.stop() == 0, server.log()
