"""Every user mistake: a one-line error naming it, exit code 1, no traceback,
and nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from clihelpers import assert_user_error, cli, load_chain, run_ztpki, write_csr
from clihelpers import csr_dir, home  # noqa: F401  (fixtures)



@pytest.fixture(scope="module")
def good_csr(csr_dir: Path) -> Path:
    return write_csr(csr_dir, "good")


def listing(home: Path) -> list[dict[str, object]]:
    data: list[dict[str, object]] = cli("--home", home, "certs", "list", "--json").json()
    return data


@pytest.mark.parametrize("args", [["certs", "list"], ["init"]], ids=["certs-list", "init"])
def test_no_home(args: list[str]) -> None:
    assert_user_error(cli(*args), "--home")


def test_no_home_is_refused_without_traceback() -> None:
    outcome = cli("certs", "list")
    assert outcome.exception is None and outcome.exit_code != 0, outcome.describe()
    assert "Traceback" not in outcome.stdout + outcome.stderr
    assert "--home" in outcome.stderr and "ZTPKI_HOME" in outcome.stderr


@pytest.mark.parametrize("kind", ["empty-dir", "missing-dir"])
def test_home_that_is_not_an_instance(tmp_path: Path, kind: str) -> None:
    home = tmp_path / "nothing"
    if kind == "empty-dir":
        home.mkdir()
    assert_user_error(cli("--home", home, "certs", "list"), str(home), "not a ztpki instance")
    assert_user_error(cli("--home", home, "ca", "list"), "not a ztpki instance")
    assert list(tmp_path.iterdir()) == ([home] if kind == "empty-dir" else [])
    if kind == "empty-dir":
        assert list(home.iterdir()) == []


def test_home_that_is_not_an_instance_real_executable(tmp_path: Path) -> None:
    proc = run_ztpki("--home", tmp_path, "certs", "list")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("Error: ")
    assert "not a ztpki instance" in proc.stderr


def test_init_on_existing_instance(home: Path) -> None:
    before = {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()}
    assert_user_error(cli("init", "--home", home), str(home), "instance already")
    after = {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()}
    assert after == before


def test_unknown_profile(home: Path, good_csr: Path) -> None:
    before = listing(home)
    assert_user_error(cli("--home", home, "issue", "--csr", good_csr, "--profile", "no-such-profile"), "no-such-profile")
    assert listing(home) == before


def test_unknown_ca(home: Path, good_csr: Path) -> None:
    before = listing(home)
    assert_user_error(
        cli("--home", home, "issue", "--csr", good_csr, "--profile", "server", "--ca", "no-such-ca"), "no-such-ca"
    )
    assert_user_error(cli("--home", home, "crl", "--ca", "no-such-ca", "--out", good_csr.parent / "x.crl"), "no-such-ca")
    assert not (good_csr.parent / "x.crl").exists()
    assert listing(home) == before


@pytest.mark.parametrize("text", ["xyz", "12g4", "0x", "", "1" * 43])
def test_bad_serial_text(home: Path, text: str) -> None:
    assert_user_error(cli("--home", home, "revoke", text, "--reason", "keyCompromise"), "serial")
    assert_user_error(cli("--home", home, "certs", "show", text), "serial")


def test_unknown_serial(home: Path) -> None:
    before = listing(home)
    assert_user_error(cli("--home", home, "revoke", "abcdef0123", "--reason", "keyCompromise"), "abcdef0123")
    assert listing(home) == before


def test_certs_show_unknown_serial(home: Path) -> None:
    assert_user_error(cli("--home", home, "certs", "show", "ABCDEF0123"), "abcdef0123")


def test_bad_reason(home: Path, good_csr: Path) -> None:
    out = good_csr.parent / "r.pem"
    cli("--home", home, "issue", "--csr", good_csr, "--profile", "server", "--out", out).ok()
    serial = f"{load_chain(out)[0].serial_number:x}"
    before = listing(home)
    assert_user_error(cli("--home", home, "revoke", serial, "--reason", "because"), "because")
    assert listing(home) == before
    # A certificate not on hold cannot be released.
    assert_user_error(cli("--home", home, "revoke", serial, "--reason", "removeFromCRL"), "not on hold")
    assert listing(home) == before


def test_missing_csr_file(home: Path, tmp_path: Path) -> None:
    before = listing(home)
    missing = tmp_path / "missing.csr"
    assert_user_error(cli("--home", home, "issue", "--csr", missing, "--profile", "server"), str(missing))
    assert listing(home) == before


@pytest.mark.parametrize(
    "content",
    [b"garbage\n", b"", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
     bytes(range(256))],
    ids=["text", "empty", "bad-pem", "binary"],
)
def test_garbage_csr(home: Path, tmp_path: Path, content: bytes) -> None:
    before = listing(home)
    path = tmp_path / "garbage.csr"
    path.write_bytes(content)
    assert_user_error(cli("--home", home, "issue", "--csr", path, "--profile", "server"), "certificate request")
    assert_user_error(cli("--home", home, "issue", "--csr", "-", "--profile", "server", input=content), "certificate request")
    assert listing(home) == before
