"""OCSP requests beyond the one-certID case (security issue 10, finding 3):
several certIDs get one signed response answering each (RFC 6960 §4.1-4.2);
an empty requestList, a duplicate nonce, too many certIDs get malformedRequest;
a negative serial is answered (unknown), never a crash."""

from __future__ import annotations

import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ca.issuer import CertificateAuthorities
from ca.ocsp import OcspResponder
from ca.ocsp_request import MAX_CERT_IDS

from ca.revocation import Revocations
from cahelpers import client_order
from ocsphelpers import cert_id, request_der, with_serial


@pytest.fixture
def responder(cas: CertificateAuthorities) -> OcspResponder:
    return OcspResponder(cas)


def _signed(answer: bytes, cas: CertificateAuthorities) -> ocsp.OCSPResponse:
    response = ocsp.load_der_ocsp_response(answer)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    signer = response.certificates[0]
    signer.verify_directly_issued_by(cas.authority("issuing").certificate)
    key = signer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
    return response


def _statuses(response: ocsp.OCSPResponse) -> list[tuple[int, ocsp.OCSPCertStatus]]:
    return [(single.serial_number, single.certificate_status) for single in response.responses]


def test_two_cert_ids_get_one_signed_response_with_both_statuses(
        cas: CertificateAuthorities, revocations: Revocations, responder: OcspResponder) -> None:
    issuer = cas.authority("issuing").certificate
    good = cas.issue(client_order("good")[0])
    revoked = cas.issue(client_order("revoked")[0])
    revocations.revoke(revoked.serial, "keyCompromise")
    answer = responder.respond(request_der([cert_id(good.certificate, issuer), cert_id(revoked.certificate, issuer)]))
    response = _signed(answer, cas)
    assert _statuses(response) == [(good.serial, ocsp.OCSPCertStatus.GOOD),
                                    (revoked.serial, ocsp.OCSPCertStatus.REVOKED)]
    singles = list(response.responses)
    assert singles[1].revocation_reason is x509.ReasonFlags.key_compromise
    assert singles[1].revocation_time_utc is not None
    assert all(s.next_update_utc is not None for s in singles)


def test_each_cert_id_is_answered_in_order_with_its_own_hash_and_status(
        cas: CertificateAuthorities, revocations: Revocations, responder: OcspResponder) -> None:
    issuer = cas.authority("issuing").certificate
    good = cas.issue(client_order("good")[0])
    revoked = cas.issue(client_order("held")[0])
    revocations.revoke(revoked.serial, "certificateHold")
    never_issued = with_serial(cert_id(good.certificate, issuer), 0x5EED)
    # The issuing CA's own certificate: issued by the root, which has no
    # responder here, so this responder does not know it (RFC 6960 §2.2).
    foreign = cert_id(cas.authority("issuing").certificate, cas.authority("root").certificate)
    nonce = os.urandom(16)
    ids = [cert_id(good.certificate, issuer, hashes.SHA256()), never_issued, foreign,
           cert_id(revoked.certificate, issuer)]
    response = _signed(responder.respond(request_der(ids, [nonce])), cas)
    assert _statuses(response) == [
        (good.serial, ocsp.OCSPCertStatus.GOOD),
        (0x5EED, ocsp.OCSPCertStatus.UNKNOWN),
        (cas.authority("issuing").certificate.serial_number, ocsp.OCSPCertStatus.UNKNOWN),
        (revoked.serial, ocsp.OCSPCertStatus.REVOKED),
    ]
    singles = list(response.responses)
    assert isinstance(singles[0].hash_algorithm, hashes.SHA256)
    assert isinstance(singles[1].hash_algorithm, hashes.SHA1)
    assert singles[2].issuer_key_hash == foreign["issuer_key_hash"].native
    assert singles[3].revocation_reason is x509.ReasonFlags.certificate_hold
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce


def test_several_cert_ids_none_ours_are_unauthorized(cas: CertificateAuthorities, responder: OcspResponder) -> None:
    leaf = cas.issue(client_order()[0]).certificate
    foreign = cert_id(leaf, leaf)  # no CA of ours has the leaf's key
    answer = ocsp.load_der_ocsp_response(responder.respond(request_der([foreign, with_serial(foreign, 7)])))
    assert answer.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_up_to_the_cap_cert_ids_are_answered_and_one_more_is_malformed(
        cas: CertificateAuthorities, responder: OcspResponder) -> None:
    issued = cas.issue(client_order()[0])
    one = cert_id(issued.certificate, cas.authority("issuing").certificate)
    full = _signed(responder.respond(request_der([one] * MAX_CERT_IDS)), cas)
    assert _statuses(full) == [(issued.serial, ocsp.OCSPCertStatus.GOOD)] * MAX_CERT_IDS
    over = ocsp.load_der_ocsp_response(responder.respond(request_der([one] * (MAX_CERT_IDS + 1))))
    assert over.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_an_empty_request_list_is_malformed(responder: OcspResponder) -> None:
    answer = ocsp.load_der_ocsp_response(responder.respond(request_der([])))
    assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@pytest.mark.parametrize("count", [1, 2])
def test_a_duplicate_nonce_extension_is_malformed(cas: CertificateAuthorities, responder: OcspResponder, count: int) -> None:
    # RFC 5280 §4.2 (whose Extensions RFC 6960 §4.4 uses): one instance per extension.
    issued = cas.issue(client_order()[0])
    one = cert_id(issued.certificate, cas.authority("issuing").certificate)
    answer = ocsp.load_der_ocsp_response(responder.respond(request_der([one] * count, [b"n1", b"n2"])))
    assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@pytest.mark.parametrize("nonce", [b"", b"x" * 33])
def test_a_nonce_outside_rfc_8954_bounds_is_malformed_with_several_cert_ids(
        cas: CertificateAuthorities, responder: OcspResponder, nonce: bytes) -> None:
    issued = cas.issue(client_order()[0])
    one = cert_id(issued.certificate, cas.authority("issuing").certificate)
    answer = ocsp.load_der_ocsp_response(responder.respond(request_der([one, one], [nonce])))
    assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@pytest.mark.parametrize("serial", [-5, -(2**64), 0, 2**160 + 1])
def test_a_serial_we_never_issue_is_unknown(cas: CertificateAuthorities, responder: OcspResponder, serial: int) -> None:
    # RFC 5280 §4.1.2.2: serials are positive and at most 20 octets, and users
    # "SHOULD be prepared to gracefully handle" others: we never issued one.
    issued = cas.issue(client_order()[0])
    template = cert_id(issued.certificate, cas.authority("issuing").certificate)
    for ids in ([with_serial(template, serial)], [template, with_serial(template, serial)]):
        response = _signed(responder.respond(request_der(ids)), cas)
        assert _statuses(response)[-1] == (serial, ocsp.OCSPCertStatus.UNKNOWN)
