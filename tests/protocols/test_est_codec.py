"""EST bodies (RFC 7030 §4, RFC 8951 §3) on bytes alone, with hypothesis fuzzing."""

from __future__ import annotations

import base64
import sys
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.est import codec
from protocols.est.codec import EstCodecError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from esthelpers import make_csr, multipart_parts, new_key

KEY = new_key()
CSR = make_csr(KEY, cn="dev-1", sans=[x509.DNSName("dev-1")], challenge_password=b"c2Vzc2lvbg==")
PEM = x509.load_der_x509_csr(CSR).public_bytes(serialization.Encoding.PEM)


def _cert(cn: str = "ca") -> x509.Certificate:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2025, 1, 1))
        .not_valid_after(datetime(2035, 1, 1))
        .sign(key, hashes.SHA256())
    )


# -- decode_body: what clients send -------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(base64.b64encode(CSR), id="one-line"),
        pytest.param(codec.b64_lines(CSR), id="64-crlf"),
        pytest.param(base64.encodebytes(CSR), id="76-lf"),
        pytest.param(b"  " + b" \n\t ".join(base64.b64encode(CSR)[i : i + 7] for i in range(0, 999, 7)) + b"\r\n", id="odd-whitespace"),
        pytest.param(PEM, id="pem"),
        pytest.param(PEM.replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"), id="pem-new"),
        pytest.param(CSR, id="raw-der"),
        pytest.param(base64.b64encode(CSR).rstrip(b"="), id="no-padding"),
    ],
)
def test_request_bodies_in_every_accepted_form_give_the_der(body: bytes) -> None:
    assert codec.decode_body(body, None) == CSR
    assert codec.decode_body(body, "base64") == CSR


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty"),
        (b" \r\n", "empty"),
        (b"not*base64!", "not base64"),
        (b"-----BEGIN CERTIFICATE-----\n" + base64.b64encode(CSR) + b"\n-----END CERTIFICATE-----\n", "CERTIFICATE REQUEST"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.b64encode(CSR), "BEGIN/END"),
        (b"A" * (codec.MAX_BODY_BYTES + 1), "larger"),
    ],
)
def test_malformed_bodies_are_codec_errors(body: bytes, message: str) -> None:
    with pytest.raises(EstCodecError, match=message):
        codec.decode_body(body, None)


def test_an_unknown_transfer_encoding_is_refused() -> None:
    with pytest.raises(EstCodecError, match="Content-Transfer-Encoding"):
        codec.decode_body(base64.b64encode(CSR), "quoted-printable")


def test_der_with_trailing_bytes_is_not_taken_as_raw_der() -> None:
    with pytest.raises(EstCodecError):
        codec.decode_body(CSR + b"\x00", None)


# -- parse_csr -----------------------------------------------------------------------------


def test_parse_csr_gives_subject_sans_key_signature_and_challenge_password() -> None:
    facts = codec.parse_csr(CSR)
    assert facts.der == CSR
    assert facts.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    assert facts.sans == (x509.DNSName("dev-1"),)
    assert facts.public_key == KEY.public_key()
    assert facts.signature_valid
    assert facts.challenge_password == "c2Vzc2lvbg=="


def test_a_csr_whose_signature_fails_is_parsed_with_signature_valid_false() -> None:
    tampered = bytearray(CSR)
    tampered[-5] ^= 0x01  # inside the signature value
    facts = codec.parse_csr(bytes(tampered))
    assert not facts.signature_valid


def test_a_csr_without_challenge_password_has_none() -> None:
    assert codec.parse_csr(make_csr()).challenge_password is None


def test_garbage_der_is_a_codec_error() -> None:
    with pytest.raises(EstCodecError, match="PKCS#10"):
        codec.parse_csr(b"\x30\x03\x02\x01\x00")


# -- replies ----------------------------------------------------------------------------------


def test_b64_lines_are_64_characters_with_crlf_and_decode_back() -> None:
    encoded = codec.b64_lines(CSR)
    lines = encoded.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) == 64 for line in lines[:-2]) and 0 < len(lines[-2]) <= 64
    assert base64.b64decode(encoded) == CSR
    assert b"\n" not in codec.b64_lines(CSR, None)


def test_certs_only_carries_every_certificate_in_der_set_order() -> None:
    certificates = [_cert(f"c{i}") for i in range(4)]
    loaded = pkcs7.load_der_pkcs7_certificates(codec.certs_only(certificates))
    # certificates is a SET OF: DER sorts it by encoding (X.690 §11.6).
    assert loaded == sorted(certificates, key=lambda c: c.public_bytes(serialization.Encoding.DER))


def test_csrattrs_roundtrips_the_rfc7030_example() -> None:
    # RFC 7030 §4.5.2's example response, as corrected by RFC 8951 §3.3.
    example = base64.b64decode(
        "MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJ"
        "BgcrBgEBAQEWBggqhkjOPQQDAw=="
    )
    items = codec.parse_csrattrs(example)
    assert items[0] == codec.CHALLENGE_PASSWORD
    assert items[1] == codec.CsrAttribute(codec.ID_EC_PUBLIC_KEY, (codec.oid_der("1.3.132.0.34"),))
    assert items[-1] == "1.2.840.10045.4.3.3"
    assert codec.csrattrs(items) == example


def test_empty_csrattrs_is_an_empty_sequence() -> None:
    assert codec.csrattrs([]) == b"\x30\x00"


def test_serverkeygen_multipart_has_the_key_then_the_certificate() -> None:
    key_der = KEY.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    certs = codec.certs_only([_cert()])
    content_type, body = codec.serverkeygen_multipart(key_der, certs)
    assert content_type.startswith("multipart/mixed; boundary=")
    assert body.count(b"Content-Transfer-Encoding: base64\r\n") == 2
    parts = multipart_parts(content_type, body)
    assert parts == [("application/pkcs8", key_der), ("application/pkcs7-mime; smime-type=certs-only", certs)]


# -- fuzzing: only the codec's own error escapes -------------------------------------------------


def _decode_and_parse(body: bytes, encoding: str | None) -> None:
    try:
        codec.parse_csr(codec.decode_body(body, encoding))
    except EstCodecError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.sampled_from([None, "base64", "binary", "gzip"]))
def test_random_bodies_raise_only_codec_errors(body: bytes, encoding: str | None) -> None:
    _decode_and_parse(body, encoding)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = draw(st.sampled_from([CSR, PEM, codec.b64_lines(CSR)]))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut" and data:
            del data[position : position + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[position:]
    return bytes(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_valid_bodies_raise_only_codec_errors(body: bytes) -> None:
    _decode_and_parse(body, None)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_csrattrs_bytes_raise_only_codec_errors(data: bytes) -> None:
    try:
        codec.parse_csrattrs(data)
    except EstCodecError:
        pass
