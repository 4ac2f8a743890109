"""ztpki/http/transport.py and ztpki/http/tls.py: the client chain and tls-unique of a
request, from ztpki's own TLS (real handshakes over a socket pair) or from a
trusted proxy's header (a test-only Flask app with a fake peer address)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flask import Flask, request

from protocols.est.http import TransportFacts
from ztpki.config import EstSettings, TlsSettings
from ztpki.http.tls import peer_chain_der, server_context
from ztpki.http.transport import (
    MAX_CERTIFICATES,
    MAX_HEADER_CHARS,
    BadCertificateHeader,
    make_transport,
    parse_certificate_header,
)

Pair = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _certificate(name: str, issuer: Pair | None, *, ca: bool, sans: list[x509.GeneralName] | None = None,
                 eku: list[x509.ObjectIdentifier] | None = None) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _pem(*certificates: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki() -> dict[str, Pair]:
    root = _certificate("Vendor Root", None, ca=True)
    device_ca = _certificate("Vendor Device CA", root, ca=True)
    device = _certificate("device 1", device_ca, ca=False)
    stranger_root = _certificate("Vendor Root", None, ca=True)  # same name, other key
    stranger = _certificate("device 1", stranger_root, ca=False)
    server = _certificate("server", root, ca=False, sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                          eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    return {"root": root, "device_ca": device_ca, "device": device, "stranger": stranger, "server": server}


@pytest.fixture(scope="module")
def tls_home(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Pair]) -> tuple[Path, TlsSettings]:
    home = tmp_path_factory.mktemp("tls")
    (home / "server.pem").write_text(_pem(pki["server"][0]))
    (home / "server.key").write_bytes(_key_pem(pki["server"][1]))
    (home / "server.key").chmod(0o600)
    (home / "clients.pem").write_text(_pem(pki["root"][0]))
    return home, TlsSettings(certificate="server.pem", key="server.key", port=8443, client_ca="clients.pem")


def _handshake(home: Path, tls: TlsSettings, tmp_path: Path, client_chain: list[x509.Certificate] | None,
               client_key: ec.EllipticCurvePrivateKey | None, version: ssl.TLSVersion) -> Iterator[ssl.SSLSocket]:
    """A real TLS handshake over a socket pair; yields the server's socket."""
    server_ctx = server_context(home, tls)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.minimum_version = client_ctx.maximum_version = version
    if client_chain is not None and client_key is not None:
        (tmp_path / "client.pem").write_text(_pem(*client_chain))
        (tmp_path / "client.key").write_bytes(_key_pem(client_key))
        client_ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    left, right = socket.socketpair()
    errors: list[BaseException] = []
    client_side: list[ssl.SSLSocket] = []

    def client() -> None:
        try:
            wrapped = client_ctx.wrap_socket(left, server_side=False)
            client_side.append(wrapped)
            wrapped.sendall(b"ping")  # TLS 1.3: the server's verdict on our certificate comes with a read
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        server = server_ctx.wrap_socket(right, server_side=True)
        try:
            assert server.recv(4) == b"ping"
            yield server
        finally:
            server.close()
    finally:
        thread.join(5)
        for s in client_side:
            s.close()
        left.close()


def _facts(sock: Any, headers: dict[str, str] | None = None, peer: str = "127.0.0.1",
           settings: EstSettings | None = None) -> TransportFacts:
    app = Flask("test")
    transport = make_transport(settings or EstSettings())
    with app.test_request_context("/", headers=headers or {}, environ_base={"REMOTE_ADDR": peer, "gunicorn.socket": sock}):
        return transport(request)


