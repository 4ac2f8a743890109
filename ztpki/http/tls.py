"""ztpki's own TLS (the HTTPS listener of `ztpki serve`): the server context,
the bundle of client-certificate anchors, and what a TLS socket tells about
its peer (the verified client chain, RFC 5929 tls-unique).

Python's ssl module cannot ask for a client certificate without verifying it
(there is no `optional_no_ca` as in nginx): with CERT_OPTIONAL a client that
sends no certificate is let in, but one whose certificate does not chain to
the client CA bundle fails the handshake and never reaches the application.
So the bundle holds every anchor a device may legitimately use (the vendor
anchors the instance trusts and the instance's own CAs, for re-enrolment).
Deployments that must answer such clients with an EST 403 put nginx in
front (`ssl_verify_client optional_no_ca`, conformance/nginxtools.py).

The handshake check is only a gate: it knows nothing of revocation, the
device registry or 802.1AR identities. The enrolment core validates the
chain again (vendor_trust/) before anything is issued.
"""

from __future__ import annotations

import logging
import os
import ssl
import _ssl
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ztpki.config import Settings, TlsSettings

log = logging.getLogger("ztpki.tls")


def server_context(home: Path, tls: TlsSettings) -> ssl.SSLContext:
    """The HTTPS listener's context: TLS 1.2 or 1.3, a client certificate
    asked for but optional, and verified against the client CA bundle."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.2 is the newest version with tls-unique (RFC 5929; RFC 7030 §3.5
    # channel binding); 1.3 is allowed and simply has none.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.certificate_path(home)), str(tls.key_path(home)))
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cafile=str(tls.client_ca_path(home)))
    # Python 3.13 turns on X509_STRICT in default contexts; IDevIDs often lack
    # what it insists on (STANDARDS.md), and vendor_trust/ judges them anyway.
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    return context


def gunicorn_ssl_context(home: Path, tls: TlsSettings) -> Callable[[Any, Any], ssl.SSLContext]:
    """gunicorn's `ssl_context` hook. gunicorn calls it for every accepted
    connection; the context is built once per worker process instead, so the
    key is read once and TLS sessions can be resumed. SIGHUP replaces the
    workers, and with them the context."""
    built: dict[int, ssl.SSLContext] = {}

    def hook(_config: Any, _default_factory: Any) -> ssl.SSLContext:
        pid = os.getpid()
        if pid not in built:
            built.clear()
            built[pid] = server_context(home, tls)
        return built[pid]

    return hook


def client_ca_certificates(instance: Any) -> list[x509.Certificate]:
    """Every vendor anchor the instance trusts, then its own CA certificates
    (a device re-enrols with the operator certificate it was given)."""
    found: dict[bytes, x509.Certificate] = {}
    for anchor in instance.trust.anchors():
        found.setdefault(anchor.certificate.public_bytes(Encoding.DER), anchor.certificate)
    for record in instance.store.list_authorities():
        found.setdefault(record.certificate, x509.load_der_x509_certificate(record.certificate))
    return list(found.values())


def refresh_client_ca(settings: Settings) -> Path | None:
    """Write HOME/tls-client-ca.pem from the instance's anchors when [tls]
    names no client_ca of its own; the path of the bundle in use."""
    tls = settings.tls
    if tls is None:
        return None
    path = tls.client_ca_path(settings.home)
    if tls.client_ca is not None:
        return path
    from ztpki.instance import Instance

    instance = Instance(settings)
    try:
        certificates = client_ca_certificates(instance)
    finally:
        instance.close()
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certificates))
    os.replace(partial, path)
    log.info("TLS client CA bundle %s: %d certificate(s)", path, len(certificates))
    return path


# -- what the TLS socket says about the peer ------------------------------------------


def peer_chain_der(sock: ssl.SSLSocket) -> list[bytes]:
    """The client's verified chain as DER, its certificate first and the
    anchor from the bundle last; empty when it sent no certificate."""
    method = getattr(sock, "get_verified_chain", None)  # public from Python 3.13
    if method is None:
        # Python 3.10-3.12 have it only on the private _ssl._SSLSocket.
        method = getattr(getattr(sock, "_sslobj", None), "get_verified_chain", None)
    if method is None:
        leaf = sock.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    chain = method() or []
    # 3.13's public method gives DER bytes; the private one _ssl.Certificate objects.
    return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in chain]


def tls_unique(sock: ssl.SSLSocket) -> bytes | None:
    """RFC 5929 tls-unique, or None: it is not defined for TLS 1.3 (RFC 8446
    §C.5), whatever OpenSSL would hand back."""
    if sock.version() not in ("TLSv1.2",):
        return None
    try:
        return sock.get_channel_binding("tls-unique")
    except (ValueError, ssl.SSLError):
        return None
