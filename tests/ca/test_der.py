from __future__ import annotations

import pytest
from asn1crypto import algos as a1algos
from asn1crypto import x509 as a1x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from datetime import datetime, timedelta, timezone
from hypothesis import given, settings, strategies as st

from ca import der
from hsm import SignAlgorithm


def _certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "der test")])
    now = datetime.now(timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(12345).not_valid_before(now).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize("length", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**24])
def test_encode_length_matches_asn1crypto(length: int) -> None:
    encoded = a1x509.OctetString(b"\x00" * length).dump()
    assert der.tlv(0x04, b"\x00" * length) == encoded


def test_split_sequence_of_a_certificate_gives_tbs_algorithm_and_signature() -> None:
    cert = _certificate()
    parts = der.split_sequence(cert.public_bytes(serialization.Encoding.DER))
    assert len(parts) == 3
    assert parts[0] == cert.tbs_certificate_bytes


@pytest.mark.parametrize("algorithm", list(SignAlgorithm))
def test_tbs_algorithm_replacement_changes_only_the_signature_field(algorithm: SignAlgorithm) -> None:
    cert = _certificate()
    patched = der.tbs_certificate_with_algorithm(cert.tbs_certificate_bytes, algorithm)
    before = a1x509.TbsCertificate.load(cert.tbs_certificate_bytes)
    after = a1x509.TbsCertificate.load(patched)
    assert after["signature"].dump() == der.signature_algorithm_der(algorithm)
    for field in ("serial_number", "issuer", "validity", "subject", "subject_public_key_info", "extensions"):
        assert after[field].dump() == before[field].dump()
    expected = {
        SignAlgorithm.ECDSA_SHA256: "sha256_ecdsa",
        SignAlgorithm.ECDSA_SHA384: "sha384_ecdsa",
        SignAlgorithm.RSA_PKCS1_SHA256: "sha256_rsa",
        SignAlgorithm.RSA_PKCS1_SHA384: "sha384_rsa",
        SignAlgorithm.RSA_PSS_SHA256: "rsassa_pss",
        SignAlgorithm.RSA_PSS_SHA384: "rsassa_pss",
    }[algorithm]
    assert after["signature"]["algorithm"].native == expected


def test_ecdsa_algorithm_identifier_has_no_parameters_and_rsa_has_null() -> None:
    # RFC 5758 §3.2 and RFC 4055 §5
    assert der.signature_algorithm_der(SignAlgorithm.ECDSA_SHA256) == bytes.fromhex("300a06082a8648ce3d040302")
    assert der.signature_algorithm_der(SignAlgorithm.RSA_PKCS1_SHA256) == bytes.fromhex("300d06092a864886f70d01010b0500")
    pss = a1algos.SignedDigestAlgorithm.load(der.signature_algorithm_der(SignAlgorithm.RSA_PSS_SHA384))
    assert pss["parameters"]["salt_length"].native == 48


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_split_sequence_on_random_bytes_raises_only_der_error(data: bytes) -> None:
    try:
        der.split_sequence(data)
    except der.DerError:
        pass
