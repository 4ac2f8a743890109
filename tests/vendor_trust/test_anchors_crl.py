"""Vendor CRLs: loading, ordering, forgeries, and revocation in validation."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Engine

from trustfixtures import (  # noqa: F401  (fixtures)
    CA_USAGE,
    NOW,
    VendorPki,
    acme,
    acme_trusted,
    crl_der,
    engine,
    issue,
    key,
    make_crl,
    name,
    trust,
    vendor_pki,
)
from vendor_trust.anchors import VendorTrust
from vendor_trust.trust_errors import CertificateExpired, CertificateRevoked, CrlRefused, UnknownVendor


def test_an_intermediate_revoked_by_the_root_crl_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    chain = acme_trusted.chain(acme_trusted.device())
    info = trust.load_crl("acme", crl_der(make_crl(acme_trusted.root, [acme_trusted.intermediate.certificate.serial_number])))
    assert info.verified and info.revoked == 1
    with pytest.raises(CertificateRevoked, match="Device CA.*keyCompromise"):
        trust.validate(chain)


def test_a_revoked_device_certificate_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    device = acme_trusted.device()
    other = acme_trusted.device("SN0002")
    info = trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, [device.certificate.serial_number])))
    assert not info.verified  # the issuer is not an anchor: checked at validation
    with pytest.raises(CertificateRevoked):
        trust.validate(acme_trusted.chain(device))
    assert trust.validate(acme_trusted.chain(other)).serial == "SN0002"


def test_revoked_wins_over_expired(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    device = acme_trusted.device(not_before=NOW - timedelta(days=9), not_after=NOW - timedelta(days=1))
    trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, [device.certificate.serial_number])))
    with pytest.raises(CertificateRevoked):
        trust.validate(acme_trusted.chain(device))


def test_a_crl_given_with_its_issuer_is_verified_at_load(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    crl = make_crl(acme_trusted.intermediate)
    assert trust.load_crl("acme", crl_der(crl), issuer=acme_trusted.intermediate.certificate).verified
    forged = make_crl(acme_trusted.intermediate, number=2, signer=key("ec", 99))
    with pytest.raises(CrlRefused, match="not signed by"):
        trust.load_crl("acme", crl_der(forged), issuer=acme_trusted.intermediate.certificate)


def test_a_forged_crl_naming_an_anchor_is_refused_at_load(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    forged = make_crl(acme_trusted.root, [acme_trusted.intermediate.certificate.serial_number], signer=key("ec", 99))
    with pytest.raises(CrlRefused, match="does not verify"):
        trust.load_crl("acme", crl_der(forged))
    assert trust.list_vendors()[0].crls == 0


def test_a_forged_intermediate_crl_is_ignored_with_a_warning(
    trust: VendorTrust, acme_trusted: VendorPki, caplog: pytest.LogCaptureFixture
) -> None:
    device = acme_trusted.device()
    # Right issuer name and AKI, wrong key: it cannot be checked until a path uses it.
    forged = make_crl(acme_trusted.intermediate, [device.certificate.serial_number], signer=key("ec", 99))
    trust.load_crl("acme", crl_der(forged))
    with caplog.at_level(logging.WARNING, logger="vendor_trust.trust_crls"):
        assert trust.validate(acme_trusted.chain(device)).serial == "SN0001"
    assert "does not verify" in caplog.text


def test_a_forged_stored_crl_does_not_block_the_genuine_one_given_with_its_issuer(
    trust: VendorTrust, acme_trusted: VendorPki
) -> None:
    device = acme_trusted.device()
    trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, number=1000, signer=key("ec", 99))))
    genuine = crl_der(make_crl(acme_trusted.intermediate, [device.certificate.serial_number], number=3))
    with pytest.raises(CrlRefused, match="older"):
        trust.load_crl("acme", genuine)
    assert trust.load_crl("acme", genuine, issuer=acme_trusted.intermediate.certificate).verified
    with pytest.raises(CertificateRevoked):
        trust.validate(acme_trusted.chain(device))


def test_a_crl_past_its_next_update_still_revokes_and_is_logged(
    trust: VendorTrust, acme_trusted: VendorPki, caplog: pytest.LogCaptureFixture
) -> None:
    device = acme_trusted.device()
    stale = make_crl(acme_trusted.intermediate, [device.certificate.serial_number],
                     this_update=NOW - timedelta(days=30), next_update=NOW - timedelta(days=23))
    trust.load_crl("acme", crl_der(stale))
    with caplog.at_level(logging.WARNING, logger="vendor_trust.trust_crls"):
        with pytest.raises(CertificateRevoked):
            trust.validate(acme_trusted.chain(device))
    assert "past its nextUpdate" in caplog.text


def test_an_older_crl_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, number=5)))
    with pytest.raises(CrlRefused, match="older"):
        trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, number=4)))
    with pytest.raises(CrlRefused, match="same crlNumber"):
        trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, [1234], number=5)))
    trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, number=6)))
    assert trust.list_vendors()[0].crls == 1


def test_without_crl_numbers_this_update_decides(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    newer = make_crl(acme_trusted.intermediate, number=None, aki=False, this_update=NOW - timedelta(hours=1))
    older = make_crl(acme_trusted.intermediate, number=None, aki=False, this_update=NOW - timedelta(hours=5))
    trust.load_crl("acme", crl_der(newer))
    trust.load_crl("acme", crl_der(newer))  # the same CRL again is harmless
    with pytest.raises(CrlRefused, match="thisUpdate"):
        trust.load_crl("acme", crl_der(older))


def test_a_crl_without_aki_is_found_by_issuer_name(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    device = acme_trusted.device()
    info = trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, [device.certificate.serial_number], aki=False)))
    assert len(info.issuer_key_id) == 64
    with pytest.raises(CertificateRevoked):
        trust.validate(acme_trusted.chain(device))


def test_a_newer_crl_replaces_the_stored_one_at_once_on_every_worker(
    engine: Engine, trust: VendorTrust, acme_trusted: VendorPki
) -> None:
    device = acme_trusted.device()
    worker = VendorTrust(engine)  # default anchor cache; CRLs are read fresh
    trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, number=1)))
    assert worker.validate(acme_trusted.chain(device))
    trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, [device.certificate.serial_number], number=2)))
    with pytest.raises(CertificateRevoked):
        worker.validate(acme_trusted.chain(device))


def test_pem_crls_load_and_garbage_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    pem = make_crl(acme_trusted.intermediate).public_bytes(Encoding.PEM)
    assert trust.load_crl("acme", pem).crl_number == 1
    with pytest.raises(CrlRefused, match="not a usable CRL"):
        trust.load_crl("acme", b"\x30\x03\x02\x01\x00")
    with pytest.raises(CrlRefused):
        trust.load_crl("acme", b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")


def test_delta_crls_and_unknown_critical_extensions_are_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    issuer = acme_trusted.intermediate

    def crl_with(extension: x509.ExtensionType, critical: bool) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.certificate.subject)
            .last_update(NOW)
            .next_update(NOW + timedelta(days=1))
            .add_extension(extension, critical=critical)
        )
        return crl_der(builder.sign(issuer.key, hashes.SHA256()))

    with pytest.raises(CrlRefused, match="delta"):
        trust.load_crl("acme", crl_with(x509.DeltaCRLIndicator(3), True))
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.7"), b"\x05\x00")
    with pytest.raises(CrlRefused, match="unsupported critical extension"):
        trust.load_crl("acme", crl_with(odd, True))
    assert trust.load_crl("acme", crl_with(odd, False))


def test_crls_of_an_unknown_vendor_are_refused(trust: VendorTrust, acme: VendorPki) -> None:
    with pytest.raises(UnknownVendor):
        trust.load_crl("nobody", crl_der(make_crl(acme.intermediate)))


def test_an_expired_intermediate_is_refused_as_expired(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    old_ca = issue(name("Old CA"), key("ec", 95), acme_trusted.root, ca=True, key_usage=CA_USAGE,
                   not_before=NOW - timedelta(days=900), not_after=NOW - timedelta(days=2))
    device = acme_trusted.device(issuer=old_ca)
    with pytest.raises(CertificateExpired, match="Old CA"):
        trust.validate([device.certificate, old_ca.certificate])


def test_the_whole_flow_on_postgresql(postgres_db_url: str, tmp_path: Path) -> None:
    from storage.db import make_engine
    from vendor_trust.db import migrate

    engine = make_engine(postgres_db_url)
    try:
        migrate(engine)
        pki = vendor_pki("PG Vendor", key_offset=100)
        trust = VendorTrust(engine)
        trust.add_vendor("pg")
        trust.add_anchor("pg", pki.root.certificate)
        device = pki.device("PG-1")
        assert trust.validate(pki.chain(device)).vendor == "pg"
        assert trust.load_crl("pg", crl_der(make_crl(pki.root, [], number=2**70))).crl_number == 2**70
        trust.load_crl("pg", crl_der(make_crl(pki.intermediate, [device.certificate.serial_number])))
        with pytest.raises(CertificateRevoked):
            trust.validate(pki.chain(device))
        assert [(v.name, v.anchors, v.crls) for v in trust.list_vendors()] == [("pg", 1, 2)]
        trust.remove_vendor("pg")
        assert trust.list_vendors() == []
    finally:
        engine.dispose()
