"""The EST server: an EstRequest (bytes plus transport facts) in, an EstReply out.

RFC 7030 §3–§4, clarified by RFC 8951. Sans-I/O: whoever terminated TLS
hands in the verified client chain and tls-unique as plain values. Nothing
here decides policy: enrolment requests become an EnrolmentRequest for the
enrolment core, and its Decision becomes the HTTP answer. What only the
protocol can check is checked here: the CSR's self-signature (handed to the
core as pop_verified), tls-unique channel binding (§3.5), the re-enrolment
rules of §4.2.2 (same subject and SANs as the TLS client certificate, which
must be a clientAuth certificate), and well-formed HTTP Basic credentials.

Idempotency: the transaction id is a hash of the operation, the CSR and
the authenticated identity, so a client resending the same request (a
retry, or polling after a 202, RFC 7030 §4.2.3) gets the core's first
answer again and never a second certificate.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocols.est import codec
from protocols.est.checks import (
    REALM,
    EstRefusal,
    ServerKey,
    basic_credentials,
    check_channel_binding,
    check_reenrolment,
    fingerprint,
    transaction_id,
)
from protocols.est.codec import CERTS_ONLY, CSRATTRS, EstCodecError
from ra.requests import (
    CurrentCertificate,
    Decision,
    EnrolmentRequest,
    Evidence,
    HttpBasic,
    Issued,
    Operation,
    Pending,
    Rejected,
    RejectReason,
    TlsClientCertificate,
)
from ra.requests import Protocol as RequestProtocol

log = logging.getLogger("ztpki.est")

TEXT = "text/plain; charset=utf-8"
SYSTEM_RETRY_AFTER = 30
MAX_TEXT = 200

# RFC 7030 §3.2.2: the operation path segments and their methods.
METHODS = {
    "cacerts": "GET",
    "csrattrs": "GET",
    "simpleenroll": "POST",
    "simplereenroll": "POST",
    "serverkeygen": "POST",
}
ENROLMENT_OPERATIONS = ("simpleenroll", "simplereenroll", "serverkeygen")

# The core's RejectReason → HTTP status (RFC 7030 §4.2.3: 4xx/5xx with a
# text/plain reason). The one place EST maps the core's refusals.
STATUS_OF_REASON = {
    RejectReason.BAD_REQUEST: 400,
    RejectReason.BAD_POP: 400,
    RejectReason.POLICY_VIOLATION: 400,
    RejectReason.TRANSACTION_IN_USE: 400,
    RejectReason.BAD_CREDENTIAL: 401,
    RejectReason.NOT_AUTHORIZED: 403,
    RejectReason.UNKNOWN_DEVICE: 403,
    RejectReason.DEVICE_BLOCKED: 403,
    RejectReason.UNTRUSTED_CERTIFICATE: 403,
    RejectReason.CERTIFICATE_REVOKED: 403,
    RejectReason.CERTIFICATE_EXPIRED: 403,
    RejectReason.REQUEST_REJECTED: 403,
    RejectReason.SYSTEM_UNAVAILABLE: 503,
}


@dataclass(frozen=True)
class Route:
    """What an EST path label selects (RFC 7030 §3.2.2): an issuing CA or a
    profile, and how replies are line-broken for the clients behind it."""

    ca: str | None = None
    profile: str | None = None
    line_length: int | None = codec.LINE_LENGTH  # None: no line breaks (strongSwan)


@dataclass(frozen=True)
class EstRequest:
    """One EST HTTP request as values. over_tls: it came over TLS, ztpki's
    own or a trusted proxy's (RFC 7030 §3.3; anything else is refused).
    client_chain: the TLS client certificate first, as verified by whatever
    terminated TLS (None: no client certificate); certificate_error: the
    client presented a certificate that could not be read; tls_unique: RFC
    5929 tls-unique of that session (None under TLS 1.3 or behind a proxy)."""

    operation: str
    label: str | None = None
    method: str = "GET"
    body: bytes = b""
    content_type: str | None = None
    content_transfer_encoding: str | None = None
    authorization: str | None = field(default=None, repr=False)
    client_chain: tuple[x509.Certificate, ...] | None = None
    tls_unique: bytes | None = None
    over_tls: bool = False
    certificate_error: str | None = None
    peer: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class EstReply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class RefusalRecord:
    """A refusal decided here, before or outside the core (which audits its own)."""

    operation: str
    status: int
    reason: str
    text: str
    label: str | None
    peer: str | None
    identity: str | None  # "tls:<fingerprint>" / "basic:<username>", when known


def _p256(route: Route) -> ServerKey:
    return ec.generate_private_key(ec.SECP256R1())


class EstServer:
    """RFC 7030 server over the enrolment core, sans-I/O."""

    def __init__(
        self,
        *,
        decide: Callable[[EnrolmentRequest], Decision],
        ca_certificates: Callable[[Route], tuple[x509.Certificate, ...]],
        route: Callable[[str | None], Route | None] = lambda label: Route() if label is None else None,
        csr_attributes: Callable[[Route], bytes | None] = lambda route: None,
        audit: Callable[[RefusalRecord], None] | None = None,
        server_key: Callable[[Route], ServerKey] = _p256,
        poll_interval: int = 30,
        unit_of_work: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """ca_certificates(route): the issuing CA up to the root (§4.1.3).
        csr_attributes(route): DER CsrAttrs, or None when the route has none
        (§4.5.2). server_key(route): a fresh key for serverkeygen (§4.4)."""
        self.decide = decide
        self.ca_certificates = ca_certificates
        self.route = route
        self.csr_attributes = csr_attributes
        self.audit = audit
        self.server_key = server_key
        self.poll_interval = poll_interval
        self.unit_of_work = unit_of_work

    # -- the entry point ------------------------------------------------------------

    def handle(self, request: EstRequest) -> EstReply:
        """Answer one EST request (RFC 7030 §4); never raises."""
        identity: list[str] = []
        try:
            return self._dispatch(request, identity)
        except EstRefusal as refusal:
            log.info("EST %s (%s) from %s refused: %s", request.operation[:40], request.label, request.peer, refusal.text)
            self._record(request, refusal.status, refusal.reason, refusal.text, identity)
            return _text(refusal.status, refusal.text, refusal.headers)
        except Exception:
            # A bug or a store that went away: the client may retry, and the
            # trace stays in the log, never in the reply.
            log.exception("EST %s from %s: unexpected failure", request.operation[:40], request.peer)
            self._record(request, 503, "system_failure", "unexpected failure", identity)
            return _text(503, "temporarily unable to answer", {"Retry-After": str(SYSTEM_RETRY_AFTER)})

    def _record(self, request: EstRequest, status: int, reason: str, text: str, identity: list[str]) -> None:
        if self.audit is None:
            return
        try:
            self.audit(RefusalRecord(
                operation=request.operation[:40], status=status, reason=reason, text=text,
                label=request.label[:64] if request.label else None, peer=request.peer,
                identity=identity[0] if identity else None,
            ))
        except Exception:
            # The refusal still goes out; the missing record is in the log.
            log.exception("EST: could not audit a refusal")

    def _dispatch(self, request: EstRequest, identity: list[str]) -> EstReply:
        method = METHODS.get(request.operation)
        if method is None:
            raise EstRefusal(404, "unknown_operation", f"no EST operation {request.operation[:40]!r}")
        if not request.over_tls:
            # RFC 7030 §3.3: EST runs over TLS. Not even cacerts on the plain
            # port (an attacker on the path could swap the CA certificates, and
            # Basic passwords would cross in clear); 403 rather than 404 so a
            # misconfigured client learns why. A trusted proxy's TLS counts.
            raise EstRefusal(403, "tls_required", "EST is served over HTTPS only (RFC 7030 §3.3)")
        route = self.route(request.label)
        if route is None:
            raise EstRefusal(404, "unknown_label", f"no EST label {(request.label or '')[:64]!r}")
        if not request.user_agent:
            # strongSwan 5.9.8's `pki --est` sends no User-Agent and cannot
            # decode base64 with line breaks (it decodes the body in one
            # piece); curl, libest and browsers send one, and libest wants
            # 64-character lines (RFC 7030 §4, ../shared/STANDARDS.md).
            route = replace(route, line_length=None)
        # HEAD is GET without the body (RFC 9110 §9.3.2); Flask routes it here.
        asked = "GET" if request.method.upper() == "HEAD" else request.method.upper()
        if asked != method:
            raise EstRefusal(405, "wrong_method", f"{request.operation} takes {method}", {"Allow": method})
        if request.operation == "cacerts":
            return self._cacerts(route)
        if request.operation == "csrattrs":
            return self._csrattrs(route)
        return self._enrol(request, route, identity)

    # -- distribution (RFC 7030 §4.1, §4.5) -------------------------------------------

    def _cacerts(self, route: Route) -> EstReply:
        """§4.1.3: the issuing CA chain up to the root, certs-only, base64."""
        certificates = self.ca_certificates(route)
        body = codec.b64_lines(codec.certs_only(certificates), route.line_length)
        return EstReply(200, {"Content-Type": CERTS_ONLY, "Content-Transfer-Encoding": "base64"}, body)

    def _csrattrs(self, route: Route) -> EstReply:
        """§4.5.2: the profile's CsrAttrs, or 204 when it asks for nothing."""
        attributes = self.csr_attributes(route)
        if attributes is None:
            return EstReply(204, {}, b"")
        body = codec.b64_lines(attributes, route.line_length)
        return EstReply(200, {"Content-Type": CSRATTRS, "Content-Transfer-Encoding": "base64"}, body)

    # -- enrolment (RFC 7030 §4.2, §4.4) --------------------------------------------------

    def _enrol(self, request: EstRequest, route: Route, identity: list[str]) -> EstReply:
        # The Content-Type (application/pkcs10) is not checked: curl scripts
        # send form types, and the body is parsed strictly whatever it says.
        if len(request.body) > codec.MAX_BODY_BYTES:
            raise EstRefusal(413, "too_large", f"the body is larger than {codec.MAX_BODY_BYTES} bytes")
        if request.certificate_error is not None:
            # A certificate the client presented failed: refused, never
            # replaced by a Basic password (STYLE.md, issue 10 finding 7).
            raise EstRefusal(403, "untrusted_certificate",
                             f"the TLS client certificate cannot be used: {request.certificate_error}")
        basic = basic_credentials(request.authorization)
        chain = tuple(request.client_chain) if request.client_chain else None
        if chain is not None:
            identity.append("tls:" + fingerprint(chain[0]))
        if basic is not None:
            identity.append("basic:" + basic.username[:128])
        # HTTP authentication first (RFC 7030 §3.2.3): a client without
        # credentials learns it needs them before its body is looked at.
        renewal = request.operation == "simplereenroll"
        evidence = self._evidence(chain, basic, renewal)
        try:
            facts = codec.parse_csr(codec.decode_body(request.body, request.content_transfer_encoding))
        except EstCodecError as exc:
            raise EstRefusal(400, "bad_request", str(exc)) from None
        check_channel_binding(facts, request.tls_unique)
        if renewal:
            assert chain is not None
            check_reenrolment(facts, chain[0])
        public_key = facts.public_key
        server_key: ServerKey | None = None
        if request.operation == "serverkeygen":
            # §4.4.1: the CSR's key is ignored, its signature still proves the
            # client made it; the certificate is for a key made here.
            server_key = self.server_key(route)
            public_key = server_key.public_key()
        enrolment = EnrolmentRequest(
            protocol=RequestProtocol.EST,
            operation=Operation.RENEWAL if renewal else Operation.INITIAL,
            public_key=public_key,
            pop_verified=facts.signature_valid,
            subject=facts.subject,
            sans=facts.sans,
            extensions=facts.extensions,
            evidence=evidence,
            ca=route.ca,
            profile=route.profile,
            transaction_id=transaction_id(request.operation, facts, chain, basic, server_key),
            server_generated_key=server_key is not None,
            peer=request.peer,
        )
        with self.unit_of_work():
            decision = self.decide(enrolment)
        return self._answer(decision, route, server_key)

    def _evidence(
        self, chain: tuple[x509.Certificate, ...] | None, basic: HttpBasic | None, renewal: bool
    ) -> tuple[Evidence, ...]:
        if renewal:
            # §4.2.2: re-enrolment is authenticated by the certificate being
            # renewed, presented as the TLS client certificate; Basic cannot
            # stand in for it.
            if chain is None:
                raise EstRefusal(403, "not_authorized", "simplereenroll needs the current certificate as TLS client certificate")
            # Basic sent beside it is checked too: every presented piece of
            # evidence must hold (issue 10 finding 7).
            return (CurrentCertificate(chain[0], chain[1:]),) + ((basic,) if basic is not None else ())
        evidence: list[Evidence] = []
        if chain is not None:
            evidence.append(TlsClientCertificate(chain))
        if basic is not None:
            evidence.append(basic)
        if not evidence:
            # §3.2.3: ask for HTTP Basic when TLS brought no client certificate.
            raise EstRefusal(401, "no_credentials", "authentication required", {"WWW-Authenticate": REALM})
        return tuple(evidence)

    def _answer(self, decision: Decision, route: Route, server_key: ServerKey | None) -> EstReply:
        if isinstance(decision, Issued):
            certs = codec.certs_only([decision.certificate])
            if server_key is not None:
                return _serverkeygen_reply(server_key, certs, route)
            body = codec.b64_lines(certs, route.line_length)
            return EstReply(200, {"Content-Type": CERTS_ONLY, "Content-Transfer-Encoding": "base64"}, body)
        if isinstance(decision, Pending):
            if server_key is not None:
                # The key is never kept, so a later resend could not get it:
                # refuse rather than promise a certificate nobody can use.
                raise EstRefusal(403, "not_authorized", "serverkeygen needs a profile with automatic approval")
            retry = decision.retry_after or self.poll_interval
            text = f"pending approval; resend the same request after {retry} s"
            return _text(202, text, {"Retry-After": str(retry)})
        if isinstance(decision, Rejected):
            return _refusal_reply(decision, self.poll_interval)
        log.error("EST: the core answered an enrolment with %r", type(decision).__name__)
        return _text(503, "temporarily unable to answer", {"Retry-After": str(SYSTEM_RETRY_AFTER)})


