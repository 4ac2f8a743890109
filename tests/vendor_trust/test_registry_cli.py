"""`devices import|list|show|assign|block|unblock` through click, on a fresh group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import click
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine

from storage.db import make_engine
from vendor_trust.db import migrate
from vendor_trust.credentials import Credentials
from vendor_trust.registry import DeviceRegistry
from ztpki.cli import credentials, devices, pins
from ztpki.cli.devices import parse_duration

IMEI = "490154203237518"


class Parts:
    """What the commands take from a ztpki Instance: the migrated engine
    (and, for MAC credentials, the sealer)."""

    def __init__(self, engine: Engine, secret_sealer: Any = None) -> None:
        self.engine = engine
        self.credentials = Credentials(engine, secret_sealer)


def make_cli(instance: Any) -> click.Group:
    @click.group()
    def main() -> None:
        pass

    for commands in (devices, credentials, pins):
        commands.register(main, lambda ctx: instance)
    return main


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}", sqlite_synchronous="NORMAL")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def run(engine: Engine) -> Any:
    cli = make_cli(Parts(engine))

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_import_reports_counts_and_exits_zero(run: Any, tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(f"serial,vendor,mac,imei\nSN-1,acme,AA-BB-CC-DD-EE-01,{IMEI}\nSN-2,acme,,\n")
    result = run("devices", "import", str(path))
    assert result.exit_code == 0, result.output
    assert "imported 2, updated 0, unchanged 0" in result.stdout
    again = run("devices", "import", str(path), "--json")
    assert json.loads(again.stdout)["unchanged"] == 2


def test_import_with_bad_rows_prints_each_by_line_and_exits_one(run: Any, engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("serial,mac\nSN-1,\nSN-2,zz\nSN-3,\nSN-1,\n")
    result = run("devices", "import", str(path))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("line 3: mac: not a MAC address")
    assert lines[1] == "line 5: serial 'SN-1' appears already on line 2"
    assert "nothing imported (all-or-nothing" in lines[2]
    assert DeviceRegistry(engine).counts()["total"] == 0
    result = run("devices", "import", str(path), "--mode", "skip-bad")
    assert result.exit_code == 1
    assert "imported 2, updated 0, unchanged 0; skipped 2 bad row(s)" in result.stdout
    assert DeviceRegistry(engine).counts()["total"] == 2


def test_import_of_an_unusable_file_is_one_line_no_traceback(run: Any, tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("vendor,model\nacme,m1\n")
    result = run("devices", "import", str(path))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "no 'serial' column" in result.stderr and "Traceback" not in result.output
    missing = run("devices", "import", str(tmp_path / "nope.csv"))
    assert missing.exit_code == 1 and "cannot read" in missing.stderr


def test_import_no_update_keeps_existing_devices(run: Any, engine: Engine, tmp_path: Path) -> None:
    DeviceRegistry(engine).register("SN-1", profile="old")
    path = tmp_path / "d.jsonl"
    path.write_text('{"serial": "SN-1", "profile": "new"}\n')
    result = run("devices", "import", str(path), "--no-update")
    assert "imported 0, updated 0, unchanged 1" in result.stdout
    assert DeviceRegistry(engine).require("SN-1").profile == "old"


def test_list_and_show_in_text_and_json(run: Any, engine: Engine) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    registry = DeviceRegistry(engine)
    registry.register("SN-1", vendor="acme", model="m1", mac="aa:bb:cc:dd:ee:01", imei=IMEI, profile="cells",
                      public_key=key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    registry.register("SN-2", vendor="other")
    listed = run("devices", "list")
    assert listed.stdout.splitlines()[0].split() == ["SN-1", "registered", "acme", "m1", "cells", "aa:bb:cc:dd:ee:01", IMEI]
    as_json = json.loads(run("devices", "list", "--json", "--vendor", "other").stdout)
    assert [d["serial"] for d in as_json] == ["SN-2"]
    assert json.loads(run("devices", "list", "--json", "--state", "blocked").stdout) == []
    assert len(json.loads(run("devices", "list", "--json", "--limit", "1").stdout)) == 1
    shown = json.loads(run("devices", "show", "SN-1", "--json").stdout)
    assert shown["public_key"] == key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    text = run("devices", "show", "SN-1").stdout
    assert "public_key:     EC secp256r1 sha256:" in text
    missing = run("devices", "show", "nope")
    assert missing.exit_code == 1 and "no device with serial 'nope'" in missing.stderr


def test_assign_a_device_or_a_fleet(run: Any, engine: Engine) -> None:
    registry = DeviceRegistry(engine)
    registry.register("SN-1", vendor="acme", model="m1")
    registry.register("SN-2", vendor="acme", model="m2")
    assert run("devices", "assign", "SN-1", "--profile", "cells").exit_code == 0
    assert registry.require("SN-1").profile == "cells"
    result = run("devices", "assign", "--vendor", "acme", "--model", "m2", "--profile", "fleet")
    assert "1 device(s) of acme m2: profile fleet" in result.stdout
    assert run("devices", "assign", "--profile", "x").exit_code == 2  # neither SERIAL nor --vendor


def test_block_revokes_the_certificates_and_unblock_lets_the_device_back(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from ca.template import IssuanceOrder
    from ztpki.setup_instance import init_instance

    instance = init_instance(tmp_path / "home")
    instance.registry.register("SN-1", profile="client")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "SN-1")])
    issued = instance.cas.issue(IssuanceOrder(ca="issuing", profile="client", subject=name,
                                              public_key=key.public_key(), device_id="SN-1"))
    cli = make_cli(instance)

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    result = run("devices", "block", "SN-1", "--reason", "key-compromise")
    assert result.exit_code == 0, result.output
    assert "device SN-1 blocked (keyCompromise); 1 certificate(s) revoked" in result.stdout
    assert instance.store.certificate(issued.serial).status == "revoked"
    device = instance.registry.require("SN-1")
    assert (device.state, device.blocked_reason) == ("blocked", "keyCompromise")
    bad_reason = run("devices", "block", "SN-1", "--reason", "lost-it")
    assert bad_reason.exit_code == 1 and "unknown revocation reason" in bad_reason.stderr
    assert run("devices", "unblock", "SN-1").stdout.strip() == "device SN-1: registered"
    assert "is not blocked" in run("devices", "unblock", "SN-1").stdout
    assert [r.operation for r in instance.audit.records(device="SN-1")] == ["block-device", "unblock-device"]
    instance.close()


@pytest.mark.parametrize("text, expected", [("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("90s", 90)])
def test_durations(text: str, expected: int) -> None:
    assert parse_duration(text).total_seconds() == expected


@pytest.mark.parametrize("text", ["0d", "7", "d", "1y", "-1h", "1.5h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_duration(text)
