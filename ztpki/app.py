"""WSGI app assembly: the Flask app over an Instance."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ca.issuer import UnknownAuthority
from ca.ocsp import INTERNAL_ERROR, MALFORMED
from ca.store import NotFound, StoreError
from protocols.pki_http import PkiPublication, make_blueprint
from ztpki.assembly import Instance

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


def create_app(instance: Instance) -> Flask:
    app = Flask("ztpki")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.register_blueprint(make_blueprint(publication_for(instance), MALFORMED))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return Response(f"{exc.code} {exc.name}\n", status=exc.code or 500, content_type="text/plain; charset=utf-8")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return Response("503 temporarily unable to answer\n", status=503, content_type="text/plain; charset=utf-8")

    return app


def app_for_home(home: str | Path) -> Flask:
    """For WSGI servers: ztpki.app:app_for_home('/srv/pki') in a factory call."""
    return create_app(Instance.open(Path(home)))
