"""Reading an OCSPRequest (RFC 6960 §4.1) into plain values.

pyca/cryptography parses a request with one certID in a few µs, and that is
what nearly every client sends (`openssl ocsp -cert X`, browsers, strongSwan),
so it reads those. It refuses any other count (NotImplementedError), which
`openssl ocsp -cert A -cert B` sends; those go to asn1crypto. Both readers
give the same values and refuse the same defects with MalformedRequest:
an empty requestList, more than MAX_CERT_IDS certIDs, a certID hash we do not
compute, a nonce outside 1..32 octets, an extension present twice.
"""

from __future__ import annotations

from typing import NamedTuple

from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import ocsp

# RFC 6960 §4.1.1 lets a request name several certificates and §4.2.1 answers
# each in one signed response. Each certID costs a store lookup and widens the
# response, for a client nobody authenticated: 8 covers a leaf and its chain
# (openssl sends one certID per -cert), anything more is malformedRequest.
MAX_CERT_IDS = 8
# RFC 8954 §2.1: a nonce is 1 to 32 octets.
MAX_NONCE = 32
HASHES = ("sha1", "sha256", "sha384", "sha512")
_NONCE_OID = "1.3.6.1.5.5.7.48.1.2"


class MalformedRequest(ValueError):
    """The bytes are not an OCSPRequest this responder answers (malformedRequest)."""


class CertId(NamedTuple):
    """RFC 6960 §4.1.1 CertID, echoed in the SingleResponse that answers it.
    (NamedTuples: every OCSP request makes these, at half a dataclass's cost.)"""

    hash_name: str  # cryptography's and asn1crypto's name: sha1, sha256, ...
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int


class OcspRequest(NamedTuple):
    cert_ids: tuple[CertId, ...]
    nonce: bytes | None


def parse_request(request_der: bytes) -> OcspRequest:
    """The certIDs and nonce of a DER OCSPRequest (RFC 6960 §4.1.1, RFC 8954)."""
    try:
        request = ocsp.load_der_ocsp_request(request_der)
    except NotImplementedError:
        # cryptography reads exactly one Request; zero or several: asn1crypto.
        return _parse_any_count(request_der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # UnsupportedAlgorithm: a CertID hash cryptography does not know.
        raise MalformedRequest(str(exc)) from exc
    try:
        hash_name = request.hash_algorithm.name
        extensions = request.extensions
        found = extensions.get_extension_for_class(x509.OCSPNonce)
        nonce: bytes | None = bytes(found.value.nonce)
    except x509.ExtensionNotFound:
        nonce = None
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
        raise MalformedRequest(str(exc)) from exc
    if hash_name not in HASHES or (nonce is not None and not 1 <= len(nonce) <= MAX_NONCE):
        raise MalformedRequest(f"certID hash {hash_name} or nonce length not answered")
    cert_id = CertId(hash_name, request.issuer_name_hash, request.issuer_key_hash, request.serial_number)
    return OcspRequest((cert_id,), nonce)


def _parse_any_count(request_der: bytes) -> OcspRequest:
    try:
        tbs = asn1_ocsp.OCSPRequest.load(request_der, strict=True)["tbs_request"]
        requests = tbs["request_list"]
        # Counted before any certID is read: the cap bounds the work too.
        if not 1 <= len(requests) <= MAX_CERT_IDS:
            raise MalformedRequest(f"{len(requests)} certIDs (1 to {MAX_CERT_IDS} answered)")
        cert_ids = tuple(_asn1_cert_id(single["req_cert"]) for single in requests)
        nonce = _asn1_nonce(tbs["request_extensions"])
    except (ValueError, TypeError, KeyError) as exc:
        # asn1crypto reads lazily and reports bad encodings as any of these.
        raise MalformedRequest(str(exc)) from exc
    return _checked(OcspRequest(cert_ids, nonce))


def _asn1_cert_id(cert_id: asn1_ocsp.CertId) -> CertId:
    return CertId(
        hash_name=str(cert_id["hash_algorithm"]["algorithm"].native),
        issuer_name_hash=bytes(cert_id["issuer_name_hash"].native),
        issuer_key_hash=bytes(cert_id["issuer_key_hash"].native),
        serial=int(cert_id["serial_number"].native),
    )


def _asn1_nonce(extensions: asn1_ocsp.TBSRequestExtensions) -> bytes | None:
    seen: set[str] = set()
    nonce = None
    for extension in extensions:
        oid = extension["extn_id"].dotted
        if oid in seen:
            # RFC 5280 §4.2, whose Extensions RFC 6960 §4.4 uses.
            raise MalformedRequest(f"extension {oid} present twice")
        seen.add(oid)
        if oid == _NONCE_OID:
            value = extension["extn_value"].parsed.native
            if not isinstance(value, bytes):
                raise MalformedRequest("nonce is not an OCTET STRING")
            nonce = value
    return nonce


def _checked(request: OcspRequest) -> OcspRequest:
    if request.nonce is not None and not 1 <= len(request.nonce) <= MAX_NONCE:
        raise MalformedRequest("nonce length outside RFC 8954 bounds")
    for cert_id in request.cert_ids:
        if cert_id.hash_name not in HASHES:
            raise MalformedRequest(f"certID hash {cert_id.hash_name} is not answered")
    return request
