from __future__ import annotations

import pytest
from cryptography import x509

from ca.issuer import CertificateAuthorities
from ca.revocation import RevocationError, Revocations
from cahelpers import client_order


def _crl(revocations: Revocations) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(revocations.current_crl("issuing").der)


def test_revoked_serial_is_on_the_new_crl_with_its_reason(cas: CertificateAuthorities, revocations: Revocations) -> None:
    issued = cas.issue(client_order()[0])
    before = revocations.publish_crl("issuing")
    record = revocations.revoke(issued.serial, "keyCompromise")
    assert record.status == "revoked" and record.revocation_reason == "keyCompromise"
    crl = _crl(revocations)
    assert crl.is_signature_valid(cas.authority("issuing").certificate.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(issued.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > before.crl_number
    assert crl.next_update_utc is not None and crl.next_update_utc > crl.last_update_utc


def test_unspecified_reason_is_omitted_from_the_entry(cas: CertificateAuthorities, revocations: Revocations) -> None:
    issued = cas.issue(client_order()[0])
    revocations.revoke(issued.serial, "unspecified")
    entry = _crl(revocations).get_revoked_certificate_by_serial_number(issued.serial)
    assert entry is not None and len(entry.extensions) == 0


def test_hold_can_be_released_or_made_permanent(cas: CertificateAuthorities, revocations: Revocations) -> None:
    first = cas.issue(client_order("a")[0])
    second = cas.issue(client_order("b")[0])
    revocations.revoke(first.serial, "certificate-hold")
    revocations.revoke(second.serial, "certificateHold")
    assert _crl(revocations).get_revoked_certificate_by_serial_number(first.serial) is not None
    assert revocations.revoke(first.serial, "removeFromCRL").status == "valid"
    assert revocations.revoke(second.serial, "keyCompromise").status == "revoked"
    crl = _crl(revocations)
    assert crl.get_revoked_certificate_by_serial_number(first.serial) is None
    assert crl.get_revoked_certificate_by_serial_number(second.serial) is not None


def test_revoking_twice_an_unknown_serial_or_with_a_bad_reason_is_refused(cas: CertificateAuthorities, revocations: Revocations) -> None:
    issued = cas.issue(client_order()[0])
    revocations.revoke(issued.serial, "superseded")
    with pytest.raises(RevocationError, match="revoked"):
        revocations.revoke(issued.serial, "keyCompromise")
    with pytest.raises(RevocationError, match="no certificate"):
        revocations.revoke(0xDEADBEEF, "keyCompromise")
    with pytest.raises(RevocationError, match="unknown revocation reason"):
        revocations.revoke(issued.serial, "because")
    with pytest.raises(RevocationError, match="not on hold"):
        revocations.revoke(cas.issue(client_order()[0]).serial, "removeFromCRL")


def test_crl_numbers_increase_and_the_root_publishes_its_own(cas: CertificateAuthorities, revocations: Revocations) -> None:
    numbers = [revocations.publish_crl("issuing").crl_number for _ in range(3)]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3
    root_crl = x509.load_der_x509_crl(revocations.current_crl("root").der)
    assert root_crl.is_signature_valid(cas.authority("root").certificate.public_key())


def test_current_crl_is_reused_while_fresh(cas: CertificateAuthorities, revocations: Revocations) -> None:
    first = revocations.current_crl("issuing")
    assert revocations.current_crl("issuing").crl_number == first.crl_number
