from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.issuer import CertificateAuthorities, IssuanceError, UnknownAuthority, UnknownProfile
from ca.lint import LintError
from ca.profiles import PolicyViolation
from ca.store import Store
from cahelpers import client_order
from cahelpers import build_hierarchy
from hsm import KeyType, Token


def _verify_chain(cas: CertificateAuthorities, leaf: x509.Certificate, server_name: str | None = None) -> None:
    root = cas.authority("root").certificate
    issuing = cas.authority("issuing").certificate
    builder = verification.PolicyBuilder().store(verification.Store([root]))
    if server_name:
        builder.build_server_verifier(x509.DNSName(server_name)).verify(leaf, [issuing])
    else:
        builder.build_client_verifier().verify(leaf, [issuing])


def test_issued_client_certificate_chains_to_the_root_and_is_stored(cas: CertificateAuthorities) -> None:
    order, _ = client_order("device-1", sans=(x509.DNSName("device-1.example.net"),))
    issued = cas.issue(order)
    _verify_chain(cas, issued.certificate)
    record = cas.store.certificate(issued.serial, "issuing")
    assert record.status == "valid"
    assert record.der == issued.der
    assert record.sans == ("dns:device-1.example.net",)
    assert issued.chain[0] == cas.authority("issuing").certificate
    assert issued.chain[-1] == cas.authority("root").certificate


def test_server_certificate_gets_its_cn_as_dns_san_and_validates_for_that_name(cas: CertificateAuthorities) -> None:
    order, _ = client_order("gw1.example.net", profile="server")
    issued = cas.issue(order)
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw1.example.net"]
    _verify_chain(cas, issued.certificate, "gw1.example.net")


def test_profile_decides_extensions(cas: CertificateAuthorities) -> None:
    order, _ = client_order("enb-0001", profile="enb")
    cert = cas.issue(order).certificate
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.BasicConstraints).critical
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    ekus = list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in ekus and ExtendedKeyUsageOID.SERVER_AUTH in ekus
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_location.value for d in aia] == ["http://127.0.0.1:8080/ocsp", "http://127.0.0.1:8080/ca/issuing.cer"]
    crldp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert crldp[0].full_name[0].value == "http://127.0.0.1:8080/crl/issuing.crl"
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == cas.authority("issuing").ski.digest


def test_serials_are_random_positive_and_large(cas: CertificateAuthorities) -> None:
    serials = {cas.issue(client_order(f"d{i}")[0]).serial for i in range(20)}
    assert len(serials) == 20
    assert all(0 < s < 2**159 for s in serials)
    # 159 random bits: 20 draws all below 2**100 would be a broken generator.
    assert max(serials).bit_length() > 100


def test_subject_attributes_outside_the_profile_are_dropped(cas: CertificateAuthorities) -> None:
    order, _ = client_order("device-2")
    order = type(order)(**{**order.__dict__, "subject": x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "device-2"),
        x509.NameAttribute(NameOID.PSEUDONYM, "sneaky"),
    ])})
    cert = cas.issue(order).certificate
    assert cert.subject.get_attributes_for_oid(NameOID.PSEUDONYM) == []


def test_a_san_type_outside_the_profile_is_refused_and_nothing_is_stored(cas: CertificateAuthorities) -> None:
    order, _ = client_order("gw2.example.net", profile="server", sans=(x509.RFC822Name("a@example.net"),))
    before = cas.store.count_certificates()
    with pytest.raises(PolicyViolation, match="SAN"):
        cas.issue(order)
    assert cas.store.count_certificates() == before


@pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")
def test_lint_refuses_an_overlong_common_name_before_signing(cas: CertificateAuthorities) -> None:
    order, _ = client_order("x")
    # What a parsed CSR can carry; cryptography only refuses it when building names.
    long_cn = x509.NameAttribute(NameOID.COMMON_NAME, "x" * 70, _validate=False)
    order = type(order)(**{**order.__dict__, "subject": x509.Name([long_cn])})
    before = cas.store.count_certificates()
    with pytest.raises(LintError):
        cas.issue(order)
    assert cas.store.count_certificates() == before


def test_unknown_profile_and_ca_are_clear_errors(cas: CertificateAuthorities) -> None:
    with pytest.raises(UnknownProfile, match="nope"):
        cas.issue(client_order(profile="nope")[0])
    order, _ = client_order()
    with pytest.raises(UnknownAuthority, match="missing"):
        cas.issue(type(order)(**{**order.__dict__, "ca": "missing"}))


def test_the_root_does_not_issue_end_entity_certificates(cas: CertificateAuthorities) -> None:
    order, _ = client_order()
    with pytest.raises(IssuanceError, match="root"):
        cas.issue(type(order)(**{**order.__dict__, "ca": "root"}))


def test_a_signature_by_the_wrong_key_is_caught_and_the_serial_marked_failed(cas: CertificateAuthorities) -> None:
    authority = cas.authority("issuing")
    # Point the CA at another key in the token (its OCSP responder's): the
    # token signs, and the check with the CA public key must refuse it.
    wrong = type(authority)(
        record=type(authority.record)(**{**authority.record.__dict__, "key_label": authority.record.ocsp_key_label}),
        certificate=authority.certificate,
        chain=authority.chain,
    )
    cas._loaded["issuing"] = wrong
    with pytest.raises(IssuanceError, match="signing failed"):
        cas.issue(client_order()[0])
    failed = list(cas.store.certificates(status="failed"))
    assert len(failed) == 1 and failed[0].der is None
    assert list(cas.store.certificates(status="signing")) == []


@pytest.mark.parametrize("key_type", [KeyType.EC_P384, KeyType.RSA_2048])
def test_other_ca_key_types_issue_verifiable_certificates(store: Store, token: Token, key_type: KeyType) -> None:
    cas = build_hierarchy(store, token, key_type)
    issued = cas.issue(client_order("device-9", sans=(x509.DNSName("device-9.example.net"),))[0])
    _verify_chain(cas, issued.certificate)
