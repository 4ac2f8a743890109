"""`credentials create|list|revoke` through click, on a fresh group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from storage.db import make_engine
from test_credentials import AesGcmSealer
from test_registry_cli import Parts, make_cli
from vendor_trust.credentials import Credentials
from vendor_trust.db import migrate
from vendor_trust.registry import DeviceRegistry


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}", sqlite_synchronous="NORMAL")
    migrate(engine)
    DeviceRegistry(engine).register("SN-1")
    yield engine
    engine.dispose()


def runner(instance: Any) -> Any:
    cli = make_cli(instance)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_a_mac_credential_is_printed_once_and_works(engine: Engine) -> None:
    sealer = AesGcmSealer()
    run = runner(Parts(engine, sealer))
    result = run("credentials", "create", "--device", "SN-1", "--kind", "mac", "--ttl", "12h", "--max-uses", "2",
                 "--json")
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    secret = Credentials(engine, sealer).mac_secret(created["reference"]).secret
    assert secret == created["secret"].encode()
    text = run("credentials", "create", "--batch", "lot-1", "--kind", "mac")
    assert text.stdout.startswith("reference: mac-") and "\nsecret: " in text.stdout
    assert "openssl cmp -ref mac-" in text.stderr


def test_without_a_sealing_key_mac_credentials_fail_clearly(engine: Engine) -> None:
    result = runner(Parts(engine))("credentials", "create", "--device", "SN-1", "--kind", "mac")
    assert result.exit_code == 1
    assert "sealing key" in result.stderr and "Traceback" not in result.output


def test_an_est_password_is_printed_once_and_listed_without_it(engine: Engine) -> None:
    run = runner(Parts(engine))
    result = run("credentials", "create", "--device", "SN-1", "--kind", "password", "--username", "cpe-1")
    assert result.exit_code == 0, result.output
    username, password = (line.split(": ", 1)[1] for line in result.stdout.splitlines())
    assert username == "cpe-1"
    assert Credentials(engine, None).check_password(username, password).uses == 1
    listed = json.loads(run("credentials", "list", "--json").stdout)
    assert [(c["reference"], c["kind"], c["uses"], c["state"]) for c in listed] == [("cpe-1", "password", 1, "usable")]
    assert password not in run("credentials", "list").stdout
    assert run("credentials", "revoke", "cpe-1").exit_code == 0
    assert json.loads(run("credentials", "list", "--json", "--device", "SN-1").stdout)[0]["state"] == "revoked"
    unknown = run("credentials", "revoke", "cpe-1x")
    assert unknown.exit_code == 1 and "no credential 'cpe-1x'" in unknown.stderr


@pytest.mark.parametrize("args, code, message", [
    (["--kind", "password"], 2, "give --device SERIAL or --batch NAME"),
    (["--device", "SN-1", "--batch", "b", "--kind", "password"], 2, "give --device SERIAL or --batch NAME"),
    (["--device", "nope", "--kind", "password"], 1, "no device with serial 'nope'"),
    (["--device", "SN-1", "--kind", "password", "--ttl", "soon"], 2, "give a positive number and a unit"),
    (["--device", "SN-1", "--kind", "mac", "--username", "u"], 2, "--username goes with --kind password"),
])
def test_create_refuses_what_it_cannot_do(engine: Engine, args: list[str], code: int, message: str) -> None:
    result = runner(Parts(engine))("credentials", "create", *args)
    assert result.exit_code == code and message in result.stderr


def test_no_credentials_for_a_blocked_device(engine: Engine) -> None:
    DeviceRegistry(engine).block("SN-1", "keyCompromise")
    result = runner(Parts(engine))("credentials", "create", "--device", "SN-1", "--kind", "password")
    assert result.exit_code == 1 and "is blocked" in result.stderr
