"""HTTP publication of CA certificates, CRLs (RFC 5280 §4.2.1.13, RFC 2585) and
OCSP (RFC 6960 Appendix A). A thin Flask layer: the answers come from callables
the composition root hands in, so nothing here knows the CA.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote

from flask import Blueprint, Response, request

log = logging.getLogger("ztpki.http")

MAX_OCSP_REQUEST = 64 * 1024


@dataclass(frozen=True)
class PkiPublication:
    ocsp: Callable[[bytes], bytes]
    crl: Callable[[str], bytes | None]  # DER, or None for an unknown CA
    ca_certificate: Callable[[str], bytes | None]


def _text(status: int, message: str) -> Response:
    return Response(message + "\n", status=status, content_type="text/plain; charset=utf-8")


def _ocsp_reply(answer: bytes) -> Response:
    return Response(answer, status=200, content_type="application/ocsp-response")


def make_blueprint(publication: PkiPublication, malformed_ocsp: bytes) -> Blueprint:
    bp = Blueprint("pki", __name__)

    @bp.get("/health")
    def health() -> Response:
        return _text(200, "ok")

    @bp.post("/ocsp")
    @bp.post("/ocsp/")
    def ocsp_post() -> Response:
        # RFC 6960 A.1.1 names application/ocsp-request; some clients send
        # none, and the body is checked as DER anyway.
        if request.content_length is not None and request.content_length > MAX_OCSP_REQUEST:
            return _ocsp_reply(malformed_ocsp)
        body = request.get_data(cache=False)
        if len(body) > MAX_OCSP_REQUEST:
            return _ocsp_reply(malformed_ocsp)
        return _ocsp_reply(publication.ocsp(body))

    @bp.get("/ocsp/<path:encoded>")
    def ocsp_get(encoded: str) -> Response:
        # RFC 6960 A.1: GET {url}/{url-encoding of base-64 encoding of the DER OCSPRequest}
        try:
            der = base64.b64decode(unquote(encoded), validate=True)
        except (binascii.Error, ValueError):
            return _ocsp_reply(malformed_ocsp)
        response = _ocsp_reply(publication.ocsp(der))
        response.headers["Cache-Control"] = "max-age=60, public, no-transform, must-revalidate"
        return response

    @bp.get("/crl/<name>.crl")
    def crl(name: str) -> Response:
        der = publication.crl(name)
        if der is None:
            return _text(404, f"no CRL for CA {name!r}")
        return Response(der, status=200, content_type="application/pkix-crl")

    @bp.get("/ca/<name>.cer")
    def ca_certificate(name: str) -> Response:
        der = publication.ca_certificate(name)
        if der is None:
            return _text(404, f"no CA {name!r}")
        return Response(der, status=200, content_type="application/pkix-cert")

    return bp
