"""protocols/cmp/messages.py: CertReqMessages and p10cr into what the core needs."""

from __future__ import annotations

import ipaddress
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmphelpers import (
    KEY_USAGE_OID_DER,
    SAN_OID_DER,
    LocalSigner,
    cert_req_body,
    cert_request_der,
    expected_body_type,
    extension_der,
    load_vector,
    public_key_der,
    signature_pop,
    vector_id,
    vector_paths,
)
from protocols.cmp import bodies, codec, der, messages
from protocols.cmp.bodies import FailInfo
from protocols.cmp.header import NULL_DN_GENERAL_NAME, PkiHeader, encode_header
from protocols.cmp.messages import Pop

REQUEST_VECTORS = [p for p in vector_paths() if expected_body_type(p) in messages.CERT_REQ_BODIES]
SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eNB-0042"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Op")])


def _message(body_der: bytes) -> codec.PkiMessage:
    header = PkiHeader(2, NULL_DN_GENERAL_NAME, NULL_DN_GENERAL_NAME, transaction_id=os.urandom(16))
    return codec.decode_message(codec.assemble_message(encode_header(header), body_der, None))


@pytest.mark.parametrize("path", REQUEST_VECTORS, ids=vector_id)
def test_vector_request_has_subject_key_and_verified_pop(path: Path) -> None:
    (request,) = messages.cert_requests(codec.decode_message(path.read_bytes()))
    assert request.cert_req_id == 0
    assert request.subject.rfc4514_string() == "CN=Subject"
    assert request.public_key is not None and request.public_key.key_size == 2048  # type: ignore[union-attr]
    assert request.pop is Pop.VERIFIED and request.pop_verified


def test_kur_vector_carries_old_cert_id_control() -> None:
    (request,) = messages.cert_requests(codec.decode_message(load_vector("Kur", "upstream_KEY_UPDATE_REQ")))
    assert [c.info_type for c in request.controls] == ["1.3.6.1.5.5.7.5.1.5"]  # id-regCtrl-oldCertID


def test_pop_fails_when_the_template_changed_after_signing() -> None:
    data = load_vector("CrWithSignatureProtection", "downstream_CERT_REQ")
    (request,) = messages.cert_requests(codec.decode_message(data.replace(b"Subject", b"Subjecx", 1)))
    assert request.pop is Pop.FAILED and not request.pop_verified


@pytest.mark.parametrize("algorithm", ["ecdsa-sha256", "ecdsa-sha384", "rsa-pss-sha256"])
def test_own_ir_with_sans_and_extensions(algorithm: str) -> None:
    signer = LocalSigner(algorithm)
    san = x509.SubjectAlternativeName([x509.DNSName("enb42.example"), x509.IPAddress(ipaddress.ip_address("10.0.0.42"))])
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    request = cert_request_der(
        public_key_der(signer), SUBJECT, (extension_der(san, SAN_OID_DER), extension_der(usage, KEY_USAGE_OID_DER, True)), 7
    )
    message = _message(cert_req_body(0, [request + signature_pop(request, signer)]))
    (fields,) = messages.cert_requests(message)
    assert fields.cert_req_id == 7
    assert fields.subject == SUBJECT
    assert fields.public_key == signer.key.public_key()
    assert fields.sans == tuple(san)
    assert [(e.value, e.critical) for e in fields.extensions] == [(usage, True)]
    assert fields.pop is Pop.VERIFIED


def test_pop_signed_by_another_key_fails() -> None:
    signer, other = LocalSigner("ecdsa-sha256"), LocalSigner("ecdsa-sha256")
    request = cert_request_der(public_key_der(signer), SUBJECT)
    (fields,) = messages.cert_requests(_message(cert_req_body(2, [request + signature_pop(request, other)])))
    assert fields.pop is Pop.FAILED


