"""Building OCSP requests that cryptography's OCSPRequestBuilder cannot:
several certIDs, none, duplicate extensions (tests/ca and the HTTP fuzzer)."""

from __future__ import annotations

from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp


def cert_id(cert: x509.Certificate, issuer: x509.Certificate,
            algorithm: hashes.HashAlgorithm = hashes.SHA1()) -> asn1_ocsp.CertId:
    """The CertID openssl would send for cert (RFC 6960 §4.1.1)."""
    der = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build().public_bytes(
        serialization.Encoding.DER)
    return asn1_ocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]["req_cert"].copy()


def with_serial(template: asn1_ocsp.CertId, serial: int) -> asn1_ocsp.CertId:
    """The same issuer hashes, another serial number."""
    return asn1_ocsp.CertId({
        "hash_algorithm": template["hash_algorithm"].copy(),
        "issuer_name_hash": template["issuer_name_hash"].native,
        "issuer_key_hash": template["issuer_key_hash"].native,
        "serial_number": serial,
    })


def nonce_extension(value: bytes) -> asn1_ocsp.TBSRequestExtension:
    return asn1_ocsp.TBSRequestExtension({"extn_id": "nonce", "critical": False, "extn_value": value})


def request_der(cert_ids: list[asn1_ocsp.CertId], nonces: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """OCSPRequest with one Request per certID and a nonce extension per nonce."""
    tbs: dict[str, object] = {"request_list": [{"req_cert": c.copy()} for c in cert_ids]}
    if nonces:
        tbs["request_extensions"] = [nonce_extension(n) for n in nonces]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())
