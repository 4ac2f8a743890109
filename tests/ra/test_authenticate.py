"""Evidence that fails fails the request (STYLE.md "Think like the attacker",
security issue 10 finding 7): a weaker piece of evidence presented beside it
is never a fallback. Real certificates, token and store."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ra.requests import (
    HttpBasic,
    Issued,
    OneTimePin,
    Protocol,
    Rejected,
    RejectReason,
    TlsClientCertificate,
    VendorCertificate,
)
from corehelpers import World, enrolment, make_world, trustfixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("authenticate"))


def refused(decision: object, reason: RejectReason) -> Rejected:
    assert isinstance(decision, Rejected), decision
    assert decision.reason is reason, decision
    return decision


def password_for(world: World, serial: str) -> HttpBasic:
    username, secret = world.instance.credentials.create_password(device_serial=serial)
    return HttpBasic(username, secret)


def uses(world: World, basic: HttpBasic) -> int:
    info = world.instance.credentials.info(basic.username)
    assert info is not None
    return info.uses


def test_a_revoked_certificate_of_ours_with_a_good_password_is_refused_as_revoked(world: World) -> None:
    core = world.instance.core
    serial = world.device(profile="ucpe")
    current = core.decide(enrolment(TlsClientCertificate(world.idevid(serial))))
    assert isinstance(current, Issued), current
    world.instance.revocations.revoke(current.certificate.serial_number, "keyCompromise")
    basic = password_for(world, serial)
    chain = (current.certificate, *world.instance.cas.authority().chain)
    decision = core.decide(enrolment(TlsClientCertificate(chain), basic, protocol=Protocol.EST))
    refused(decision, RejectReason.CERTIFICATE_REVOKED)
    assert [r.serial for r in world.instance.store.certificates(device_id=serial)] == [current.certificate.serial_number]
    # The certificate was judged first: the password's use was not counted.
    assert uses(world, basic) == 0
    # Nothing authenticated: the refusal is counted (audit noise), not chained.
    counted = [r for r in world.instance.audit.noise.rows() if r.reason == "certificate_revoked"]
    assert counted and counted[0].count >= 1


@pytest.mark.parametrize(("which", "reason"), [
    ("untrusted", RejectReason.UNTRUSTED_CERTIFICATE),
    ("expired", RejectReason.CERTIFICATE_EXPIRED),
])
def test_a_failing_vendor_certificate_with_a_good_password_is_refused_with_its_reason(
    world: World, which: str, reason: RejectReason
) -> None:
    serial = world.device(profile="ucpe")
    if which == "untrusted":
        chain = world.idevid(serial, pki=world.stranger)
    else:
        chain = world.idevid(serial, not_after=trustfixtures.NOW - timedelta(days=1),
                             not_before=trustfixtures.NOW - timedelta(days=30))
    basic = password_for(world, serial)
    refused(world.instance.core.decide(enrolment(TlsClientCertificate(chain), basic)), reason)
    refused(world.instance.core.decide(enrolment(VendorCertificate(chain), basic)), reason)
    assert list(world.instance.store.certificates(device_id=serial)) == []
    assert uses(world, basic) == 0


def test_a_failing_certificate_beside_a_pin_leaves_the_pin_unused(world: World) -> None:
    serial = world.device(profile="ucpe")
    pin = world.instance.pins.create(serial)
    chain = world.idevid(serial, pki=world.stranger)
    decision = world.instance.core.decide(enrolment(VendorCertificate(chain), OneTimePin(pin), claimed=serial))
    refused(decision, RejectReason.UNTRUSTED_CERTIFICATE)
    assert isinstance(world.instance.core.decide(enrolment(OneTimePin(pin), claimed=serial)), Issued)


def test_a_good_certificate_with_a_wrong_password_is_refused(world: World) -> None:
    serial = world.device(profile="ucpe")
    basic = password_for(world, serial)
    wrong = HttpBasic(basic.username, basic.password + "x")
    refused(world.instance.core.decide(enrolment(TlsClientCertificate(world.idevid(serial)), wrong)),
            RejectReason.BAD_CREDENTIAL)
    assert list(world.instance.store.certificates(device_id=serial)) == []


def test_a_good_certificate_and_password_of_the_same_device_enrol(world: World) -> None:
    serial = world.device(profile="ucpe")
    decision = world.instance.core.decide(enrolment(TlsClientCertificate(world.idevid(serial)), password_for(world, serial)))
    assert isinstance(decision, Issued) and decision.device == serial


def test_good_evidence_naming_two_devices_is_refused(world: World) -> None:
    serial, other = world.device(profile="ucpe"), world.device(profile="ucpe")
    decision = world.instance.core.decide(enrolment(TlsClientCertificate(world.idevid(serial)), password_for(world, other)))
    assert "different devices" in refused(decision, RejectReason.NOT_AUTHORIZED).text
    assert list(world.instance.store.certificates(device_id=serial)) == []
    assert list(world.instance.store.certificates(device_id=other)) == []
