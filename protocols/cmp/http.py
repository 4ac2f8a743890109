"""CMP over HTTP (RFC 6712 §3; RFC 9483 §6.1): a thin Flask binding.

POST application/pkixcmp at /.well-known/cmp and /.well-known/cmp/p/<name>.
CMP-level answers, refusals included, are CMP messages in a 200 reply; a
request that is not CMP at all gets a 4xx with a short text body. The state
machine is protocols/cmp/server.py; this module only moves bytes.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, request

from protocols.cmp.codec import MAX_MESSAGE_SIZE
from protocols.cmp.server import CONTENT_TYPE, CmpServer

log = logging.getLogger("ztpki.cmp.http")


def _text(status: int, message: str) -> Response:
    return Response(message + "\n", status=status, content_type="text/plain; charset=utf-8")


def make_blueprint(server: CmpServer) -> Blueprint:
    """The /.well-known/cmp endpoints (RFC 6712 §3.3, RFC 9483 §6.1)."""
    bp = Blueprint("cmp", __name__)

    def answer(label: str | None) -> Response:
        content_type = (request.mimetype or "").lower()
        if content_type != CONTENT_TYPE:
            # RFC 6712 §3.4: the only media type CMP over HTTP uses.
            log.info("CMP: content type %r from %s refused", request.content_type, request.remote_addr)
            return _text(415, f"CMP requests are {CONTENT_TYPE}")
        if request.content_length is not None and request.content_length > MAX_MESSAGE_SIZE:
            return _text(413, "CMP message too large")
        body = request.get_data(cache=False)
        status, reply, reply_type = server.handle(body, path_label=label, peer=request.remote_addr)
        response = Response(reply, status=status, content_type=reply_type)
        # RFC 6712 §3.6: CMP replies must not be cached.
        response.headers["Cache-Control"] = "no-cache"
        return response

    @bp.post("/.well-known/cmp")
    def cmp_default() -> Response:
        return answer(None)

    @bp.post("/.well-known/cmp/p/<name>")
    def cmp_labelled(name: str) -> Response:
        return answer(name)

    @bp.route("/.well-known/cmp/<path:rest>", methods=["GET", "POST"])
    def cmp_wrong_path(rest: str) -> Response:
        log.warning("CMP: no endpoint at /.well-known/cmp/%s (%s)", rest, request.remote_addr)
        return _text(404, "CMP endpoints are /.well-known/cmp and /.well-known/cmp/p/<name>")

    return bp
