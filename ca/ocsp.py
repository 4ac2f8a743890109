"""OCSP responder (RFC 6960) signed by each CA's delegated responder key.

Every request reads the certificate's status from the store, so a
revocation is visible at once from every worker and node. What is cached
is only the signature work: a response to a request without a nonce is kept
per (certificate, status) and re-signed when older than `refresh`. A request
with a nonce gets a fresh response echoing it (RFC 8954).

A request with several certIDs (up to ca/ocsp_request.MAX_CERT_IDS) gets one
signed response answering each (RFC 6960 §4.2.1); it is built each time, not
cached, so it costs one store lookup per certID and one signature.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from asn1crypto import core as asn1_core, keys, ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ca import der, signing
from ca.issuer import CertificateAuthorities
from ca.revocation import REASONS
from storage.db import now
from ca.ocsp_request import CertId, MalformedRequest, OcspRequest, parse_request
from ca.store import AuthorityRecord
from hsm import HsmError, SignAlgorithm, default_sign_algorithm

# RFC 6960 §4.2.1: id-pkix-ocsp-basic
_BASIC_OID = bytes.fromhex("06092b0601050507300101")
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
_HASH_ALGORITHMS: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512(),
}
# RFC 5280 §4.1.2.2: serials are positive and at most 20 octets. Ours always
# are; any other gets "unknown" without a store lookup, built by asn1crypto
# (cryptography's builder refuses negative serials).
_ISSUABLE = range(1, 2**159)
MAX_REQUEST = 64 * 1024
StatusRow = tuple[str, datetime | None, str | None]


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

    def _responder_for(self, cert_id: CertId) -> _Responder | None:
        key = (cert_id.hash_name, cert_id.issuer_name_hash, cert_id.issuer_key_hash)
        if key not in self._index and time.monotonic() - self._index_loaded_at > 10:
            # A CA added since we last looked (at most one reload per 10 s).
            self._load_index()
        return self._index.get(key)

    # -- answering -------------------------------------------------------------

    def respond(self, request_der: bytes) -> bytes:
        """Answer one DER OCSPRequest (RFC 6960 §4.1) with a DER OCSPResponse:
        one signed response with a SingleResponse per certID (§4.2.1)."""
        if len(request_der) > MAX_REQUEST:
            return MALFORMED
        try:
            request = self._parse(request_der)
        except MalformedRequest:
            return MALFORMED
        try:
            if len(request.cert_ids) == 1 and request.cert_ids[0].serial in _ISSUABLE:
                return self._respond_one(request.cert_ids[0], request.nonce)
            return self._respond_any(request)
        except HsmError:
            return TRY_LATER

    @staticmethod
    def _parse(request_der: bytes) -> OcspRequest:
        return parse_request(request_der)

    def _respond_one(self, cert_id: CertId, nonce: bytes | None) -> bytes:
        """The common request, built by cryptography and cached without a nonce."""
        responder = self._responder_for(cert_id)
        if responder is None:
            # RFC 6960 §2.3: not a CA this responder answers for.
            return UNAUTHORIZED
        row = self.cas.store.status_row(responder.authority.id, cert_id.serial)
        status_key = row if row is None else (row[0], row[1], row[2])
        cache_key = (responder.authority.id, cert_id.serial, cert_id.hash_name, status_key)
        if nonce is None:
            cached = self._cached(cache_key)
            if cached is not None:
                return cached
        response = self._build(responder, cert_id, row, nonce)
        if nonce is None:
            self._remember(cache_key, response)
        return response

    def _respond_any(self, request: OcspRequest) -> bytes:
        """Several certIDs, or a serial we never issue: built with asn1crypto.

        The response is signed by the responder of the first certID naming
        one of our CAs; it speaks only for that CA (RFC 6960 §4.2.2.2), so
        every certID of another issuer, ours or not, is "unknown" (§2.2: "an
        unrecognized issuer that is not served by this responder"). Only when
        no certID names a CA of ours is the whole request unauthorized (§2.3).
        """
        responders = [self._responder_for(cert_id) for cert_id in request.cert_ids]
        signer = next((r for r in responders if r is not None), None)
        if signer is None:
            return UNAUTHORIZED
        rows = [
            self.cas.store.status_row(signer.authority.id, cert_id.serial)
            if responder is not None and responder.authority.id == signer.authority.id
            and cert_id.serial in _ISSUABLE else None
            for cert_id, responder in zip(request.cert_ids, responders)
        ]
        return self._build_any(signer, request, rows)

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
        cert_id: CertId,
        row: StatusRow | None,
        nonce: bytes | None,
    ) -> bytes:
        this_update = now().replace(microsecond=0)
        status, revocation_time, revocation_reason = _status_of(row)
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=cert_id.issuer_name_hash,
                issuer_key_hash=cert_id.issuer_key_hash,
                serial_number=cert_id.serial,
                algorithm=_HASH_ALGORITHMS[cert_id.hash_name],
                cert_status=status,
                this_update=this_update,
                next_update=this_update + self.validity,
                revocation_time=revocation_time,
                revocation_reason=revocation_reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, signing.scratch_certificate())
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        scratch = builder.sign(signing.scratch_key(), hashes.SHA256())
        # ResponseData: version is DEFAULT v1 and omitted, so responderID is first.
        return self._signed(responder, der.replace_element(scratch.tbs_response_bytes, 0, responder.responder_id))

    def _build_any(self, responder: _Responder, request: OcspRequest, rows: list[StatusRow | None]) -> bytes:
        """ResponseData (RFC 6960 §4.2.1) with one SingleResponse per certID, in
        request order; cryptography's builder takes one response only."""
        this_update = now().replace(microsecond=0)
        singles = []
        for cert_id, row in zip(request.cert_ids, rows):
            status, revocation_time, revocation_reason = _status_of(row)
            if status is ocsp.OCSPCertStatus.REVOKED:
                # RFC 5280 §4.1.2.5.2: GeneralizedTime without fractional seconds.
                assert revocation_time is not None
                info: dict[str, object] = {"revocation_time": revocation_time.replace(microsecond=0)}
                if revocation_reason is not None:
                    info["revocation_reason"] = revocation_reason.name
                cert_status: tuple[str, object] = ("revoked", info)
            else:
                cert_status = (status.name.lower(), asn1_core.Null())
            singles.append({
                "cert_id": {
                    "hash_algorithm": {"algorithm": cert_id.hash_name},
                    "issuer_name_hash": cert_id.issuer_name_hash,
                    "issuer_key_hash": cert_id.issuer_key_hash,
                    "serial_number": cert_id.serial,
                },
                "cert_status": cert_status,
                "this_update": this_update,
                "next_update": this_update + self.validity,
            })
        data: dict[str, object] = {
            "responder_id": asn1_ocsp.ResponderId.load(responder.responder_id),
            "produced_at": this_update,
            "responses": singles,
        }
        if request.nonce is not None:
            data["response_extensions"] = [{"extn_id": "nonce", "critical": False, "extn_value": request.nonce}]
        return self._signed(responder, bytes(asn1_ocsp.ResponseData(data).dump()))

    def _signed(self, responder: _Responder, tbs: bytes) -> bytes:
        """OCSPResponse with the BasicOCSPResponse over tbs, signed in the token."""
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


def _status_of(row: StatusRow | None) -> tuple[ocsp.OCSPCertStatus, datetime | None, x509.ReasonFlags | None]:
    """(status, revocation time, reason) for a store row (RFC 6960 §2.2)."""
    if row is None or row[0] in ("signing", "failed"):
        # Never issued (or not yet): RFC 6960 §2.2 "unknown".
        return ocsp.OCSPCertStatus.UNKNOWN, None, None
    if row[0] in ("revoked", "hold"):
        reason = REASONS.get(row[2] or "unspecified")
        return ocsp.OCSPCertStatus.REVOKED, row[1], None if reason is x509.ReasonFlags.unspecified else reason
    return ocsp.OCSPCertStatus.GOOD, None, None
