"""WSGI app assembly: the Flask app over an Instance."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ca.issuer import UnknownAuthority
from ca.protection_identity import due_for_renewal
from ca.ocsp import INTERNAL_ERROR, MALFORMED
from ca import db
from ca.db import NotFound, StoreError
from protocols.cmp import http as cmp_http
from protocols.est import http as est_http
from protocols.cmp.server import CmpServer, RefusalRecord, Route, ServerIdentity
from protocols.pki_http import PkiPublication, make_blueprint
from ra import transactions
from ra.ratelimit import RateLimiter
from vendor_trust.credentials import BadCredential
from ztpki.assembly import Instance
from ztpki.config import CmpSettings
from ztpki.est_wiring import est_server_for

log = logging.getLogger("ztpki.app")

PROTECTION_RECHECK_SECONDS = 3600.0


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
    """The CMP server over this instance's core; signed replies carry the
    CMP protection certificate of the CA the path names."""
    # Per CA: the identity and when the store was last asked about it. Asked
    # again once the certificate is due for renewal, at most every RECHECK.
    identities: dict[str | None, tuple[ServerIdentity, float]] = {}
    lock = threading.Lock()

    def identity(route: Route) -> ServerIdentity:
        with lock:
            cached = identities.get(route.ca)
            if cached is not None:
                found, checked = cached
                fresh = time.monotonic() - checked < PROTECTION_RECHECK_SECONDS
                if fresh or not due_for_renewal(found.certificate, datetime.now(timezone.utc)):
                    return found
            found = cmp_protection_identity(instance, route.ca)
            identities[route.ca] = (found, time.monotonic())
            return found

    def ca_certificates(route: Route) -> tuple[bytes, ...]:
        authority = instance.cas.authority(route.ca)
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in authority.chain)

    def route_of(label: str | None) -> Route | None:
        target = instance.label_target(label)
        return Route(ca=target[0], profile=target[1]) if target is not None else None

    def current_crl(route: Route) -> bytes | None:
        try:
            return instance.revocations.current_crl(instance.cas.authority(route.ca).name).der
        except (UnknownAuthority, NotFound):
            return None

    def mac_secret(reference: str, within_transaction: bool) -> bytes | None:
        # The ir may take the credential's last use; its certConf and
        # pollReq still belong to that transaction.
        try:
            return instance.credentials.mac_secret(reference, allow_used_up=within_transaction).secret
        except BadCredential:
            return None

    return CmpServer(
        decide=lambda request: instance.core.decide(request),
        result_of=lambda request_id: instance.core.result_of(request_id),
        transactions=_LazyTransactions(instance),
        mac_secret=mac_secret,
        identity=identity,
        ca_certificates=ca_certificates,
        route=route_of,
        current_crl=current_crl,
        audit=lambda record: _audit_refusal(instance, record),
        mac_guard=MacFailures(instance.limiter, instance.settings.cmp),
        unit_of_work=lambda: db.unit_of_work(instance.engine),
        policy=instance.cmp_policy,
    )


class MacFailures:
    """CMP MAC failures counted in the store (ra/ratelimit.py), per
    senderKID and per source address, so the limit holds across workers."""

    def __init__(self, limiter: RateLimiter, settings: CmpSettings) -> None:
        self.limiter = limiter
        self.per_kid = settings.mac_failures_per_kid
        self.per_address = settings.mac_failures_per_address
        self.window = settings.mac_failure_window_seconds

    def _keys(self, reference: str | None, peer: str | None) -> list[tuple[str, int, int]]:
        keys = []
        if reference:
            keys.append(("cmp-mac-failures:kid:" + reference, self.per_kid, self.window))
        if peer:
            keys.append(("cmp-mac-failures:addr:" + peer, self.per_address, self.window))
        return keys

    def refused(self, reference: str, peer: str | None) -> int | None:
        return self.limiter.over(self._keys(reference, peer))

    def failed(self, reference: str | None, peer: str | None) -> None:
        # Durable now: the refusal's unit of work commits too, but a
        # failure must count even if something after it rolls back.
        self.limiter.hit(self._keys(reference, peer), commit=True)


# Transaction states the core reached only after authenticating the sender.
_AUTHENTICATED_STATES = frozenset({
    transactions.PENDING, transactions.AWAITING_CONFIRM, transactions.CONFIRMED, transactions.CONFIRM_REJECTED,
    transactions.UNCONFIRMED, transactions.DONE,
})


def _audit_refusal(instance: Instance, record: RefusalRecord) -> None:
    instance.audit_refusal("cmp", record.body_type, record.sender, record.fail_info, {
        "text": record.text, "transaction": record.transaction_id, "peer": record.peer,
    }, authenticated=_sender_authenticated(instance, record))


def _sender_authenticated(instance: Instance, record: RefusalRecord) -> bool:
    """Whether a CMP-level refusal concerns a sender someone authenticated
    (issue 10, 6c: the others are counted, not chained).

    The server sets the sender once the protection verified. A MAC that
    verified proves knowledge of a credential's secret. A signature proves
    only possession of the key of a certificate the message itself carries:
    the core decides whether that certificate is trusted, so the sender is
    authenticated only within a transaction the core already decided for.
    A replayed message (badSenderNonce) proves nothing about who sent it.
    """
    sender = record.sender or ""
    if record.fail_info == "badSenderNonce":
        return False
    if sender.startswith("kid:"):
        return True
    if not sender.startswith("cert:") or not record.transaction_id:
        return False
    try:
        found = instance.cmp_transactions.get(bytes.fromhex(record.transaction_id), sender)
    except ValueError:
        return False
    return found is not None and found.status in _AUTHENTICATED_STATES


def cmp_protection_identity(instance: Instance, ca: str | None) -> ServerIdentity:
    """The CA's CMP protection key and certificate (ca/protection_identity.py),
    its chain for extraCerts (RFC 9483 §3.2)."""
    found = instance.cmp_protection(ca)
    chain = (found.certificate,) + found.chain
    return ServerIdentity(
        instance.token.signer(found.key_label),
        found.certificate,
        tuple(c.public_bytes(serialization.Encoding.DER) for c in chain),
    )


def create_app(instance: Instance, est_transport: est_http.Transport = est_http.no_transport_facts) -> Flask:
    app = Flask("ztpki")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.register_blueprint(make_blueprint(publication_for(instance), MALFORMED))
    app.register_blueprint(cmp_http.make_blueprint(cmp_server_for(instance)))
    # est_transport: whether a request came over TLS, its client chain and
    # tls-unique (protocols/est/http.py). The default says plain HTTP, so EST
    # refuses everything; serve passes ztpki/transport.py's, which reads
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
    """For WSGI servers: ztpki.app:app_for_home('/srv/pki') in a factory call.
    EST believes client-certificate headers from [est] trusted_proxies; the
    TLS client chain itself is read from gunicorn's socket only."""
    from ztpki.transport import make_transport

    instance = Instance.open(Path(home))
    return create_app(instance, est_transport=make_transport(instance.settings.est))


class _LazyTransactions:
    """instance.cmp_transactions, opened on the first CMP request."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    def __getattr__(self, name: str) -> Any:
        return getattr(self.instance.cmp_transactions, name)
