"""WSGI app assembly: the Flask app over an Instance, one blueprint per
protocol (wired in ztpki/http/<protocol>.py) plus CRLs, OCSP and CA certificates."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ca.issuer import UnknownAuthority
from ca.ocsp import INTERNAL_ERROR, MALFORMED
from storage.db import NotFound, StoreError
from protocols.cmp import http as cmp_http
from protocols.est import http as est_http
from protocols.pki_http import PkiPublication, make_blueprint
from ztpki.http.cmp import cmp_server_for
from ztpki.http.est import est_server_for
from ztpki.instance import Instance

log = logging.getLogger("ztpki.app")


def publication_for(instance: Instance) -> PkiPublication:
    def ocsp(request_der: bytes) -> bytes:
        try:
            return instance.ocsp.respond(request_der)
        except StoreError:
            log.exception("OCSP: store unavailable")
            return INTERNAL_ERROR

    def crl(name: str) -> bytes | None:
        try:
            return instance.revocations.current_crl(name).der
        except (UnknownAuthority, NotFound):
            return None

    def ca_certificate(name: str) -> bytes | None:
        try:
            return instance.store.authority(name).certificate
        except NotFound:
            return None

    return PkiPublication(ocsp=ocsp, crl=crl, ca_certificate=ca_certificate)


def create_app(instance: Instance, est_transport: est_http.Transport = est_http.no_transport_facts) -> Flask:
    app = Flask("ztpki")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.register_blueprint(make_blueprint(publication_for(instance), MALFORMED))
    app.register_blueprint(cmp_http.make_blueprint(cmp_server_for(instance)))
    # est_transport: whether a request came over TLS, its client chain and
    # tls-unique (protocols/est/http.py). The default says plain HTTP, so EST
    # refuses everything; serve passes ztpki/http/transport.py's, which reads
    # gunicorn's TLS socket or a trusted proxy's headers.
    app.register_blueprint(est_http.make_blueprint(est_server_for(instance), est_transport))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return Response(f"{exc.code} {exc.name}\n", status=exc.code or 500, content_type="text/plain; charset=utf-8")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return Response("503 temporarily unable to answer\n", status=503, content_type="text/plain; charset=utf-8")

    return app


def app_for_home(home: str | Path) -> Flask:
    """For WSGI servers: ztpki.http.app:app_for_home('/srv/pki') in a factory call.
    EST believes client-certificate headers from [est] trusted_proxies; the
    TLS client chain itself is read from gunicorn's socket only."""
    from ztpki.http.transport import make_transport

    instance = Instance.open(Path(home))
    return create_app(instance, est_transport=make_transport(instance.settings.est))
