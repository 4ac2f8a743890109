"""ca/protection_identity.py: the CMP protection key and certificate of a CA
(RFC 9483 §3.2), made on first use, looked up in the store, renewed near expiry."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca import hierarchy
from ca.issuer import CertificateAuthorities
from ca.protection_identity import (
    ID_KP_CMC_RA,
    PROFILE_NAME,
    PROTECTION_PROFILE,
    current_protection_certificate,
    key_label,
    protection_certificates,
    subject_for,
)
from ca.store import Store
from ca.template import IssuanceOrder
from hsm import KeyType, Token
from ztpki.instance import Instance
from ztpki.setup_instance import init_instance


def test_first_use_makes_a_key_and_a_cmcRA_certificate_recorded_in_the_store(
    cas: CertificateAuthorities, store: Store, token: Token
) -> None:
    found = current_protection_certificate(cas, store, token, "issuing")
    assert found.key_label == key_label("issuing") == "cmp-protection-issuing"
    assert found.certificate.public_key() == token.public_key(found.key_label)
    assert found.chain == cas.authority("issuing").chain
    found.certificate.verify_directly_issued_by(found.chain[0])
    usage = found.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment and not usage.key_cert_sign
    eku = found.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ID_KP_CMC_RA]
    record = store.certificate(found.certificate.serial_number, "issuing")
    assert (record.status, record.profile) == ("valid", PROFILE_NAME)


def test_second_call_reuses_the_certificate(cas: CertificateAuthorities, store: Store, token: Token) -> None:
    first = current_protection_certificate(cas, store, token, None)  # the default CA
    again = current_protection_certificate(cas, store, token, "issuing")
    assert again == first
    assert protection_certificates(store, "issuing") == [first.certificate]


def test_certificate_near_expiry_is_renewed_and_the_newest_is_used(
    cas: CertificateAuthorities, store: Store, token: Token
) -> None:
    first = current_protection_certificate(cas, store, token, "issuing")
    # Pretend the renewal window is wider than the certificate's remaining life.
    renewed = current_protection_certificate(cas, store, token, "issuing", renew_before=timedelta(days=400))
    assert renewed.certificate.serial_number != first.certificate.serial_number
    assert renewed.certificate.public_key() == first.certificate.public_key()  # same token key
    assert current_protection_certificate(cas, store, token, "issuing") == renewed
    assert protection_certificates(store, "issuing") == [first.certificate, renewed.certificate]


def test_certificate_ending_with_its_ca_is_kept_inside_the_renewal_window(
    cas: CertificateAuthorities, store: Store, token: Token
) -> None:
    """A renewal cannot outlast the CA, so it must not issue on every call."""
    hierarchy.create_issuing(
        cas, "short", hierarchy.simple_name("Short-lived CA"), KeyType.EC_P256, parent="root", validity_days=20
    )
    first = current_protection_certificate(cas, store, token, "short")
    assert first.certificate.not_valid_after_utc == cas.authority("short").certificate.not_valid_after_utc
    assert current_protection_certificate(cas, store, token, "short") == first
    assert len(protection_certificates(store, "short")) == 1


def test_a_recorded_certificate_for_another_key_is_not_used(
    cas: CertificateAuthorities, store: Store, token: Token
) -> None:
    """Only a certificate for the token key can sign replies (a key re-made in
    the token, or a store shared with another token)."""
    stray = ec.generate_private_key(ec.SECP256R1())
    order = IssuanceOrder(ca="issuing", profile=PROFILE_NAME, subject=subject_for("issuing"), public_key=stray.public_key())
    other = cas.issue(order, profile=PROTECTION_PROFILE).certificate
    found = current_protection_certificate(cas, store, token, "issuing")
    assert found.certificate != other
    assert found.certificate.public_key() == token.public_key("cmp-protection-issuing")
    assert protection_certificates(store, "issuing") == [other, found.certificate]


def test_two_instances_on_one_home_agree_and_the_store_is_the_truth(tmp_path: Path) -> None:
    init_instance(tmp_path / "home").close()
    a = Instance.open(tmp_path / "home")
    b = Instance.open(tmp_path / "home")
    try:
        made = a.cmp_protection()
        pem = tmp_path / "home" / "cmp-protection-issuing.pem"
        assert x509.load_pem_x509_certificate(pem.read_bytes()) == made.certificate
        pem.unlink()  # the copy is for clients; the store holds the certificate
        assert b.cmp_protection() == made
        assert x509.load_pem_x509_certificate(pem.read_bytes()) == made.certificate
        assert protection_certificates(b.store, "issuing") == [made.certificate]
    finally:
        a.close()
        b.close()


def test_two_instances_asking_at_once_make_one_certificate(tmp_path: Path) -> None:
    init_instance(tmp_path / "home").close()
    instances = [Instance.open(tmp_path / "home") for _ in range(2)]
    results: list[x509.Certificate] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(instances))

    def ask(instance: Instance) -> None:
        try:
            start.wait()
            results.append(instance.cmp_protection("issuing").certificate)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(instance,)) for instance in instances]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert len(results) == 2 and results[0] == results[1]
        assert protection_certificates(instances[0].store, "issuing") == [results[0]]
        der = results[0].public_bytes(serialization.Encoding.DER)
        assert instances[1].store.certificate(results[0].serial_number).der == der
    finally:
        for instance in instances:
            instance.close()