def test_missing_and_ra_verified_pop_are_reported_not_verified() -> None:
    request = cert_request_der(public_key_der(LocalSigner("ecdsa-sha256")), SUBJECT)
    (missing,) = messages.cert_requests(_message(cert_req_body(0, [request])))
    (ra,) = messages.cert_requests(_message(cert_req_body(0, [request + b"\x80\x00"])))
    assert (missing.pop, ra.pop) == (Pop.MISSING, Pop.RA_VERIFIED)
    assert not missing.pop_verified and not ra.pop_verified


def test_template_without_key_has_no_public_key() -> None:
    (fields,) = messages.cert_requests(_message(cert_req_body(0, [cert_request_der(None, SUBJECT)])))
    assert fields.public_key is None and fields.pop is Pop.MISSING


def test_requested_validity_is_read_from_the_template() -> None:
    validity = der.wrap(0xA0, der.wrap(0x17, b"491231235959Z")) + der.wrap(0xA1, der.wrap(0x18, b"20510101000000Z"))
    request = cert_request_der(public_key_der(LocalSigner("ecdsa-sha256")), SUBJECT, validity=validity)
    (fields,) = messages.cert_requests(_message(cert_req_body(0, [request])))
    assert fields.not_before == datetime(2049, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    assert fields.not_after == datetime(2051, 1, 1, tzinfo=timezone.utc)


def test_validity_with_a_local_time_is_bad_cert_template() -> None:
    validity = der.wrap(0xA1, der.wrap(0x18, b"20510101000000"))
    request = cert_request_der(public_key_der(LocalSigner("ecdsa-sha256")), SUBJECT, validity=validity)
    with pytest.raises(messages.CertRequestError) as caught:
        messages.cert_requests(_message(cert_req_body(0, [request])))
    assert caught.value.fail_info == FailInfo.BAD_CERT_TEMPLATE


def test_duplicate_extension_is_bad_cert_template() -> None:
    san = extension_der(x509.SubjectAlternativeName([x509.DNSName("a.example")]), SAN_OID_DER)
    request = cert_request_der(public_key_der(LocalSigner("ecdsa-sha256")), SUBJECT, (san, san))
    with pytest.raises(messages.CertRequestError) as caught:
        messages.cert_requests(_message(cert_req_body(0, [request])))
    assert caught.value.fail_info == FailInfo.BAD_CERT_TEMPLATE


def test_a_reply_body_is_not_a_request() -> None:
    with pytest.raises(messages.CertRequestError) as caught:
        messages.cert_requests(_message(codec.encode_body("pkiconf", bodies.pkiconf_body())))
    assert caught.value.fail_info == FailInfo.BAD_REQUEST


def _csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(SUBJECT)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("p10.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_p10cr_reads_the_csr_and_checks_its_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr_der = _csr(key).public_bytes(serialization.Encoding.DER)
    fields, csr = messages.p10_request(_message(der.wrap(0xA4, csr_der)))
    assert fields.cert_req_id == -1
    assert fields.subject == SUBJECT and fields.public_key == key.public_key()
    assert fields.sans == (x509.DNSName("p10.example"),)
    assert fields.pop is Pop.VERIFIED


def test_p10cr_with_a_broken_signature_fails_pop() -> None:
    csr_der = bytearray(_csr(ec.generate_private_key(ec.SECP256R1())).public_bytes(serialization.Encoding.DER))
    csr_der[-3] ^= 0x01
    fields, _ = messages.p10_request(_message(der.wrap(0xA4, bytes(csr_der))))
    assert fields.pop is Pop.FAILED


@st.composite
def _mutated_request(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([p.read_bytes() for p in REQUEST_VECTORS])))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_request())
def test_mutated_requests_only_raise_typed_errors(data: bytes) -> None:
    try:
        message = codec.decode_message(data)
    except codec.CmpDecodeError:
        return
    if message.body_type not in messages.CERT_REQ_BODIES:
        return
    try:
        messages.cert_requests(message)
    except messages.CertRequestError:
        pass
