"""The enrolment core end to end: real certificates for every kind of
evidence and every rejection reason, on a real token and store."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ra.admin import block_device, unblock_device
from ra.core import CorePolicy
from ra.requests import (
    CurrentCertificate,
    HttpBasic,
    Issued,
    OneTimePin,
    Operation,
    Pending,
    Rejected,
    RejectReason,
    Revoked,
    SharedSecretReference,
    TlsClientCertificate,
    VendorCertificate,
)
from corehelpers import World, enrolment, make_world, trustfixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("core"))


def issued(decision: object) -> Issued:
    assert isinstance(decision, Issued), decision
    return decision


def refused(decision: object, reason: RejectReason) -> Rejected:
    assert isinstance(decision, Rejected), decision
    assert decision.reason is reason, decision
    return decision


# -- vendor certificates (F1, F5) ------------------------------------------------


def test_registered_device_with_its_idevid_gets_a_certificate_named_by_the_registry(world: World) -> None:
    serial = world.device(tenant="Operator A")
    result = issued(world.instance.core.decide(enrolment(VendorCertificate(world.idevid(serial)))))
    cert = result.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == serial
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == serial
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Operator A"
    assert result.ca_certificates[0] == result.chain[-1]  # the operator root, for CMP caPubs
    record = world.instance.store.certificate(cert.serial_number)
    assert record.device_id == serial and record.profile == "enb"
    assert world.instance.registry.get(serial).state == "active"  # type: ignore[union-attr]
    last = list(world.instance.audit.records(device=serial))[-1]
    assert last.outcome == "issued" and last.serial == format(cert.serial_number, "x")


def test_idevid_over_tls_works_the_same(world: World) -> None:
    serial = world.device()
    issued(world.instance.core.decide(enrolment(TlsClientCertificate(world.idevid(serial)))))


def test_expired_vendor_certificate_is_refused(world: World) -> None:
    serial = world.device()
    chain = world.idevid(serial, not_after=trustfixtures.NOW - timedelta(days=1), not_before=trustfixtures.NOW - timedelta(days=30))
    refused(world.instance.core.decide(enrolment(VendorCertificate(chain))), RejectReason.CERTIFICATE_EXPIRED)


def test_untrusted_vendor_root_is_refused(world: World) -> None:
    serial = world.device()
    chain = world.idevid(serial, pki=world.stranger)
    refused(world.instance.core.decide(enrolment(VendorCertificate(chain))), RejectReason.UNTRUSTED_CERTIFICATE)


def test_revoked_vendor_intermediate_is_refused(tmp_path: Path) -> None:
    own = make_world(tmp_path)
    serial = own.device()
    crl = trustfixtures.make_crl(own.vendor.root, [own.vendor.intermediate.certificate.serial_number])
    own.instance.trust.load_crl("acme", trustfixtures.crl_der(crl))
    refused(own.instance.core.decide(enrolment(VendorCertificate(own.idevid(serial)))), RejectReason.CERTIFICATE_REVOKED)


def test_device_not_in_the_registry_is_refused(world: World) -> None:
    chain = world.idevid("NOT-REGISTERED-1")
    refused(world.instance.core.decide(enrolment(VendorCertificate(chain))), RejectReason.UNKNOWN_DEVICE)


def test_device_without_a_profile_gets_nothing(world: World) -> None:
    serial = world.device(profile=None)
    refused(world.instance.core.decide(enrolment(VendorCertificate(world.idevid(serial)))), RejectReason.NOT_AUTHORIZED)


def test_blocked_device_is_refused_and_its_certificates_revoked(world: World) -> None:
    core = world.instance.core
    serial = world.device()
    first = issued(core.decide(enrolment(VendorCertificate(world.idevid(serial)))))
    revoked = block_device(core, serial, "keyCompromise", admin="alice")
    assert revoked == [first.certificate.serial_number]
    assert world.instance.store.certificate(first.certificate.serial_number).status == "revoked"
    refused(core.decide(enrolment(VendorCertificate(world.idevid(serial)))), RejectReason.DEVICE_BLOCKED)
    unblock_device(core, serial, admin="alice")
    issued(core.decide(enrolment(VendorCertificate(world.idevid(serial)))))


# -- PINs (F4) -------------------------------------------------------------------


def test_pin_is_one_time_bound_to_its_device_and_locks(world: World) -> None:
    core = world.instance.core
    serial, other = world.device(profile="phone"), world.device(profile="phone")
    pin = world.instance.pins.create(serial)
    refused(core.decide(enrolment(OneTimePin(pin), claimed=other)), RejectReason.BAD_CREDENTIAL)
    issued(core.decide(enrolment(OneTimePin(pin), claimed=serial)))
    refused(core.decide(enrolment(OneTimePin(pin), claimed=serial)), RejectReason.BAD_CREDENTIAL)
    guessed = world.instance.pins.create(other)
    for attempt in range(5):
        refused(core.decide(enrolment(OneTimePin(f"WRONG{attempt}"), claimed=other)), RejectReason.BAD_CREDENTIAL)
    # Locked after the guesses: even the right PIN is refused now.
    refused(core.decide(enrolment(OneTimePin(guessed), claimed=other)), RejectReason.BAD_CREDENTIAL)


def test_expired_pin_is_refused(world: World) -> None:
    serial = world.device(profile="phone")
    pin = world.instance.pins.create(serial, ttl=timedelta(minutes=1))
    from sqlalchemy import update

    from storage.db import now
    from vendor_trust.schema import pins

    with world.instance.engine.begin() as conn:  # the minute has passed
        conn.execute(update(pins).where(pins.c.device_serial == serial).values(expires_at=now() - timedelta(seconds=1)))
    refused(world.instance.core.decide(enrolment(OneTimePin(pin), claimed=serial)), RejectReason.BAD_CREDENTIAL)


# -- shared secrets and passwords -------------------------------------------------


def test_mac_credential_has_a_use_limit(world: World) -> None:
    serial = world.device()
    reference, _secret = world.instance.credentials.create_mac(device_serial=serial, max_uses=1)
    issued(world.instance.core.decide(enrolment(SharedSecretReference(reference))))
    refused(world.instance.core.decide(enrolment(SharedSecretReference(reference))), RejectReason.BAD_CREDENTIAL)


def test_batch_credential_needs_the_device_named_in_the_request(world: World) -> None:
    serial = world.device(profile="ucpe")
    reference, _ = world.instance.credentials.create_mac(batch="lot-7")
    refused(world.instance.core.decide(enrolment(SharedSecretReference(reference))), RejectReason.UNKNOWN_DEVICE)
    issued(world.instance.core.decide(enrolment(SharedSecretReference(reference), claimed=serial)))


def test_http_basic_password(world: World) -> None:
    serial = world.device(profile="ucpe")
    user, password = world.instance.credentials.create_password(device_serial=serial)
    refused(world.instance.core.decide(enrolment(HttpBasic(user, password + "x"))), RejectReason.BAD_CREDENTIAL)
    issued(world.instance.core.decide(enrolment(HttpBasic(user, password))))


# -- renewal and revocation ------------------------------------------------------------


def test_renewal_with_the_current_certificate_and_refusals(world: World) -> None:
    core = world.instance.core
    serial, other = world.device(), world.device()
    current = issued(core.decide(enrolment(VendorCertificate(world.idevid(serial))))).certificate
    renewed = issued(core.decide(enrolment(CurrentCertificate(current), operation=Operation.RENEWAL)))
    assert renewed.device == serial
    # Renewal needs the current certificate, not a factory certificate.
    refused(core.decide(enrolment(VendorCertificate(world.idevid(serial)), operation=Operation.RENEWAL)), RejectReason.NOT_AUTHORIZED)
    # Another device's certificate does not renew this device.
    refused(core.decide(enrolment(CurrentCertificate(current), operation=Operation.RENEWAL, claimed=other)), RejectReason.NOT_AUTHORIZED)
    world.instance.revocations.revoke(current.serial_number, "superseded")
    refused(core.decide(enrolment(CurrentCertificate(current), operation=Operation.RENEWAL)), RejectReason.CERTIFICATE_REVOKED)


def test_device_revokes_its_own_certificate_only(world: World) -> None:
    core = world.instance.core
    serial, other = world.device(), world.device()
    mine = issued(core.decide(enrolment(VendorCertificate(world.idevid(serial))))).certificate
    theirs = issued(core.decide(enrolment(VendorCertificate(world.idevid(other))))).certificate
    refused(core.decide(enrolment(CurrentCertificate(mine), operation=Operation.REVOCATION, revoke_serial=theirs.serial_number)), RejectReason.NOT_AUTHORIZED)
    assert isinstance(core.decide(enrolment(CurrentCertificate(mine), operation=Operation.REVOCATION, revoke_serial=mine.serial_number)), Revoked)


# -- policy ------------------------------------------------------------------------------


def test_ca_true_and_foreign_sans_and_missing_pop_are_refused(world: World) -> None:
    core = world.instance.core
    serial = world.device()
    evidence = VendorCertificate(world.idevid(serial))
    ca_true = x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=True, path_length=None))
    refused(core.decide(enrolment(evidence, extensions=(ca_true,))), RejectReason.POLICY_VIOLATION)
    refused(core.decide(enrolment(evidence, sans=(x509.DNSName("bank.example.com"),))), RejectReason.POLICY_VIOLATION)
    refused(core.decide(enrolment(evidence, pop=False)), RejectReason.BAD_POP)


def test_a_dns_name_is_only_the_one_the_profile_gives_the_device(world: World) -> None:
    # Issue 10 finding 2: "<serial>.<any domain>" was kept (first label only compared),
    # in a certificate of the enb profile, which carries serverAuth.
    core, cas = world.instance.core, world.instance.cas
    serial = world.device()
    evidence = VendorCertificate(world.idevid(serial))
    for foreign in (f"{serial.lower()}.evil.example", f"{serial}.ran.example.net", serial.lower()):
        refused(core.decide(enrolment(evidence, sans=(x509.DNSName(foreign),))), RejectReason.POLICY_VIOLATION)
        last = list(world.instance.audit.records(device=serial))[-1]
        assert (last.outcome, last.reason) == ("rejected", "policy_violation") and "does not name device" in last.details["text"]
    assert list(world.instance.store.certificates(device_id=serial)) == []

    cas.profiles["enb-named"] = dataclasses.replace(cas.profiles["enb"], name="enb-named", dns_names=("{serial}.ran.example.net",))
    named = world.device(profile="enb-named")
    evidence = VendorCertificate(world.idevid(named))
    for foreign in (f"{named}.evil.example", f"{named}.ran.example.net.evil.example", f"{named}.ran.example.net.",
                    f"*.{named}.ran.example.net", named, f"x.{named}.ran.example.net"):
        refused(core.decide(enrolment(evidence, sans=(x509.DNSName(foreign),))), RejectReason.POLICY_VIOLATION)
    # Case aside (RFC 4343) it is the device's name; the certificate carries the canonical spelling.
    own = issued(core.decide(enrolment(evidence, sans=(x509.DNSName(f"{named.upper()}.RAN.Example.NET"),))))
    san = own.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName(f"{named.lower()}.ran.example.net")]


def test_a_serial_that_looks_like_a_host_name_is_not_copied_into_a_dns_name(world: World) -> None:
    # The server profile copies a host-name CN into the SAN; a device's CN is its serial.
    serial = "gw1.bank.example"
    world.instance.registry.register(serial=serial, vendor="acme", profile="server")
    decision = world.instance.core.decide(enrolment(VendorCertificate(world.idevid(serial))))
    refused(decision, RejectReason.POLICY_VIOLATION)


def test_no_evidence_is_not_authorized(world: World) -> None:
    refused(world.instance.core.decide(enrolment()), RejectReason.NOT_AUTHORIZED)


# -- transactions, approval, overload ------------------------------------------------------


def test_a_retried_transaction_gets_the_same_certificate_and_a_reused_id_is_refused(world: World) -> None:
    core = world.instance.core
    serial = world.device()
    evidence = VendorCertificate(world.idevid(serial))
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    first = issued(core.decide(enrolment(evidence, transaction="tx-1", key=key)))
    again = issued(core.decide(enrolment(evidence, transaction="tx-1", key=key)))
    assert again.certificate == first.certificate
    assert len(list(world.instance.store.certificates(device_id=serial))) == 1
    refused(core.decide(enrolment(evidence, transaction="tx-1")), RejectReason.TRANSACTION_IN_USE)


def test_manual_approval_then_one_certificate(world: World) -> None:
    core = world.instance.core
    cas = world.instance.cas
    cas.profiles["enb-manual"] = dataclasses.replace(cas.profiles["enb"], name="enb-manual", approval="manual")
    serial = world.device(profile="enb-manual")
    pending = core.decide(enrolment(VendorCertificate(world.idevid(serial)), transaction="tx-manual"))
    assert isinstance(pending, Pending) and pending.retry_after > 0
    assert isinstance(core.result_of(pending.request_id), Pending)
    world.instance.pending.approve(pending.request_id, "alice")
    first = issued(core.result_of(pending.request_id))
    assert issued(core.result_of(pending.request_id)).certificate == first.certificate
    assert issued(core.issue_approved(pending.request_id)).certificate == first.certificate
    assert len(list(world.instance.store.certificates(device_id=serial))) == 1


def test_rejected_pending_request(world: World) -> None:
    core = world.instance.core
    cas = world.instance.cas
    cas.profiles["enb-manual"] = dataclasses.replace(cas.profiles["enb"], name="enb-manual", approval="manual")
    serial = world.device(profile="enb-manual")
    pending = core.decide(enrolment(VendorCertificate(world.idevid(serial))))
    assert isinstance(pending, Pending)
    world.instance.pending.reject(pending.request_id, "alice", "not this one")
    refused(core.result_of(pending.request_id), RejectReason.REQUEST_REJECTED)


def test_overload_answers_retry_later(tmp_path: Path) -> None:
    own = make_world(tmp_path)
    core = own.instance.core
    # A minute-long window: a slow machine cannot spread the 4 requests over several windows.
    core.policy = CorePolicy(global_limit=2, global_window=60)
    serial = own.device()
    results = [core.decide(enrolment(VendorCertificate(own.idevid(serial)))) for _ in range(4)]
    busy = [r for r in results if isinstance(r, Rejected)]
    assert busy and all(r.reason is RejectReason.SYSTEM_UNAVAILABLE and r.retry_after for r in busy)


def test_unauthenticated_requests_do_not_spend_the_global_budget(tmp_path: Path) -> None:
    """Security issue: counted before authentication, a self-signed flood made
    every device hear "busy"."""
    own = make_world(tmp_path)
    core = own.instance.core
    core.policy = CorePolicy(global_limit=2, global_window=60)
    for _ in range(5):
        refused(core.decide(enrolment(VendorCertificate(own.idevid(own.device(), pki=own.stranger)))),
                RejectReason.UNTRUSTED_CERTIFICATE)
    serial = own.device()
    assert not isinstance(core.decide(enrolment(VendorCertificate(own.idevid(serial)))), Rejected)


def test_every_authenticated_decision_is_chained_and_the_chain_verifies(world: World) -> None:
    audit = world.instance.audit
    serial = world.device()
    world.instance.registry.block(serial, "stolen")
    before = audit.count()
    refused(world.instance.core.decide(enrolment(VendorCertificate(world.idevid(serial)))), RejectReason.DEVICE_BLOCKED)
    assert audit.count() == before + 1
    last = list(audit.records(after_seq=before))[-1]
    assert (last.device, last.outcome, last.reason) == (serial, "rejected", "device_blocked")
    assert audit.verify().ok


def test_a_flood_of_unauthenticated_refusals_is_counted_not_chained(world: World) -> None:
    # Issue 10, 6c: one chained record per bad request let one client fill the disk.
    audit = world.instance.audit
    before = audit.count()
    for n in range(60):
        evidence = () if n % 2 else (VendorCertificate(world.idevid(world.device(), world.stranger)),)
        decision = world.instance.core.decide(dataclasses.replace(enrolment(*evidence), peer="198.51.100.9"))
        assert isinstance(decision, Rejected)
    assert audit.count() == before
    rows = [row for row in audit.noise.rows() if row.source == "198.51.100.9"]
    assert {(row.protocol, row.reason, row.count) for row in rows} == {
        ("cmp", "not_authorized", 30), ("cmp", "untrusted_certificate", 30),
    }


def test_a_profile_may_drop_excess_extensions_instead_of_refusing(world: World) -> None:
    cas = world.instance.cas
    cas.profiles["enb-lenient"] = dataclasses.replace(cas.profiles["enb"], name="enb-lenient", excess_extensions="drop")
    serial = world.device(profile="enb-lenient")
    ca_true = x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=True, path_length=None))
    result = issued(world.instance.core.decide(enrolment(VendorCertificate(world.idevid(serial)), extensions=(ca_true,))))
    assert result.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_unknown_device_is_registered_only_where_the_profile_allows_it(world: World) -> None:
    cas = world.instance.cas
    cas.profiles["enb-open"] = dataclasses.replace(cas.profiles["enb"], name="enb-open", auto_register=True)
    core = world.instance.core
    serial = "AUTO-REG-1"
    chain = world.idevid(serial)
    refused(core.decide(enrolment(VendorCertificate(chain))), RejectReason.UNKNOWN_DEVICE)
    assert world.instance.registry.get(serial) is None
    request = dataclasses.replace(enrolment(VendorCertificate(chain)), profile="enb-open")
    assert issued(core.decide(request)).device == serial
    device = world.instance.registry.get(serial)
    assert device is not None and device.vendor == "acme" and device.profile == "enb-open"
    # An untrusted vendor certificate never registers anything.
    stranger = dataclasses.replace(enrolment(VendorCertificate(world.idevid("AUTO-REG-2", pki=world.stranger))), profile="enb-open")
    refused(core.decide(stranger), RejectReason.UNTRUSTED_CERTIFICATE)
    assert world.instance.registry.get("AUTO-REG-2") is None
