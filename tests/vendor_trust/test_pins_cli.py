"""`pins create|list|revoke` through click, on a fresh group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from storage.db import make_engine
from test_registry_cli import Parts, make_cli
from vendor_trust.db import migrate
from vendor_trust.pins import PinRejected, Pins
from vendor_trust.registry import DeviceRegistry


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}", sqlite_synchronous="NORMAL")
    migrate(engine)
    DeviceRegistry(engine).register("SN-1")
    yield engine
    engine.dispose()


@pytest.fixture
def run(engine: Engine) -> Any:
    cli = make_cli(Parts(engine))

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_create_prints_a_pin_that_redeems_once(run: Any, engine: Engine) -> None:
    result = run("pins", "create", "--device", "SN-1", "--ttl", "30m")
    assert result.exit_code == 0, result.output
    pin = result.stdout.strip()
    Pins(engine).redeem("SN-1", pin)
    with pytest.raises(PinRejected):
        Pins(engine).redeem("SN-1", pin)
    listed = json.loads(run("pins", "list", "--json").stdout)
    assert [(p["device"], p["state"]) for p in listed] == [("SN-1", "used")]
    assert pin not in run("pins", "list").stdout


def test_revoke_by_device_or_id(run: Any) -> None:
    created = json.loads(run("pins", "create", "--device", "SN-1", "--json").stdout)
    assert created["device"] == "SN-1" and len(created["pin"]) == 14
    assert run("pins", "revoke", "--device", "SN-1").stdout.strip() == "revoked 1 PIN(s)"
    run("pins", "create", "--device", "SN-1")
    pin_id = json.loads(run("pins", "list", "--json", "--device", "SN-1").stdout)[-1]["id"]
    assert run("pins", "revoke", "--id", str(pin_id)).stdout.strip() == "revoked 1 PIN(s)"
    assert [p["state"] for p in json.loads(run("pins", "list", "--json").stdout)] == ["revoked", "revoked"]
    assert run("pins", "revoke").exit_code == 2


def test_no_pins_for_unknown_or_blocked_devices(run: Any, engine: Engine) -> None:
    unknown = run("pins", "create", "--device", "SN-9")
    assert unknown.exit_code == 1 and "no device with serial 'SN-9'" in unknown.stderr
    DeviceRegistry(engine).block("SN-1", "keyCompromise")
    blocked = run("pins", "create", "--device", "SN-1")
    assert blocked.exit_code == 1 and "is blocked" in blocked.stderr
