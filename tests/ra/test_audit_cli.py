"""`ztpki audit list|verify` on a fresh click group (ztpki/cli/audit.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, delete, text

import ra.db
from storage.db import make_engine
from ra.audit import AuditLog
from ra.schema import audit_log
from ztpki.cli import audit as audit_commands


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ztpki.db'}")
    ra.db.migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def main(engine: Engine) -> click.Group:
    @click.group()
    def main() -> None:
        pass

    audit_commands.register(main, lambda ctx: SimpleNamespace(engine=engine))  # type: ignore[arg-type,return-value]
    return main


@pytest.fixture
def log(engine: Engine) -> AuditLog:
    log = AuditLog(engine)
    for i in range(1, 6):
        log.append(actor=f"SN-{i % 2}", protocol="scep", operation="initial", device=f"SN-{i % 2}",
                   evidence=["one-time-pin"], outcome="issued", serial=f"{i:x}", details={"i": i})
    return log


def test_audit_list_prints_one_line_per_record(main: click.Group, log: AuditLog) -> None:
    result = CliRunner().invoke(main, ["audit", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4", "5"]
    assert "5 record(s)" in result.stderr


def test_audit_list_json_filters_by_device_and_limit(main: click.Group, log: AuditLog) -> None:
    result = CliRunner().invoke(main, ["audit", "list", "--json", "--device", "SN-1", "--limit", "2"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [(r["seq"], r["device"], r["details"]) for r in records] == [(1, "SN-1", {"i": 1}), (3, "SN-1", {"i": 3})]
    assert records[1]["prev_hash"] == next(iter(log.records(after_seq=1))).hash


def test_audit_list_json_of_an_empty_log_is_an_empty_array(main: click.Group) -> None:
    result = CliRunner().invoke(main, ["audit", "list", "--json"])
    assert json.loads(result.stdout) == []


def test_audit_verify_passes_an_intact_log(main: click.Group, log: AuditLog) -> None:
    result = CliRunner().invoke(main, ["audit", "verify"])
    assert result.exit_code == 0
    assert result.stdout == "audit log intact: 5 records\n"
    assert f"sha256 {log.head()[1]}" in result.stderr


def test_audit_verify_fails_naming_a_modified_record(main: click.Group, log: AuditLog) -> None:
    with log.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET serial = 'ff' WHERE seq = 3"))
    result = CliRunner().invoke(main, ["audit", "verify"])
    assert result.exit_code == 1
    assert result.stderr.startswith("audit log damaged at record 3:")
    assert len(result.stderr.splitlines()) == 1


def test_audit_verify_fails_naming_a_deleted_record(main: click.Group, log: AuditLog) -> None:
    with log.engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 2))
    result = CliRunner().invoke(main, ["audit", "verify"])
    assert result.exit_code == 1
    assert "record 2" in result.stderr


def test_audit_noise_lists_the_counted_refusals(engine: Engine) -> None:
    from ra.noise import NoiseLog
    from ztpki.instance import NOISE_REASONS

    log = AuditLog(engine, NoiseLog(engine, reasons=NOISE_REASONS))
    for n in range(7):
        log.note_noise(protocol="cmp", source="203.0.113.5", reason="badMessageCheck", detail={"n": n})
    log.note_noise(protocol="est", source="203.0.113.6", reason="bad_credential", detail={})

    @click.group()
    def main() -> None:
        pass

    audit_commands.register(main, lambda ctx: SimpleNamespace(engine=engine, audit=log))  # type: ignore[arg-type,return-value]
    result = CliRunner().invoke(main, ["audit", "noise", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["source"], r["protocol"], r["reason"], r["count"]) for r in rows] == [
        ("203.0.113.5", "cmp", "badMessageCheck", 7), ("203.0.113.6", "est", "bad_credential", 1),
    ]
    assert json.loads(rows[0]["sample"]) == {"n": 0}
    table = CliRunner().invoke(main, ["audit", "noise", "--source", "203.0.113.6", "--hours", "1"])
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[1].split()[2:6] == ["203.0.113.6", "est", "bad_credential", "1"]
    assert "1 row(s)" in table.stderr
    # Counting is not chaining: the hash chain is as it was, and intact.
    assert log.count() == 0 and log.verify().ok
