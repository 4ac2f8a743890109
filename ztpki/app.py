"""WSGI app assembly: the Flask app over an Instance."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ca.issuer import UnknownAuthority
from ca.ocsp import INTERNAL_ERROR, MALFORMED
from ca.store import NotFound, StoreError
from protocols.cmp import http as cmp_http
from protocols.cmp.server import CmpServer, Route, ServerIdentity
from protocols.pki_http import PkiPublication, make_blueprint
from vendor_trust.credentials import BadCredential
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


def cmp_server_for(instance: Instance) -> CmpServer:
    """The CMP server over this instance's core. Replies are signed with the
    issuing CA's key for now (RFC 9483 §3.2 allows the CA as protection signer)."""
    identities: dict[str | None, ServerIdentity] = {}
    lock = threading.Lock()

    def identity(route: Route) -> ServerIdentity:
        with lock:
            found = identities.get(route.ca)
            if found is None:
                authority = instance.cas.authority(route.ca)
                signer = instance.token.signer(authority.record.key_label, authority.algorithm)
                chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in authority.chain)
                found = identities[route.ca] = ServerIdentity(signer, authority.certificate, chain)
            return found

    def ca_certificates(route: Route) -> tuple[bytes, ...]:
        authority = instance.cas.authority(route.ca)
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in authority.chain)

    def route_of(label: str | None) -> Route | None:
        if label is None:
            return Route()
        if any(record.name == label for record in instance.store.list_authorities() if record.kind == "issuing"):
            return Route(ca=label)
        if label in instance.cas.profiles:
            return Route(profile=label)
        return None

    def mac_secret(reference: str, within_transaction: bool) -> bytes | None:
        try:
            return instance.credentials.mac_secret(reference).secret
        except BadCredential as exc:
            if within_transaction and exc.reason == "used_up":
                # The ir used the credential's last use; its certConf and
                # pollReq still belong to that transaction.
                return _used_up_secret(instance, reference)
            return None

    return CmpServer(
        decide=lambda request: instance.core.decide(request),
        result_of=lambda request_id: instance.core.result_of(request_id),
        transactions=_LazyTransactions(instance),
        mac_secret=mac_secret,
        identity=identity,
        ca_certificates=ca_certificates,
        route=route_of,
    )


def _used_up_secret(instance: Instance, reference: str) -> bytes | None:
    from sqlalchemy import select

    from vendor_trust.credentials import _aad
    from vendor_trust.schema import credentials

    with instance.engine.connect() as conn:
        row = conn.execute(
            select(credentials.c.sealed_secret, credentials.c.revoked).where(
                credentials.c.reference == reference, credentials.c.kind == "mac"
            )
        ).first()
    if row is None or row.revoked:
        return None
    return instance.secret_sealer.unseal(bytes(row.sealed_secret), _aad(reference))


def create_app(instance: Instance) -> Flask:
    app = Flask("ztpki")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.register_blueprint(make_blueprint(publication_for(instance), MALFORMED))
    app.register_blueprint(cmp_http.make_blueprint(cmp_server_for(instance)))

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


class _LazyTransactions:
    """instance.cmp_transactions, opened on the first CMP request."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    def __getattr__(self, name: str) -> object:
        return getattr(self.instance.cmp_transactions, name)
