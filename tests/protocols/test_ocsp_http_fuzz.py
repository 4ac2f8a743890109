"""Fuzzing OCSP request bodies through the HTTP layer (security issue 10).

Requests are generated from what clients and attackers send: 0 to
MAX_CERT_IDS + 2 certIDs drawn from a good, a revoked, a never-issued and a
foreign certificate, random hashes and serials (negative, zero, past 20
octets), certID hashes we do not answer, 0 to 2 nonces of any length, other
extensions; sometimes mutated byte-wise afterwards. Each goes through the real
Flask app of a real instance (SoftHSM2, SQLite) as a POST body or as the
base64 path of a GET (RFC 6960 Appendix A.1).

Properties: always HTTP 200 application/ocsp-response holding an
OCSPResponse, never a 5xx; a successful one is signed by the responder
certificate the issuing CA issued. For an unmutated request the outcome is
exactly the one RFC 6960 asks for: malformedRequest for an empty list, more
than MAX_CERT_IDS certIDs, a duplicate extension, a nonce outside 1..32 octets
(RFC 8954) or a hash we do not answer; unauthorized when no certID names our
CA; otherwise one SingleResponse per certID, in order, with its status, and the
nonce echoed.
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ca.ocsp_request import MAX_CERT_IDS
from ztpki.http.app import create_app
from ztpki.instance import Instance
from ztpki.setup_instance import init_instance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ca"))
from cahelpers import client_order  # noqa: E402
from ocsphelpers import cert_id, with_serial  # noqa: E402

GOOD, REVOKED, UNKNOWN = ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED, ocsp.OCSPCertStatus.UNKNOWN


@dataclass(frozen=True)
class Known:
    instance: Instance
    client: FlaskClient
    issuing: x509.Certificate
    # (certID, the status expected, whether it names our issuing CA)
    pool: tuple[tuple[asn1_ocsp.CertId, ocsp.OCSPCertStatus, bool], ...]


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Known:
    instance = init_instance(tmp_path_factory.mktemp("ocsp-http"))
    issuing = instance.cas.authority("issuing").certificate
    root = instance.cas.authority("issuing").chain[-1]
    good = instance.cas.issue(client_order("good")[0])
    revoked = instance.cas.issue(client_order("revoked")[0])
    instance.revocations.revoke(revoked.serial, "keyCompromise")
    good_id = cert_id(good.certificate, issuing)
    pool = (
        (good_id, GOOD, True),
        (cert_id(good.certificate, issuing, hashes.SHA256()), GOOD, True),
        (cert_id(revoked.certificate, issuing), REVOKED, True),
        (with_serial(good_id, good.serial + 10**6), UNKNOWN, True),
        (with_serial(good_id, -good.serial), UNKNOWN, True),
        (cert_id(issuing, root), UNKNOWN, False),  # the root has no responder here
        (cert_id(good.certificate, good.certificate), UNKNOWN, False),
    )
    return Known(instance, create_app(instance).test_client(), issuing, pool)


def _random_cert_id(draw: st.DrawFn) -> asn1_ocsp.CertId:
    algorithm = draw(st.sampled_from(["sha1", "sha256", "md5", "1.2.3.4"]))
    return asn1_ocsp.CertId({
        "hash_algorithm": {"algorithm": algorithm},
        "issuer_name_hash": draw(st.binary(max_size=40)),
        "issuer_key_hash": draw(st.binary(max_size=40)),
        "serial_number": draw(st.integers(-(2**200), 2**200)),
    })


@st.composite
def requests(draw: st.DrawFn, pool_size: int) -> tuple[list[tuple[asn1_ocsp.CertId, int | None]], list[object]]:
    """certIDs (each with its pool index, None for a random one) and extensions."""
    ids: list[tuple[asn1_ocsp.CertId, int | None]] = []
    for _ in range(draw(st.integers(0, MAX_CERT_IDS + 2))):
        if draw(st.integers(0, 3)) == 0:
            ids.append((_random_cert_id(draw), None))
        else:
            index = draw(st.integers(0, pool_size - 1))
            ids.append((asn1_ocsp.CertId(), index))
    extensions: list[object] = []
    for _ in range(draw(st.integers(0, 2))):
        extensions.append(("nonce", draw(st.binary(max_size=40))))
    if draw(st.booleans()):
        extensions.append(("1.3.6.1.5.5.7.48.1.4", ["1.3.6.1.5.5.7.48.1.1"]))  # acceptable responses, ignored
    return ids, draw(st.permutations(extensions))


def _der(known: Known, ids: list[tuple[asn1_ocsp.CertId, int | None]], extensions: list[object]) -> bytes:
    request_list = [{"req_cert": (c if i is None else known.pool[i][0]).copy()} for c, i in ids]
    tbs: dict[str, object] = {"request_list": request_list}
    if extensions:
        tbs["request_extensions"] = [
            {"extn_id": oid, "critical": False, "extn_value": value}
            for oid, value in extensions  # type: ignore[misc]
        ]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())


def _expected(known: Known, ids: list[tuple[asn1_ocsp.CertId, int | None]], extensions: list[object]) -> object:
    nonces = [value for oid, value in extensions if oid == "nonce"]  # type: ignore[misc]
    hashes_ok = all(i is not None or c["hash_algorithm"]["algorithm"].native in ("sha1", "sha256") for c, i in ids)
    if not 1 <= len(ids) <= MAX_CERT_IDS or len(nonces) > 1 or not hashes_ok \
            or (nonces and not 1 <= len(nonces[0]) <= 32):
        return ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    if not any(i is not None and known.pool[i][2] for _, i in ids):
        return ocsp.OCSPResponseStatus.UNAUTHORIZED
    return [UNKNOWN if i is None else known.pool[i][1] for _, i in ids]


def _slash_safe(encoded: str) -> bool:
    """WSGI hands Flask the path with %2F decoded, and werkzeug redirects (308)
    /ocsp//x to /ocsp/x. Base64 starting with "/" is a first byte 0xFC-0xFF,
    never an OCSPRequest (0x30, "M"): such junk goes by POST instead."""
    return not encoded.startswith("/")


def _ask(known: Known, body: bytes, use_get: bool) -> ocsp.OCSPResponse:
    # An empty GET path names no request (404): not OCSP.
    if use_get and body and _slash_safe(base64.b64encode(body).decode()):
        reply = known.client.get("/ocsp/" + quote(base64.b64encode(body).decode(), safe=""))
    else:
        reply = known.client.post("/ocsp", data=body, content_type="application/ocsp-request")
    assert reply.status_code == 200, reply.get_data()
    assert reply.content_type == "application/ocsp-response"
    response = ocsp.load_der_ocsp_response(reply.get_data())
    if response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
        signer = response.certificates[0]
        signer.verify_directly_issued_by(known.issuing)
        key = signer.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
    return response


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), use_get=st.booleans())
@example(data=None, use_get=False)  # type: ignore[arg-type]
def test_generated_ocsp_requests_get_the_rfc_6960_answer_over_http(known: Known, data: st.DataObject | None, use_get: bool) -> None:
    if data is None:  # two certIDs, as `openssl ocsp -cert A -cert B` sends
        ids, extensions = [(asn1_ocsp.CertId(), 0), (asn1_ocsp.CertId(), 2)], [("nonce", b"n" * 16)]
    else:
        ids, extensions = data.draw(requests(len(known.pool)))
    response = _ask(known, _der(known, ids, extensions), use_get)
    expected = _expected(known, ids, extensions)
    if isinstance(expected, ocsp.OCSPResponseStatus):
        assert response.response_status is expected
        return
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert [single.certificate_status for single in response.responses] == expected
    nonces = [value for oid, value in extensions if oid == "nonce"]  # type: ignore[misc]
    if nonces:
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonces[0]
    else:
        assert len(response.extensions) == 0


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), use_get=st.booleans())
def test_mutated_ocsp_requests_never_get_a_5xx(known: Known, data: st.DataObject, use_get: bool) -> None:
    ids, extensions = data.draw(requests(len(known.pool)))
    body = bytearray(_der(known, ids, extensions))
    for _ in range(data.draw(st.integers(1, 6))):
        action = data.draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        position = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if action == "set" and body:
            body[position] = data.draw(st.integers(0, 255))
        elif action == "insert":
            body[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and body:
            del body[position]
        elif action == "truncate":
            del body[position:]
    response = _ask(known, bytes(body), use_get)
    assert response.response_status in set(ocsp.OCSPResponseStatus)

