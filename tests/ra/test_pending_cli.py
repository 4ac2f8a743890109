"""`ztpki requests list|show|approve|reject` on a fresh click group."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import click
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine

import ra.db
from storage.db import make_engine
from ra.audit import AuditLog
from ra.pending import PendingRecord, PendingRequests
from ra.requests import EnrolmentRequest, OneTimePin, Operation, Pending, Protocol
from ra.serialize import encode_request
from ztpki.cli import requests as requests_commands


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ztpki.db'}")
    ra.db.migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def instance(engine: Engine) -> SimpleNamespace:
    return SimpleNamespace(engine=engine)


@pytest.fixture
def main(instance: SimpleNamespace) -> click.Group:
    @click.group()
    def main() -> None:
        pass

    requests_commands.register(main, lambda ctx: instance)  # type: ignore[arg-type,return-value]
    return main


@pytest.fixture(autouse=True)
def admin(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ZTPKI_ADMIN", "carol")
    return "carol"


def _request() -> EnrolmentRequest:
    return EnrolmentRequest(
        protocol=Protocol.SCEP, operation=Operation.INITIAL,
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(), pop_verified=True,
        subject=x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-7")]),
        sans=(x509.DNSName("sn-7.example"),), evidence=(OneTimePin("4711"),), transaction_id="tx-7",
    )


def _pending(engine: Engine, key: str = "scep:tx-7", device: str = "SN-7") -> PendingRecord:
    return PendingRequests(engine).begin(key, protocol="scep", operation="initial", device_serial=device,
                                         ca="issuing", profile="phone", request_bytes=encode_request(_request()))


def _certificate() -> x509.Certificate:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SN-7")])
    start = datetime.now(timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0xABCDEF).not_valid_before(start).not_valid_after(start + timedelta(days=1)).sign(key, None))


def test_requests_list_and_json(main: click.Group, engine: Engine) -> None:
    first, second = _pending(engine), _pending(engine, "scep:tx-8", "SN-8")
    PendingRequests(engine).approve(second.id, "dave")
    result = CliRunner().invoke(main, ["requests", "list"])
    assert result.exit_code == 0, result.output
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:]] == [[first.id, "pending"], [second.id, "approved"]]
    result = CliRunner().invoke(main, ["requests", "list", "--status", "pending", "--json"])
    assert [(r["id"], r["device"], r["status"]) for r in json.loads(result.stdout)] == [(first.id, "SN-7", "pending")]


def test_requests_show_decodes_what_the_request_asks_for(main: click.Group, engine: Engine) -> None:
    record = _pending(engine)
    result = CliRunner().invoke(main, ["requests", "show", record.id, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["id"], data["status"], data["transaction"]) == (record.id, "pending", "scep:tx-7")
    assert data["request"]["subject"] == "2.5.4.5=SN-7"
    assert data["request"]["sans"] == ["sn-7.example"]
    assert data["request"]["public_key"] == "EC secp256r1"
    assert data["request"]["evidence"] == ["VerifiedOneTimePin"]
    text = CliRunner().invoke(main, ["requests", "show", record.id])
    assert "sn-7.example" in text.stdout and "4711" not in text.stdout


def test_requests_show_of_an_unknown_id_fails_in_one_line(main: click.Group) -> None:
    result = CliRunner().invoke(main, ["requests", "show", "nope"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: no request nope"


def test_reject_records_the_reason_and_audits_it(main: click.Group, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    record = _pending(engine)
    result = CliRunner().invoke(main, ["requests", "reject", record.id, "--reason", "unknown phone"])
    assert result.exit_code == 0, result.output
    stored = PendingRequests(engine).get(record.id)
    assert stored is not None and (stored.status, stored.reject_text, stored.decided_by) == ("rejected", "unknown phone", "carol")
    (audit,) = AuditLog(engine).records()
    assert (audit.actor, audit.outcome, audit.reason, audit.details["text"]) == ("carol", "rejected", "request_rejected", "unknown phone")
    refused = CliRunner().invoke(main, ["requests", "approve", record.id])
    assert refused.exit_code == 1
    assert "rejected, not pending" in refused.stderr
    assert len(list(AuditLog(engine).records())) == 1


def test_approve_has_the_core_issue_once_and_audits_the_admin(tmp_path: Path) -> None:
    import dataclasses

    from corehelpers import enrolment, make_world
    from ra.requests import VendorCertificate

    world = make_world(tmp_path)
    cas = world.instance.cas
    cas.profiles["enb-manual"] = dataclasses.replace(cas.profiles["enb"], name="enb-manual", approval="manual")
    serial = world.device(profile="enb-manual")
    pending = world.instance.core.decide(enrolment(VendorCertificate(world.idevid(serial)), transaction="tx-cli"))
    assert isinstance(pending, Pending)

    @click.group()
    def main() -> None:
        pass

    requests_commands.register(main, lambda ctx: world.instance)  # type: ignore[arg-type,return-value]
    result = CliRunner().invoke(main, ["requests", "approve", pending.request_id])
    assert result.exit_code == 0, result.output
    (certificate,) = world.instance.store.certificates(device_id=serial)
    assert f"certificate {certificate.serial_hex} issued" in result.stdout
    again = CliRunner().invoke(main, ["requests", "approve", pending.request_id])
    assert again.exit_code == 1
    assert len(list(world.instance.store.certificates(device_id=serial))) == 1
    approvals = [r for r in world.instance.audit.records() if r.operation == "approve-request"]
    assert [(r.actor, r.device) for r in approvals] == [("carol", serial)]
