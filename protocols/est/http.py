"""EST over HTTP (RFC 7030 §3.2): a thin Flask binding.

/.well-known/est/<operation> and /.well-known/est/<label>/<operation>. The
state machine is protocols/est/server.py; this module only moves bytes and
asks the composition root's `transport` for the transport facts, so it
knows nothing of TLS:

    transport(request) -> TransportFacts(over_tls, client_chain, tls_unique, certificate_error)

over_tls: the request reached ztpki over TLS, its own or a trusted
TLS-terminating proxy's (RFC 7030 §3.3: EST is served over HTTPS only).
client_chain: the TLS client certificate first, then the intermediates it
sent, already verified as the TLS handshake's (or a trusted proxy's) peer
certificate; None when there is none. tls_unique: RFC 5929 tls-unique of
the session, or None (TLS 1.3, a terminating proxy). certificate_error: the
client presented a certificate that could not be read (then client_chain
is None). The transport must not raise for anything a client sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from flask import Blueprint, Request, Response, request

from protocols.est.codec import MAX_BODY_BYTES
from protocols.est.server import ENROLMENT_OPERATIONS, EstRequest, EstServer

log = logging.getLogger("ztpki.est.http")


@dataclass(frozen=True)
class TransportFacts:
    """What whoever terminated TLS knows about one request (module docstring)."""

    over_tls: bool = False
    client_chain: tuple[x509.Certificate, ...] | None = None
    tls_unique: bytes | None = None
    certificate_error: str | None = None


Transport = Callable[[Request], TransportFacts]


def no_transport_facts(_: Request) -> TransportFacts:
    """Plain HTTP from nobody in particular: EST refuses it."""
    return TransportFacts()


def make_blueprint(server: EstServer, transport: Transport = no_transport_facts) -> Blueprint:
    """The /.well-known/est endpoints (RFC 7030 §3.2.2)."""
    bp = Blueprint("est", __name__)

    def answer(label: str | None, operation: str) -> Response:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            log.info("EST %s: %d-byte body from %s refused", operation, request.content_length, request.remote_addr)
            return Response("the body is too large\n", status=413, content_type="text/plain; charset=utf-8")
        body = request.get_data(cache=False) if request.method == "POST" else b""
        facts = transport(request)
        reply = server.handle(EstRequest(
            operation=operation,
            label=label,
            method=request.method,
            body=body,
            content_type=request.headers.get("Content-Type"),
            content_transfer_encoding=request.headers.get("Content-Transfer-Encoding"),
            authorization=request.headers.get("Authorization"),
            client_chain=facts.client_chain,
            tls_unique=facts.tls_unique,
            over_tls=facts.over_tls,
            certificate_error=facts.certificate_error,
            peer=request.remote_addr,
            user_agent=request.headers.get("User-Agent"),
        ))
        response = Response(reply.body, status=reply.status, headers=reply.headers)
        if operation in ENROLMENT_OPERATIONS:
            # Replies carry a fresh certificate (and for serverkeygen a private key).
            response.headers["Cache-Control"] = "no-store"
        return response

    @bp.route("/.well-known/est/<operation>", methods=["GET", "POST"])
    def est_default(operation: str) -> Response:
        return answer(None, operation)

    @bp.route("/.well-known/est/<label>/<operation>", methods=["GET", "POST"])
    def est_labelled(label: str, operation: str) -> Response:
        return answer(label, operation)

    @bp.route("/.well-known/est/<path:rest>", methods=["GET", "POST"])
    def est_wrong_path(rest: str) -> Response:
        log.warning("EST: no endpoint at /.well-known/est/%s (%s)", rest[:80], request.remote_addr)
        return Response(
            "EST endpoints are /.well-known/est/<operation> and /.well-known/est/<label>/<operation>\n",
            status=404, content_type="text/plain; charset=utf-8",
        )

    return bp
