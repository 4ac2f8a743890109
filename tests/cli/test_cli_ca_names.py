"""`ca add` with a name that cannot work, or that exists: refused, and nothing is
left behind (no CA record, no file outside the home, no key in the token)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from clihelpers import assert_user_error, cli, init_home


@pytest.fixture
def fresh_home(tmp_path: Path) -> Path:
    # The home's parent is this test's own directory, so stray files show there.
    home = tmp_path / "home"
    init_home(home)
    return home


def ca_names(home: Path) -> list[str]:
    return [ca["name"] for ca in cli("--home", home, "ca", "list", "--json").json()]


def private_key_labels(home: Path) -> list[str]:
    config = tomllib.loads((home / "ztpki.toml").read_text())
    proc = subprocess.run(
        ["pkcs11-tool", "--module", config["token"]["module"], "--login",
         "--pin", (home / "token.pin").read_text().strip(),
         "--token-label", config["token"]["label"], "--list-objects", "--type", "privkey"],
        capture_output=True, text=True, env={"SOFTHSM2_CONF": str(home / "softhsm2.conf"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sorted(line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if line.strip().startswith("label:"))


def test_ca_name_with_a_path_is_refused(fresh_home: Path) -> None:
    before = ca_names(fresh_home)
    outside_before = sorted(p.name for p in fresh_home.parent.iterdir())
    outcome = cli("--home", fresh_home, "ca", "add", "../evil")
    assert sorted(p.name for p in fresh_home.parent.iterdir()) == outside_before, "wrote outside the home"
    assert_user_error(outcome, "name")
    assert ca_names(fresh_home) == before


def test_failed_ca_add_leaves_no_ca(fresh_home: Path) -> None:
    before = ca_names(fresh_home)
    outcome = cli("--home", fresh_home, "ca", "add", "a b")
    assert_user_error(outcome)  # refused, one line: holds today
    assert ca_names(fresh_home) == before


def test_existing_ca_name_makes_no_key(fresh_home: Path) -> None:
    keys = private_key_labels(fresh_home)
    before = ca_names(fresh_home)
    assert_user_error(cli("--home", fresh_home, "ca", "add", "issuing"), "exists already")
    assert ca_names(fresh_home) == before
    assert private_key_labels(fresh_home) == keys


def test_ca_add_then_existing_name_refused(fresh_home: Path) -> None:
    cli("--home", fresh_home, "ca", "add", "ucpe-ca").ok()
    names = ca_names(fresh_home)
    assert names.count("ucpe-ca") == 1
    assert_user_error(cli("--home", fresh_home, "ca", "add", "ucpe-ca"), "ucpe-ca")
    assert ca_names(fresh_home) == names
