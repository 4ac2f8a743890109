"""Admin commands that change something are audited, with the admin named
and no secret copied into the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from clihelpers import cli, init_home, write_csr


def test_admin_actions_are_audited_without_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    init_home(home)
    monkeypatch.setenv("ZTPKI_ADMIN", "dana")
    devices = tmp_path / "devices.csv"
    devices.write_text("serial,profile\nSN-A,phone\n")
    cli("--home", home, "devices", "import", devices).ok()
    pin = cli("--home", home, "pins", "create", "--device", "SN-A").ok().stdout.strip()
    csr = write_csr(tmp_path, "leaf", cn="gw9.example.net")
    cli("--home", home, "issue", "--csr", csr, "--profile", "server", "--out", tmp_path / "leaf.pem").ok()
    records = cli("--home", home, "audit", "list", "--json").ok().json()
    operations = [(r["operation"], r["actor"], r["device"]) for r in records]
    assert operations == [("devices-import", "dana", None), ("pins-create", "dana", "SN-A"), ("issue", "dana", None)]
    assert records[2]["serial"] and records[2]["details"]["profile"] == "server"
    everything = str(records)
    assert pin not in everything and pin.replace("-", "") not in everything
    assert cli("--home", home, "audit", "verify").ok()
