from __future__ import annotations

import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, given, settings, strategies as st

from ca.issuer import CertificateAuthorities
from ca.ocsp import OcspResponder
from ca.revocation import Revocations
from cahelpers import client_order


def _request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None,
             algorithm: hashes.HashAlgorithm = hashes.SHA1()) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _check_signed(response: ocsp.OCSPResponse, cas: CertificateAuthorities) -> None:
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    responder = response.certificates[0]
    responder.verify_directly_issued_by(cas.authority("issuing").certificate)
    ekus = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.OCSP_SIGNING in ekus
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    key = responder.public_key()
    from cryptography.hazmat.primitives.asymmetric import ec
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))


@pytest.fixture
def responder(cas: CertificateAuthorities) -> OcspResponder:
    return OcspResponder(cas)


def test_good_then_revoked_at_once(cas: CertificateAuthorities, revocations: Revocations, responder: OcspResponder) -> None:
    issued = cas.issue(client_order()[0])
    issuer = cas.authority("issuing").certificate
    good = ocsp.load_der_ocsp_response(responder.respond(_request(issued.certificate, issuer)))
    _check_signed(good, cas)
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert good.serial_number == issued.serial
    revocations.revoke(issued.serial, "keyCompromise")
    revoked = ocsp.load_der_ocsp_response(responder.respond(_request(issued.certificate, issuer)))
    _check_signed(revoked, cas)
    assert revoked.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise
    assert revoked.revocation_time_utc is not None


def test_nonce_is_echoed_and_sha256_cert_ids_work(cas: CertificateAuthorities, responder: OcspResponder) -> None:
    issued = cas.issue(client_order()[0])
    nonce = os.urandom(16)
    der = _request(issued.certificate, cas.authority("issuing").certificate, nonce, hashes.SHA256())
    response = ocsp.load_der_ocsp_response(responder.respond(der))
    _check_signed(response, cas)
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert isinstance(response.hash_algorithm, hashes.SHA256)


def test_responses_without_nonce_are_cached_until_the_status_changes(cas: CertificateAuthorities, revocations: Revocations, responder: OcspResponder) -> None:
    issued = cas.issue(client_order()[0])
    request = _request(issued.certificate, cas.authority("issuing").certificate)
    first = responder.respond(request)
    assert responder.respond(request) == first
    revocations.revoke(issued.serial, "certificateHold")
    held = ocsp.load_der_ocsp_response(responder.respond(request))
    assert held.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert held.revocation_reason is x509.ReasonFlags.certificate_hold


def test_an_unknown_serial_is_unknown(cas: CertificateAuthorities, responder: OcspResponder) -> None:
    issued = cas.issue(client_order()[0])
    issuer = cas.authority("issuing").certificate
    request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        issuer_name_hash=ocsp.load_der_ocsp_request(_request(issued.certificate, issuer)).issuer_name_hash,
        issuer_key_hash=ocsp.load_der_ocsp_request(_request(issued.certificate, issuer)).issuer_key_hash,
        serial_number=12345,
        algorithm=hashes.SHA1(),
    ).build().public_bytes(serialization.Encoding.DER)
    response = ocsp.load_der_ocsp_response(responder.respond(request))
    assert response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN


def test_a_foreign_issuer_is_unauthorized(cas: CertificateAuthorities, responder: OcspResponder) -> None:
    issued = cas.issue(client_order()[0])
    # Pretend the leaf's issuer is the leaf itself: no CA of ours has that key.
    response = ocsp.load_der_ocsp_response(responder.respond(_request(issued.certificate, issued.certificate)))
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


@pytest.mark.parametrize("body", [b"", b"\x30\x00", b"garbage", b"\x30" + b"\x82\xff\xff"])
def test_malformed_requests_get_malformed_request(responder: OcspResponder, body: bytes) -> None:
    response = ocsp.load_der_ocsp_response(responder.respond(body))
    assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_requests_always_get_a_well_formed_response(cas: CertificateAuthorities, data: st.DataObject) -> None:
    responder = OcspResponder(cas)
    issued_cert = cas.authority("issuing").chain[0]
    base = bytearray(_request(issued_cert, cas.authority("root").certificate))
    if data.draw(st.booleans()):
        body = data.draw(st.binary(max_size=400))
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            base[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.integers(0, 255))
        body = bytes(base)
    answer = ocsp.load_der_ocsp_response(responder.respond(body))
    assert answer.response_status in set(ocsp.OCSPResponseStatus)
