"""An instance whose store is PostgreSQL: init, issue, list, and the rows really
are in PostgreSQL (not in a SQLite file next to the instance)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from conftools import init_instance, issue, openssl_csr, run, ztpki
from conftools import pg_cluster, pg_database_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres


def test_instance_on_postgresql_issues_and_lists(pg_database_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    inst = init_instance(home, "--database", pg_database_url)
    assert not (home / "ztpki.db").exists()

    leaf = tmp_path / "pg.pem"
    serial = issue(inst, openssl_csr(tmp_path, "pg", "pg.example.net"), leaf)
    run(["openssl", "verify", "-CAfile", inst.root_pem, "-untrusted", inst.issuing_pem, leaf])

    listed = json.loads(ztpki("certs", "list", "--json", home=home).stdout)
    ours = [r for r in listed if r["serial"] == serial.lower().lstrip("0")]
    assert len(ours) == 1 and ours[0]["status"] == "valid" and ours[0]["subject"] == "CN=pg.example.net,O=Example"

    conninfo = pg_database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT serial FROM certificates").fetchall()
    assert serial.lower().lstrip("0") in {r[0] for r in rows}
    assert len(rows) == len(listed)
