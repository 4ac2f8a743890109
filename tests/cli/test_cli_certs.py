"""certs list / show, the status filter, CAs (list, add, issue under another CA),
ZTPKI_HOME, and --days."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from clihelpers import RECORD_KEYS, assert_user_error, cli, load_chain, rsa_key, write_csr
from clihelpers import csr_dir, home  # noqa: F401  (fixtures)


def issue(home: Path, csr_dir: Path, name: str, *extra: object, profile: str = "server", **csr: Any) -> list[x509.Certificate]:
    out = csr_dir / f"{name}.pem"
    cli("--home", home, "issue", "--csr", write_csr(csr_dir, name, **csr), "--profile", profile, "--out", out, *extra).ok()
    return load_chain(out)


def hex_serial(certificate: x509.Certificate) -> str:
    return f"{certificate.serial_number:x}"


def test_certs_list_json(home: Path, csr_dir: Path) -> None:
    leaf = issue(home, csr_dir, "listed", cn="listed.example.net")[0]
    records = cli("--home", home, "certs", "list", "--json").json()
    assert isinstance(records, list) and records
    for record in records:
        assert set(record) == RECORD_KEYS, record
        assert record["status"] in {"valid", "revoked", "hold", "signing", "failed"}
        datetime.fromisoformat(record["not_before"])
        datetime.fromisoformat(record["not_after"])
        datetime.fromisoformat(record["created_at"])
        assert isinstance(record["sans"], list)
    ours = [r for r in records if r["serial"] == hex_serial(leaf)]
    assert len(ours) == 1
    record = ours[0]
    assert record["status"] == "valid"
    assert record["ca"] == "issuing"
    assert record["profile"] == "server"
    assert record["subject"] == "CN=listed.example.net,O=Example"
    assert record["sans"] == ["dns:listed.example.net"]
    assert record["revoked_at"] is None and record["revocation_reason"] is None
    assert datetime.fromisoformat(record["not_after"]) == leaf.not_valid_after_utc
    assert datetime.fromisoformat(record["not_before"]) == leaf.not_valid_before_utc
    # The CA hierarchy made by init is listed too.
    assert {r["profile"] for r in records} >= {"sub-ca", "ocsp-signer", "server"}

    # The table form lists the same serials.
    table = cli("--home", home, "certs", "list").ok()
    assert sorted(line.split()[0] for line in table.stdout.splitlines()[1:]) == sorted(r["serial"] for r in records)


def test_certs_show_json(home: Path, csr_dir: Path) -> None:
    leaf = issue(home, csr_dir, "shown", cn="shown.example.net")[0]
    for spelling in (hex_serial(leaf), hex_serial(leaf).upper(), "0x" + hex_serial(leaf)):
        data = cli("--home", home, "certs", "show", spelling, "--json").json()
        assert set(data) == RECORD_KEYS | {"pem"}
        assert data["serial"] == hex_serial(leaf)
        assert data["status"] == "valid" and data["subject"] == "CN=shown.example.net,O=Example"
        assert x509.load_pem_x509_certificate(data["pem"].encode()) == leaf
    pem = cli("--home", home, "certs", "show", hex_serial(leaf), "--pem").ok().stdout
    assert pem == leaf.public_bytes(Encoding.PEM).decode()


def test_status_filter(home: Path, csr_dir: Path) -> None:
    kept = issue(home, csr_dir, "kept")[0]
    gone = issue(home, csr_dir, "gone")[0]
    held = issue(home, csr_dir, "held")[0]
    revoked = cli("--home", home, "revoke", hex_serial(gone), "--reason", "key-compromise", "--json").json()
    assert revoked["status"] == "revoked" and revoked["revocation_reason"] == "keyCompromise"
    cli("--home", home, "revoke", hex_serial(held), "--reason", "certificateHold").ok()

    def serials(status: str) -> dict[str, dict[str, object]]:
        records = cli("--home", home, "certs", "list", "--status", status, "--json").json()
        assert all(r["status"] == status for r in records), records
        return {str(r["serial"]): r for r in records}

    revoked_list = serials("revoked")
    assert hex_serial(gone) in revoked_list
    assert hex_serial(kept) not in revoked_list and hex_serial(held) not in revoked_list
    assert revoked_list[hex_serial(gone)]["revocation_reason"] == "keyCompromise"
    assert revoked_list[hex_serial(gone)]["revoked_at"] is not None
    assert hex_serial(held) in serials("hold")
    valid = serials("valid")
    assert hex_serial(kept) in valid and hex_serial(gone) not in valid and hex_serial(held) not in valid

    cli("--home", home, "revoke", hex_serial(held), "--reason", "removeFromCRL").ok()
    assert hex_serial(held) in serials("valid")
    assert hex_serial(held) not in serials("hold")


def test_ca_list_json(home: Path) -> None:
    cas = {ca["name"]: ca for ca in cli("--home", home, "ca", "list", "--json").json()}
    assert {"root", "issuing"} <= set(cas)
    for ca in cas.values():
        assert set(ca) == {"name", "kind", "subject", "not_after", "key_label", "ocsp_responder", "default"}
        assert ca["key_label"]
        datetime.fromisoformat(ca["not_after"])
    assert cas["root"]["kind"] == "root" and cas["root"]["default"] is False
    assert cas["issuing"]["kind"] == "issuing" and cas["issuing"]["default"] is True
    assert cas["issuing"]["ocsp_responder"] is True
    assert [name for name, ca in cas.items() if ca["default"]] == ["issuing"]
    root = x509.load_pem_x509_certificate((home / "root.pem").read_bytes())
    issuing = x509.load_pem_x509_certificate((home / "issuing.pem").read_bytes())
    assert cas["root"]["subject"] == root.subject.rfc4514_string()
    assert cas["issuing"]["subject"] == issuing.subject.rfc4514_string()
    assert issuing.issuer == root.subject


def test_ca_add_then_issue_under_it(home: Path, csr_dir: Path) -> None:
    cli("--home", home, "ca", "add", "phones").ok()
    cas = {ca["name"]: ca for ca in cli("--home", home, "ca", "list", "--json").json()}
    assert cas["phones"]["kind"] == "issuing" and cas["phones"]["ocsp_responder"] is True
    assert cas["issuing"]["default"] is True and cas["phones"]["default"] is False
    phones_pem = home / "phones.pem"
    assert phones_pem.is_file()

    out = csr_dir / "phone-1.pem"
    csr = write_csr(csr_dir, "phone-1", "phone-1", key=rsa_key())
    cli("--home", home, "issue", "--csr", csr, "--profile", "phone", "--ca", "phones", "--out", out).ok()
    chain = load_chain(out)
    assert len(chain) == 3
    assert chain[1] == x509.load_pem_x509_certificate(phones_pem.read_bytes())
    assert chain[2] == x509.load_pem_x509_certificate((home / "root.pem").read_bytes())
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", home / "root.pem", "-untrusted", phones_pem, out],
        capture_output=True, text=True,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == f"{out}: OK", ok.stdout + ok.stderr
    # Not under the default issuing CA.
    wrong = subprocess.run(
        ["openssl", "verify", "-CAfile", home / "root.pem", "-untrusted", home / "issuing.pem", out],
        capture_output=True, text=True,
    )
    assert wrong.returncode != 0
    record = cli("--home", home, "certs", "show", hex_serial(chain[0]), "--json").json()
    assert record["ca"] == "phones" and record["profile"] == "phone"
    phones_only = cli("--home", home, "certs", "list", "--ca", "phones", "--json").json()
    assert {r["ca"] for r in phones_only} == {"phones"}
    assert [r["serial"] for r in phones_only if r["profile"] == "phone"] == [hex_serial(chain[0])]


def test_ztpki_home_instead_of_home_option(home: Path, csr_dir: Path) -> None:
    by_option = cli("--home", home, "certs", "list", "--json").json()
    by_env = cli("certs", "list", "--json", env={"ZTPKI_HOME": str(home)}).json()
    assert by_env == by_option
    out = csr_dir / "env.pem"
    csr = write_csr(csr_dir, "env")
    cli("issue", "--csr", csr, "--profile", "server", "--out", out, env={"ZTPKI_HOME": str(home)}).ok()
    serial = hex_serial(load_chain(out)[0])
    assert cli("--home", home, "certs", "show", serial, "--json").json()["serial"] == serial
    # --home wins over the variable.
    elsewhere = csr_dir / "not-an-instance"
    elsewhere.mkdir()
    assert cli("--home", home, "certs", "show", serial, env={"ZTPKI_HOME": str(elsewhere)}).exit_code == 0
    assert_user_error(cli("certs", "list", env={"ZTPKI_HOME": str(elsewhere)}), "not a ztpki instance")


def test_days_sets_the_lifetime(home: Path, csr_dir: Path) -> None:
    before = datetime.now(timezone.utc)
    leaf = issue(home, csr_dir, "ten-days", "--days", "10")[0]
    after = datetime.now(timezone.utc)
    assert before - timedelta(days=1) < leaf.not_valid_before_utc <= after
    assert before + timedelta(days=10) - timedelta(seconds=2) <= leaf.not_valid_after_utc <= after + timedelta(days=10)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=10) <= lifetime <= timedelta(days=10, hours=1)
    record = cli("--home", home, "certs", "show", hex_serial(leaf), "--json").json()
    assert datetime.fromisoformat(record["not_after"]) == leaf.not_valid_after_utc

    default = issue(home, csr_dir, "default-days")[0]
    assert default.not_valid_after_utc - default.not_valid_before_utc > timedelta(days=300)


def test_days_beyond_the_profile_is_refused(home: Path, csr_dir: Path) -> None:
    listed = cli("--home", home, "certs", "list", "--json").json()
    csr = write_csr(csr_dir, "forever")
    out = csr_dir / "forever.pem"
    for days in ("100000", "0", "-5"):
        assert_user_error(
            cli("--home", home, "issue", "--csr", csr, "--profile", "server", "--days", days, "--out", out), "validity"
        )
    assert not out.exists()
    assert cli("--home", home, "certs", "list", "--json").json() == listed
