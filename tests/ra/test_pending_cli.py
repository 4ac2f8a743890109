"""`ztpki requests list|show|approve|reject` on a fresh click group."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import click
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine

import ra.db
from ca.store import make_engine
from ra.audit import AuditLog
from ra.pending import PendingRecord, PendingRequests
from ra.requests import EnrolmentRequest, Issued, OneTimePin, Operation, Pending, Protocol, Rejected, RejectReason
from ra.serialize import encode_request
from ztpki import cli_ra


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

    cli_ra.register(main, lambda ctx: instance)  # type: ignore[arg-type,return-value]
    return main


@pytest.fixture(autouse=True)
def admin(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ZTPKI_ADMIN", "carol")
    return "carol"


def _core_module(monkeypatch: pytest.MonkeyPatch, **attributes: Any) -> None:
    """Stand in for ra.core (written elsewhere) with just what the CLI looks for."""
    module = types.ModuleType("ra.core")
    module.__spec__ = importlib.machinery.ModuleSpec("ra.core", None)
    for name, value in attributes.items():
        setattr(module, name, value)
    monkeypatch.setitem(sys.modules, "ra.core", module)


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


def test_approve_without_a_core_leaves_delivery_to_the_next_poll_and_audits_the_admin(
    main: click.Group, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _core_module(monkeypatch)
    record = _pending(engine)
    result = CliRunner().invoke(main, ["requests", "approve", record.id])
    assert result.exit_code == 0, result.output
    assert "next poll" in result.stdout
    stored = PendingRequests(engine).get(record.id)
    assert stored is not None and (stored.status, stored.decided_by) == ("approved", "carol")
    (audit,) = AuditLog(engine).records()
    assert (audit.actor, audit.operation, audit.device, audit.outcome) == ("carol", "approve-request", "SN-7", "admin")
    assert audit.details["request_id"] == record.id


def test_approve_asks_the_core_to_issue_and_reports_the_certificate(
    main: click.Group, engine: Engine, instance: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, str]] = []
    certificate = _certificate()

    def issue_approved(given: Any, request_id: str) -> Issued:
        calls.append((given, request_id))
        return Issued(certificate=certificate, chain=(), ca_certificates=())

    _core_module(monkeypatch, issue_approved=issue_approved)
    record = _pending(engine)
    result = CliRunner().invoke(main, ["requests", "approve", record.id])
    assert result.exit_code == 0, result.output
    assert calls == [(instance, record.id)]
    assert "certificate abcdef issued" in result.stdout


def test_approve_falls_back_to_the_instance_core(
    main: click.Group, engine: Engine, instance: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _core_module(monkeypatch)
    instance.core = SimpleNamespace(issue_approved=lambda request_id: Pending(request_id, 30))
    result = CliRunner().invoke(main, ["requests", "approve", _pending(engine).id])
    assert result.exit_code == 0, result.output
    assert "retry in 30 s" in result.stdout


def test_approving_again_retries_delivery_without_a_second_approval_record(
    main: click.Group, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = [Rejected(RejectReason.SYSTEM_UNAVAILABLE, "token down"), None]
    _core_module(monkeypatch, issue_approved=lambda instance, request_id: answers.pop(0))
    record = _pending(engine)
    failed = CliRunner().invoke(main, ["requests", "approve", record.id])
    assert failed.exit_code == 1
    assert "not issued: system_unavailable: token down" in failed.stdout
    again = CliRunner().invoke(main, ["requests", "approve", record.id])
    assert again.exit_code == 0, again.output
    assert [r.operation for r in AuditLog(engine).records()] == ["approve-request"]


def test_reject_records_the_reason_and_audits_it(main: click.Group, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    _core_module(monkeypatch)
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
