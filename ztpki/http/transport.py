"""Transport facts for EST (DESIGN.md: read by the HTTP binding, handed to
the protocol as plain values): whether the request came over TLS, the TLS
client certificate chain and the tls-unique channel binding.

    transport = make_transport(settings.est)
    facts = transport(flask.request)  # protocols.est.http.TransportFacts

Two sources, never mixed:

* ztpki's own TLS (`serve` with [tls]): the chain the handshake verified
  against the client CA bundle, without the bundle's anchor, and tls-unique
  (TLS 1.2 only). A client-certificate header on such a request is ignored.
* a TLS-terminating proxy on the plain HTTP port: the client certificate in
  [est] client_cert_header (nginx: `$ssl_client_escaped_cert`, URL-escaped
  PEM, optionally followed by its chain) plus any certificates in
  client_chain_header, believed only when the request's peer address is in
  [est] trusted_proxies. Anyone else's header is ignored (logged once per
  address). tls-unique is None: the proxy's TLS session is not ours.

over_tls (RFC 7030 §3.3: EST only over TLS) is true on ztpki's own TLS and
for requests from [est] trusted_proxies: listing a proxy states that it
terminates TLS, unless it says otherwise in X-Forwarded-Proto (nginx:
`proxy_set_header X-Forwarded-Proto $scheme;` on a proxy that also listens
in plain HTTP). Anything else on the plain port is not over TLS.

A header from a trusted proxy is parsed defensively: size-bounded, and one
bad certificate makes the whole chain unusable (logged), never an
exception. A certificate the client presented but that cannot be read is
certificate_error, so EST refuses the request instead of falling back to
HTTP Basic (issue 10 finding 7).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import ssl
import threading
from typing import Callable
from urllib.parse import unquote

from cryptography import x509
from flask import Request

from protocols.est.http import TransportFacts
from ztpki.config import EstSettings
from ztpki.http.tls import peer_chain_der, tls_unique

log = logging.getLogger("ztpki.transport")

Chain = tuple[x509.Certificate, ...]
Transport = Callable[[Request], TransportFacts]
FORWARDED_PROTO = "X-Forwarded-Proto"

# A P-384 / RSA-4096 chain of a few certificates escaped by nginx fits in a
# few kB; gunicorn refuses header fields over 8190 bytes before we see them.
MAX_HEADER_CHARS = 32 * 1024
MAX_CERTIFICATES = 8
MAX_WARNED_PEERS = 1024

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----(?P<body>[A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----"
)
_WHITESPACE = re.compile(r"\s+")


class BadCertificateHeader(ValueError):
    """The proxy's header holds no usable certificate."""


def parse_certificate_header(value: str) -> list[x509.Certificate]:
    """Certificates from a proxy header, in order: URL-escaped PEM (nginx
    $ssl_client_escaped_cert), PEM with tab-indented lines (nginx's older
    $ssl_client_cert) or PEM whose line breaks became spaces."""
    if len(value) > MAX_HEADER_CHARS:
        raise BadCertificateHeader(f"{len(value)} characters (at most {MAX_HEADER_CHARS})")
    text = unquote(value) if "%" in value else value
    found: list[x509.Certificate] = []
    for match in _PEM_CERTIFICATE.finditer(text):
        if len(found) == MAX_CERTIFICATES:
            raise BadCertificateHeader(f"more than {MAX_CERTIFICATES} certificates")
        try:
            der = base64.b64decode(_WHITESPACE.sub("", match["body"]), validate=True)
            found.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError) as exc:
            raise BadCertificateHeader(f"certificate {len(found) + 1}: {exc}") from None
    if not found:
        raise BadCertificateHeader("no PEM certificate")
    return found


def _is_self_issued_anchor(certificate: x509.Certificate) -> bool:
    return certificate.issuer == certificate.subject


class _Transport:
    def __init__(self, settings: EstSettings) -> None:
        self.networks = settings.proxy_networks()
        self.cert_header = settings.client_cert_header
        self.chain_header = settings.client_chain_header
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> TransportFacts:
        sock = request.environ.get("gunicorn.socket")
        # The socket, not wsgi.url_scheme: gunicorn sets the scheme from
        # X-Forwarded-Proto headers of forwarded_allow_ips (127.0.0.1 by default).
        if isinstance(sock, ssl.SSLSocket):
            if request.headers.get(self.cert_header):
                self._warn_once(request.remote_addr, f"{self.cert_header} on a request over ztpki's own TLS ignored")
            return self._from_tls(sock)
        header = request.headers.get(self.cert_header)
        if not self._trusted(request.remote_addr):
            if header:
                self._warn_once(
                    request.remote_addr,
                    f"{self.cert_header} from {request.remote_addr}, not a trusted proxy ([est] trusted_proxies): ignored",
                )
            return TransportFacts(over_tls=False)
        proto = request.headers.get(FORWARDED_PROTO)
        over_tls = proto is None or proto.strip().lower() == "https"
        if not header:
            return TransportFacts(over_tls=over_tls)
        try:
            chain = self._from_header(header, request.headers.get(self.chain_header), request.remote_addr)
        except BadCertificateHeader as exc:
            return TransportFacts(over_tls=over_tls, certificate_error=str(exc))
        return TransportFacts(over_tls=over_tls, client_chain=chain)

    def _from_tls(self, sock: ssl.SSLSocket) -> TransportFacts:
        try:
            chain = [x509.load_der_x509_certificate(der) for der in peer_chain_der(sock)]
        except ValueError as exc:  # OpenSSL verified it; cryptography is stricter
            log.warning("TLS client certificate chain unreadable: %s", exc)
            return TransportFacts(over_tls=True, tls_unique=tls_unique(sock), certificate_error=f"unreadable: {exc}")
        if len(chain) > 1 and _is_self_issued_anchor(chain[-1]):
            # The anchor came from our bundle, not from the client; the core
            # finds its own anchors.
            chain.pop()
        return TransportFacts(over_tls=True, client_chain=tuple(chain) or None, tls_unique=tls_unique(sock))

    def _from_header(self, header: str, chain_header: str | None, peer: str | None) -> Chain:
        try:
            chain = parse_certificate_header(header)
            if chain_header:
                chain += parse_certificate_header(chain_header)
            if len(chain) > MAX_CERTIFICATES:
                raise BadCertificateHeader(f"more than {MAX_CERTIFICATES} certificates")
        except BadCertificateHeader as exc:
            log.warning("client certificate header from proxy %s unusable: %s", peer, exc)
            raise
        return tuple(chain)

    def _trusted(self, peer: str | None) -> bool:
        if not peer or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == n.version and address in n for n in self.networks)

    def _warn_once(self, peer: str | None, message: str) -> None:
        key = peer or "-"
        with self._lock:
            if key in self._warned or len(self._warned) >= MAX_WARNED_PEERS:
                return
            self._warned.add(key)
        log.warning("%s (said once per address)", message)


def make_transport(settings: EstSettings) -> Transport:
    """The transport facts of a request (see the module docstring)."""
    return _Transport(settings)
