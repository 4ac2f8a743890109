"""`ztpki vendors ...` on a fresh click group (ztpki/cli/__init__.py wires it into the real one)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from trustfixtures import VendorPki, acme, crl_der, engine, make_crl  # noqa: F401  (fixtures)
from ztpki.cli.vendors import register


@pytest.fixture
def run(engine: Engine) -> Any:
    @click.group()
    def main() -> None:
        pass

    register(main, lambda ctx: SimpleNamespace(engine=engine))  # type: ignore[arg-type, return-value]
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_vendors_add_list_check_crl_remove(run: Any, acme: VendorPki, tmp_path: Path) -> None:
    roots = write(tmp_path / "roots.pem", acme.root.pem + acme.intermediate.pem)
    result = run("vendors", "add", "acme", "--root", roots)
    assert result.exit_code == 0, result.output
    assert result.output.count("trusting") == 2

    again = run("vendors", "add", "acme", "--root", roots, "--json")
    assert again.exit_code == 0 and json.loads(again.output)["already_trusted"] == 2

    listed = json.loads(run("vendors", "list", "--json").output)
    assert [(v["name"], v["anchors"], v["crls"]) for v in listed] == [("acme", 2, 0)]

    device = acme.device("CLI-1")
    chain = write(tmp_path / "chain.pem", device.pem + acme.intermediate.pem)
    checked = run("vendors", "check", chain, "--json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["serial"] == "CLI-1"
    assert "CLI-1 (from hardwareModuleName)" in run("vendors", "check", chain).output
    later = run("vendors", "check", chain, "--at", "2300-01-01T00:00:00")
    assert later.exit_code == 1 and later.output.startswith("Error: certificate_expired: ")

    crl = write(tmp_path / "crl.der", crl_der(make_crl(acme.intermediate, [device.certificate.serial_number])))
    loaded = run("vendors", "crl", "acme", crl, "--issuer", write(tmp_path / "ca.pem", acme.intermediate.pem), "--json")
    assert loaded.exit_code == 0, loaded.output
    assert json.loads(loaded.output)["verified"] is True

    revoked = run("vendors", "check", chain)
    assert revoked.exit_code == 1
    assert revoked.output.startswith("Error: certificate_revoked: ")
    assert revoked.output.count("\n") == 1

    anchors = json.loads(run("vendors", "anchors", "acme", "--json").output)
    removed = run("vendors", "remove-anchor", anchors[1]["fingerprint"])
    assert removed.exit_code == 0 and "no longer trusting" in removed.output

    assert run("vendors", "remove", "acme").exit_code == 0
    untrusted = run("vendors", "check", chain)
    assert untrusted.exit_code == 1 and "untrusted_certificate" in untrusted.output


def test_vendors_add_refuses_a_device_certificate_in_one_line(run: Any, acme: VendorPki, tmp_path: Path) -> None:
    leaf = write(tmp_path / "leaf.pem", acme.device().pem)
    result = run("vendors", "add", "acme", "--root", leaf)
    assert result.exit_code == 1
    assert "not a CA certificate" in result.output and result.output.count("\n") == 1
    assert json.loads(run("vendors", "list", "--json").output)[0]["anchors"] == 0


def test_unreadable_and_unknown_inputs_are_one_line_errors(run: Any, tmp_path: Path) -> None:
    missing = run("vendors", "add", "acme", "--root", str(tmp_path / "missing.pem"))
    assert missing.exit_code == 1 and missing.output.count("\n") == 1
    junk = run("vendors", "check", write(tmp_path / "junk.pem", b"not pem"))
    assert junk.exit_code == 1 and "no PEM certificate" in junk.output
    unknown = run("vendors", "crl", "nobody", write(tmp_path / "x.crl", b"\x30\x00"))
    assert unknown.exit_code == 1 and unknown.output.count("\n") == 1
    assert run("vendors", "remove", "nobody").exit_code == 1
