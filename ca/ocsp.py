"""OCSP responder (RFC 6960) signed by each CA's delegated responder key.

Every request reads the certificate's status from the store, so a
revocation is visible at once from every worker and node. What is cached
is only the signature work: a response to a request without a nonce is kept
per (certificate, status) and re-signed when older than `refresh`. A request
with a nonce gets a fresh response echoing it (RFC 8954).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta

from asn1crypto import keys
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ca import der, signing
from ca.issuer import CertificateAuthorities
from ca.revocation import REASONS
from ca.db import now
from ca.store import AuthorityRecord
from hsm import HsmError, SignAlgorithm, default_sign_algorithm

# RFC 6960 §4.2.1: id-pkix-ocsp-basic
_BASIC_OID = bytes.fromhex("06092b0601050507300101")
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
# RFC 8954 §2.1: a nonce is 1 to 32 octets.
MAX_NONCE = 32
MAX_REQUEST = 64 * 1024


@dataclass(frozen=True)
class _Responder:
    authority: AuthorityRecord
    certificate: x509.Certificate
    certificate_der: bytes
    algorithm: SignAlgorithm
    responder_id: bytes  # ResponderID byKey [2] (RFC 6960 §4.2.1)


def _key_hash_input(certificate: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING value (RFC 6960 §4.1.1 issuerKeyHash)."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return bytes(keys.PublicKeyInfo.load(spki)["public_key"].contents[1:])


def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


MALFORMED = unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
UNAUTHORIZED = unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
INTERNAL_ERROR = unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
TRY_LATER = unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)


class OcspResponder:
    def __init__(
        self,
        cas: CertificateAuthorities,
        *,
        validity: timedelta = timedelta(hours=1),
        refresh: timedelta = timedelta(minutes=5),
        cache_size: int = 20_000,
    ) -> None:
        self.cas = cas
        self.validity = validity
        self.refresh_seconds = refresh.total_seconds()
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[object, ...], tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self._index: dict[tuple[str, bytes, bytes], _Responder | None] = {}
        self._index_loaded_at = float("-inf")

    # -- issuer lookup ---------------------------------------------------------

    def _load_index(self) -> None:
        index: dict[tuple[str, bytes, bytes], _Responder | None] = {}
        for record in self.cas.store.list_authorities():
            certificate = x509.load_der_x509_certificate(record.certificate)
            responder = None
            if record.ocsp_key_label and record.ocsp_certificate:
                info = self.cas.token.key_info(record.ocsp_key_label)
                responder = _Responder(
                    authority=record,
                    certificate=x509.load_der_x509_certificate(record.ocsp_certificate),
                    certificate_der=record.ocsp_certificate,
                    algorithm=default_sign_algorithm(info.key_type),
                    responder_id=der.tlv(0xA2, der.tlv(0x04, hashlib.sha1(
                        _key_hash_input(x509.load_der_x509_certificate(record.ocsp_certificate))
                    ).digest())),
                )
            name = certificate.subject.public_bytes()
            key = _key_hash_input(certificate)
            for hash_name, function in _HASHES.items():
                index[(hash_name, function(name).digest(), function(key).digest())] = responder
        self._index = index
        self._index_loaded_at = time.monotonic()

    def _responder_for(self, request: ocsp.OCSPRequest) -> _Responder | None:
        key = (request.hash_algorithm.name, request.issuer_name_hash, request.issuer_key_hash)
        if key not in self._index and time.monotonic() - self._index_loaded_at > 10:
            # A CA added since we last looked (at most one reload per 10 s).
            self._load_index()
        return self._index.get(key)

    # -- answering -------------------------------------------------------------

    def respond(self, request_der: bytes) -> bytes:
        """Answer one DER OCSPRequest (RFC 6960 §4.1) with a DER OCSPResponse."""
        if len(request_der) > MAX_REQUEST:
            return MALFORMED
        try:
            request = ocsp.load_der_ocsp_request(request_der)
            hash_name = request.hash_algorithm.name
            nonce = self._nonce(request)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # UnsupportedAlgorithm: a CertID hash cryptography does not know.
            return MALFORMED
        if hash_name not in _HASHES:
            return MALFORMED
        try:
            responder = self._responder_for(request)
            if responder is None:
                # RFC 6960 §2.3: not a CA this responder answers for.
                return UNAUTHORIZED
            row = self.cas.store.status_row(responder.authority.id, request.serial_number)
            status_key = row if row is None else (row[0], row[1], row[2])
            cache_key = (responder.authority.id, request.serial_number, hash_name, status_key)
            if nonce is None:
                cached = self._cached(cache_key)
                if cached is not None:
                    return cached
            response = self._build(responder, request, row, nonce)
        except HsmError:
            return TRY_LATER
        if nonce is None:
            self._remember(cache_key, response)
        return response

    @staticmethod
    def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
        try:
            extension = request.extensions.get_extension_for_class(x509.OCSPNonce)
        except x509.ExtensionNotFound:
            return None
        value = extension.value.nonce
        if not 1 <= len(value) <= MAX_NONCE:
            raise ValueError("nonce length outside RFC 8954 bounds")
        return bytes(value)

    def _cached(self, key: tuple[object, ...]) -> bytes | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > self.refresh_seconds:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return entry[1]

    def _remember(self, key: tuple[object, ...], response: bytes) -> None:
        with self._lock:
            self._cache[key] = (time.monotonic(), response)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _build(
        self,
        responder: _Responder,
        request: ocsp.OCSPRequest,
        row: tuple[str, object, str | None] | None,
        nonce: bytes | None,
    ) -> bytes:
        this_update = now().replace(microsecond=0)
        revocation_time = None
        revocation_reason = None
        if row is None or row[0] in ("signing", "failed"):
            # Never issued (or not yet): RFC 6960 §2.2 "unknown".
            status = ocsp.OCSPCertStatus.UNKNOWN
        elif row[0] in ("revoked", "hold"):
            status = ocsp.OCSPCertStatus.REVOKED
            revocation_time = row[1]
            revocation_reason = REASONS.get(row[2] or "unspecified")
            if revocation_reason is x509.ReasonFlags.unspecified:
                revocation_reason = None
        else:
            status = ocsp.OCSPCertStatus.GOOD
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=request.issuer_name_hash,
                issuer_key_hash=request.issuer_key_hash,
                serial_number=request.serial_number,
                algorithm=request.hash_algorithm,
                cert_status=status,
                this_update=this_update,
                next_update=this_update + self.validity,
                revocation_time=revocation_time,  # type: ignore[arg-type]
                revocation_reason=revocation_reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, signing.scratch_certificate())
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        scratch = builder.sign(signing.scratch_key(), hashes.SHA256())
        # ResponseData: version is DEFAULT v1 and omitted, so responderID is first.
        tbs = der.replace_element(scratch.tbs_response_bytes, 0, responder.responder_id)
        signer = self.cas.token.signer(responder.authority.ocsp_key_label or "", responder.algorithm)
        basic = der.sequence(
            tbs,
            der.signature_algorithm_der(responder.algorithm),
            der.bit_string(signer.sign(tbs)),
            der.tlv(0xA0, der.sequence(responder.certificate_der)),
        )
        return der.sequence(
            b"\x0a\x01\x00",  # responseStatus successful
            der.tlv(0xA0, der.sequence(_BASIC_OID, der.tlv(0x04, basic))),
        )
