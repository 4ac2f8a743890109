from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings, strategies as st

from ca.csr import BadRequest, load_csr, order_from_csr
from ca.profiles import PolicyViolation, default_profiles

PROFILES = default_profiles()


def _csr(key: object = None, *extensions: x509.ExtensionType, cn: str = "gw1.example.net") -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_a_good_csr_becomes_an_order_with_its_sans() -> None:
    san = x509.SubjectAlternativeName([x509.DNSName("gw1.example.net")])
    order = order_from_csr(load_csr(_csr(None, san)), PROFILES["server"], ca="issuing")
    assert order.sans == (x509.DNSName("gw1.example.net"),)
    assert order.profile == "server"


def test_der_csrs_are_accepted_too() -> None:
    pem = _csr()
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert load_csr(der).subject == load_csr(pem).subject


def test_csr_asking_for_ca_true_is_refused() -> None:
    csr = load_csr(_csr(None, x509.BasicConstraints(ca=True, path_length=None)))
    with pytest.raises(PolicyViolation, match="CA:TRUE"):
        order_from_csr(csr, PROFILES["server"], ca="issuing")


def test_csr_asking_for_key_cert_sign_is_refused() -> None:
    usage = x509.KeyUsage(True, False, False, False, False, True, False, False, False)
    with pytest.raises(PolicyViolation, match="key usage"):
        order_from_csr(load_csr(_csr(None, usage)), PROFILES["server"], ca="issuing")


def test_csr_asking_for_an_eku_outside_the_profile_is_refused() -> None:
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
    with pytest.raises(PolicyViolation, match="extended key usage"):
        order_from_csr(load_csr(_csr(None, eku)), PROFILES["server"], ca="issuing")


def test_rsa_1024_csr_is_refused() -> None:
    csr = load_csr(_csr(rsa.generate_private_key(65537, 1024)))
    with pytest.raises(PolicyViolation, match="rsa-1024"):
        order_from_csr(csr, PROFILES["server"], ca="issuing")


def test_a_csr_with_a_broken_signature_is_refused() -> None:
    der = bytearray(x509.load_pem_x509_csr(_csr()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    with pytest.raises(BadRequest):
        load_csr(bytes(der))


@pytest.mark.parametrize("data", [b"", b"hello", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", b"\x30" * 70000])
def test_garbage_is_a_bad_request(data: bytes) -> None:
    with pytest.raises(BadRequest):
        load_csr(data)


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_random_bytes_never_escape_as_anything_but_bad_request(data: bytes) -> None:
    try:
        load_csr(data)
    except BadRequest:
        pass


FIXED_CSR = x509.load_pem_x509_csr(_csr()).public_bytes(serialization.Encoding.DER)


@settings(max_examples=150)
@given(st.data())
def test_mutated_csrs_are_either_refused_or_still_valid(data: st.DataObject) -> None:
    original = bytearray(FIXED_CSR)
    index = data.draw(st.integers(0, len(original) - 1))
    original[index] = data.draw(st.integers(0, 255))
    try:
        csr = load_csr(bytes(original))
        order_from_csr(csr, PROFILES["server"], ca="issuing")
    except (BadRequest, PolicyViolation):
        pass