# -- ztpki's own TLS ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_verified_client_chain_reaches_the_transport_without_the_anchor(
    tls_home: tuple[Path, TlsSettings], pki: dict[str, Pair], tmp_path: Path, version: ssl.TLSVersion
) -> None:
    home, tls = tls_home
    chain = [pki["device"][0], pki["device_ca"][0]]
    for sock in _handshake(home, tls, tmp_path, chain, pki["device"][1], version):
        assert [x509.load_der_x509_certificate(d) for d in peer_chain_der(sock)] == [*chain, pki["root"][0]]
        facts = _facts(sock, headers={"X-SSL-Client-Cert": quote(_pem(pki["stranger"][0]))})
        found, unique = facts.client_chain, facts.tls_unique
        assert facts.over_tls and facts.certificate_error is None
        assert found == tuple(chain)  # the header is never read over our own TLS
        if version is ssl.TLSVersion.TLSv1_2:
            assert isinstance(unique, bytes) and len(unique) == 12  # RFC 5929: the first Finished
        else:
            assert unique is None  # RFC 8446 §C.5: no tls-unique in TLS 1.3


def test_a_tls_client_without_certificate_has_no_chain_but_tls_unique(
    tls_home: tuple[Path, TlsSettings], tmp_path: Path
) -> None:
    home, tls = tls_home
    for sock in _handshake(home, tls, tmp_path, None, None, ssl.TLSVersion.TLSv1_2):
        facts = _facts(sock)
        assert facts.over_tls and facts.client_chain is None and facts.tls_unique is not None


def test_a_client_certificate_outside_the_bundle_fails_the_handshake(
    tls_home: tuple[Path, TlsSettings], pki: dict[str, Pair], tmp_path: Path
) -> None:
    # Python's ssl cannot ask for a certificate without verifying it (module docstring of ztpki/http/tls.py).
    home, tls = tls_home
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        for _sock in _handshake(home, tls, tmp_path, [pki["stranger"][0]], pki["stranger"][1], ssl.TLSVersion.TLSv1_2):
            pass


def test_tls_below_1_2_is_refused(tls_home: tuple[Path, TlsSettings]) -> None:
    home, tls = tls_home
    context = server_context(home, tls)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_OPTIONAL


# -- a trusted proxy's header ---------------------------------------------------------------------

TRUSTED = EstSettings(trusted_proxies=("127.0.0.1", "10.1.0.0/16", "fd00::/64"))


def test_a_header_from_a_trusted_proxy_gives_the_chain_and_no_tls_unique(pki: dict[str, Pair]) -> None:
    leaf, device_ca = pki["device"][0], pki["device_ca"][0]
    header = quote(_pem(leaf, device_ca), safe="")  # nginx $ssl_client_escaped_cert style
    for peer in ("127.0.0.1", "10.1.200.3", "fd00::5", "::ffff:10.1.0.9"):
        assert _facts(None, {"X-SSL-Client-Cert": header}, peer, TRUSTED) == TransportFacts(True, (leaf, device_ca)), peer


def test_the_chain_header_adds_intermediates_after_the_client_certificate(pki: dict[str, Pair]) -> None:
    leaf, device_ca = pki["device"][0], pki["device_ca"][0]
    headers = {"X-SSL-Client-Cert": quote(_pem(leaf)), "X-SSL-Client-Chain": quote(_pem(device_ca))}
    assert _facts(None, headers, "127.0.0.1", TRUSTED) == TransportFacts(True, (leaf, device_ca))


def test_a_header_from_anyone_else_is_ignored_and_logged_once(pki: dict[str, Pair], caplog: pytest.LogCaptureFixture) -> None:
    header = quote(_pem(pki["device"][0]))
    transport = make_transport(TRUSTED)
    app = Flask("test")
    caplog.set_level(logging.WARNING, "ztpki.transport")
    for peer in ("192.0.2.7", "192.0.2.7", "10.2.0.1", "fd01::1"):
        with app.test_request_context("/", headers={"X-SSL-Client-Cert": header}, environ_base={"REMOTE_ADDR": peer}):
            assert transport(request) == TransportFacts(over_tls=False)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and all("not a trusted proxy" in w for w in warnings), warnings
    assert sum("192.0.2.7" in w for w in warnings) == 1


def test_no_proxy_is_trusted_by_default(pki: dict[str, Pair]) -> None:
    assert _facts(None, {"X-SSL-Client-Cert": quote(_pem(pki["device"][0]))}, "127.0.0.1") == TransportFacts(over_tls=False)


