"""WSGI app assembly: the Flask app over an Instance."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ca.issuer import UnknownAuthority
from ca.profiles import Profile
from ca.template import IssuanceOrder
from hsm import KeyType
from ca.ocsp import INTERNAL_ERROR, MALFORMED
from ca.db import NotFound, StoreError
from protocols.cmp import http as cmp_http
from protocols.cmp.server import CmpServer, RefusalRecord, Route, ServerIdentity
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
    """The CMP server over this instance's core; signed replies carry the
    CMP protection certificate of the CA the path names."""
    identities: dict[str | None, ServerIdentity] = {}
    lock = threading.Lock()

    def identity(route: Route) -> ServerIdentity:
        with lock:
            found = identities.get(route.ca)
            if found is None:
                found = identities[route.ca] = cmp_protection_identity(instance, route.ca)
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
        policy=instance.cmp_policy,
    )


def _audit_refusal(instance: Instance, record: RefusalRecord) -> None:
    instance.audit.append(
        actor="anonymous",
        protocol="cmp",
        operation=record.body_type,
        evidence=[record.sender] if record.sender else [],
        outcome="rejected",
        reason=record.fail_info,
        details={"text": record.text, "transaction": record.transaction_id, "peer": record.peer},
    )


# RFC 6402 §2.10 id-kp-cmcRA: the certificate of an RA that protects CMP replies.
ID_KP_CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")
PROTECTION_RENEW_BEFORE = timedelta(days=30)


def protection_profile(instance: Instance) -> Profile:
    """digitalSignature and cmcRA only (RFC 9483 §3.2; RFC 9481 §3)."""
    return dataclasses.replace(
        instance.cas.profile("server"),
        name="cmp-protection",
        description="CMP reply protection (RFC 9483 §3.2)",
        key_usage=frozenset({"digital_signature"}),
        extended_key_usage=(ID_KP_CMC_RA,),
        san_types=frozenset(),
        cn_as_dns_san=False,
        excess_extensions="refuse",
    )


def cmp_protection_identity(instance: Instance, ca: str | None) -> ServerIdentity:
    """The CMP protection key (in the token) and its certificate under CA `ca`,
    made on first use. The certificate is kept in the home directory; a file
    lock keeps two workers from making two (RFC 9483 §3.2: a dedicated
    certificate with digitalSignature, its chain in extraCerts)."""
    authority = instance.cas.authority(ca)
    label = f"cmp-protection-{authority.name}"
    path = instance.settings.home / f"{label}.pem"
    lock_path = instance.settings.home / f".{label}.lock"
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            certificate = _current_protection_certificate(instance, label, path, authority.certificate)
            if certificate is None:
                if not instance.token.has_key(label):
                    instance.token.generate_key(label, KeyType.EC_P256)
                order = IssuanceOrder(
                    ca=authority.name,
                    profile="cmp-protection",
                    subject=x509.Name([
                        x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, f"ztpki CMP {authority.name}"),
                    ]),
                    public_key=instance.token.public_key(label),  # type: ignore[arg-type]
                )
                certificate = instance.cas.issue(order, profile=protection_profile(instance)).certificate
                path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
                log.info("CMP protection certificate %x issued under %s", certificate.serial_number, authority.name)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    chain = (certificate,) + authority.chain
    return ServerIdentity(
        instance.token.signer(label),
        certificate,
        tuple(c.public_bytes(serialization.Encoding.DER) for c in chain),
    )


def _current_protection_certificate(
    instance: Instance, label: str, path: Path, issuer: x509.Certificate
) -> x509.Certificate | None:
    if not path.exists() or not instance.token.has_key(label):
        return None
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return None
    if certificate.public_key() != instance.token.public_key(label) or certificate.issuer != issuer.subject:
        return None
    if certificate.not_valid_after_utc - datetime.now(timezone.utc) < PROTECTION_RENEW_BEFORE:
        return None
    return certificate


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

    def __getattr__(self, name: str) -> Any:
        return getattr(self.instance.cmp_transactions, name)