# -- helpers ----------------------------------------------------------------------------------


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> EstReply:
    clean = "".join(c if c.isprintable() else " " for c in text)[:MAX_TEXT]
    return EstReply(status, {"Content-Type": TEXT, **(headers or {})}, (clean + "\n").encode("utf-8"))


def _refusal_reply(decision: Rejected, poll_interval: int) -> EstReply:
    """The core's refusal as an HTTP answer (RFC 7030 §4.2.3); the core audited it."""
    status = STATUS_OF_REASON.get(decision.reason, 403)
    if status == 503:
        retry = decision.retry_after or poll_interval
        return _text(503, "temporarily unable to answer, retry later", {"Retry-After": str(retry)})
    if status == 401:
        # The core's text says whether the username exists (unknown / wrong /
        # used up); Credentials.check_password keeps timing from telling
        # that, so the reply must not either. The audit record has it.
        return _text(401, "bad_credential: the credentials were not accepted", {"WWW-Authenticate": REALM})
    return _text(status, f"{decision.reason.value}: {decision.text}")


def _serverkeygen_reply(key: ServerKey, certs: bytes, route: Route) -> EstReply:
    """§4.4.2: the private key (PKCS#8, unencrypted: TLS protects it, §4.4.2
    without the optional CMS wrapping) and the certificate, multipart/mixed."""
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    content_type, body = codec.serverkeygen_multipart(pkcs8, certs, route.line_length)
    return EstReply(200, {"Content-Type": content_type}, body)