def test_a_configured_header_name_is_the_one_read(pki: dict[str, Pair]) -> None:
    settings = EstSettings(trusted_proxies=("127.0.0.1",), client_cert_header="X-Client-Cert")
    leaf = pki["device"][0]
    assert _facts(None, {"X-SSL-Client-Cert": quote(_pem(leaf))}, settings=settings) == TransportFacts(True)
    assert _facts(None, {"X-Client-Cert": quote(_pem(leaf))}, settings=settings) == TransportFacts(True, (leaf,))


@pytest.mark.parametrize("value", [
    "garbage",
    quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    quote("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
    "%" * (MAX_HEADER_CHARS + 1),
])
def test_a_bad_header_from_a_trusted_proxy_gives_no_chain_but_a_certificate_error(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "ztpki.transport")
    facts = _facts(None, {"X-SSL-Client-Cert": value}, "127.0.0.1", TRUSTED)
    assert facts.over_tls and facts.client_chain is None and facts.certificate_error
    assert any("unusable" in r.getMessage() for r in caplog.records)


def test_a_bad_chain_header_spoils_the_whole_chain(pki: dict[str, Pair]) -> None:
    headers = {"X-SSL-Client-Cert": quote(_pem(pki["device"][0])), "X-SSL-Client-Chain": "nonsense"}
    facts = _facts(None, headers, "127.0.0.1", TRUSTED)
    assert facts.client_chain is None and facts.certificate_error


def test_the_header_parser_reads_the_forms_proxies_send(pki: dict[str, Pair]) -> None:
    leaf = pki["device"][0]
    pem = _pem(leaf)
    tabbed = pem.replace("\n", "\n\t").rstrip("\t")  # nginx's older $ssl_client_cert
    spaced = pem.replace("\n", " ")
    for value in (quote(pem), quote(pem, safe=""), tabbed, spaced, pem):
        assert parse_certificate_header(value) == [leaf]
    with pytest.raises(BadCertificateHeader, match="more than"):
        parse_certificate_header(quote(pem * (MAX_CERTIFICATES + 1)))


def test_an_empty_header_is_no_certificate(pki: dict[str, Pair]) -> None:
    assert _facts(None, {"X-SSL-Client-Cert": ""}, "127.0.0.1", TRUSTED) == TransportFacts(over_tls=True)


# -- over TLS or not (RFC 7030 §3.3; issue 10 finding 7) --------------------------------------------


def test_plain_http_from_an_untrusted_peer_is_not_over_tls() -> None:
    for settings in (EstSettings(), TRUSTED):
        assert _facts(None, {}, "192.0.2.7", settings) == TransportFacts(over_tls=False)
    # Not even when it says it is.
    assert not _facts(None, {"X-Forwarded-Proto": "https"}, "192.0.2.7", TRUSTED).over_tls


def test_a_trusted_proxy_is_over_tls_unless_it_says_it_forwarded_plain_http(pki: dict[str, Pair]) -> None:
    assert _facts(None, {}, "10.1.2.3", TRUSTED) == TransportFacts(over_tls=True)
    assert _facts(None, {"X-Forwarded-Proto": "https"}, "10.1.2.3", TRUSTED).over_tls
    plain = _facts(None, {"X-Forwarded-Proto": "http", "X-SSL-Client-Cert": quote(_pem(pki["device"][0]))},
                   "10.1.2.3", TRUSTED)
    assert not plain.over_tls


def test_more_chain_certificates_than_allowed_is_a_certificate_error(pki: dict[str, Pair]) -> None:
    leaf, device_ca = pki["device"][0], pki["device_ca"][0]
    headers = {"X-SSL-Client-Cert": quote(_pem(leaf)), "X-SSL-Client-Chain": quote(_pem(*[device_ca] * MAX_CERTIFICATES))}
    facts = _facts(None, headers, "127.0.0.1", TRUSTED)
    assert facts.client_chain is None and "more than" in (facts.certificate_error or "")
