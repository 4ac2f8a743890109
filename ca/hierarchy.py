"""Creating CAs: a root, issuing CAs under it, their OCSP signers, imports.

Every CA key is generated inside the token; only certificates reach the store.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca import signing
from ca.issuer import CertificateAuthorities, IssuanceError, IssuedCertificate
from ca.profiles import ca_profile, default_profiles
from storage.db import NotFound
from ca.template import IssuanceOrder, IssuerFacts, build_template
from hsm import HsmError, KeyType, default_sign_algorithm

ROOT_VALIDITY_DAYS = 20 * 365
ISSUING_VALIDITY_DAYS = 10 * 365


# A CA name goes into URLs (/crl/NAME.crl) and file names (HOME/NAME.pem).
_CA_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def check_new_ca_name(cas: CertificateAuthorities, name: str) -> None:
    """Refuse a bad or taken name before any key is generated."""
    if not _CA_NAME.fullmatch(name):
        raise IssuanceError(
            f"bad CA name {name!r}: use 1-63 lower-case letters, digits and '-', starting with a letter or digit"
        )
    try:
        cas.store.authority(name)
    except NotFound:
        return
    raise IssuanceError(f"a CA named {name!r} exists already")


def ca_key_label(name: str) -> str:
    # A random suffix: a re-run after a failed init, a CA rollover or a
    # second instance on a shared HSM never collides with an existing key.
    return f"ztpki-ca-{name}-{secrets.token_hex(4)}"


def _new_key(cas: CertificateAuthorities, label: str, key_type: KeyType) -> object:
    try:
        cas.token.generate_key(label, key_type)
        return cas.token.public_key(label)
    except HsmError as exc:
        raise IssuanceError(f"cannot create key {label!r} in the token: {exc}") from None


def simple_name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def create_root(
    cas: CertificateAuthorities,
    name: str,
    subject: x509.Name,
    key_type: KeyType,
    *,
    validity_days: int = ROOT_VALIDITY_DAYS,
) -> None:
    """A self-signed root CA (RFC 5280 §6.1: trust anchor)."""
    check_new_ca_name(cas, name)
    label = ca_key_label(name)
    public_key = _new_key(cas, label, key_type)
    algorithm = default_sign_algorithm(key_type)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)  # type: ignore[arg-type]
    facts = IssuerFacts(
        name=subject,
        ski=ski,
        not_after=datetime.now(timezone.utc) + timedelta(days=validity_days + 1),
    )
    order = IssuanceOrder(ca=name, profile="root-ca", subject=subject, public_key=public_key)  # type: ignore[arg-type]
    profile = ca_profile("root-ca", validity_days=validity_days, path_length=None)
    template = build_template(order, profile, facts, serial=x509.random_serial_number())
    tbs = signing.tbs_certificate(template.builder, algorithm)
    signer = cas.token.signer(label, algorithm)
    certificate_der = signing.sign_tbs(tbs, signer)
    certificate = x509.load_der_x509_certificate(certificate_der)
    certificate.verify_directly_issued_by(certificate)
    cas.store.add_authority(
        name=name,
        kind="root",
        parent_id=None,
        key_label=label,
        sign_algorithm=algorithm.value,
        certificate=certificate_der,
    )
    cas.forget()


def create_issuing(
    cas: CertificateAuthorities,
    name: str,
    subject: x509.Name,
    key_type: KeyType,
    *,
    parent: str,
    validity_days: int = ISSUING_VALIDITY_DAYS,
) -> IssuedCertificate:
    """An issuing CA signed by parent, recorded in the parent's certificate list."""
    check_new_ca_name(cas, name)
    parent_ca = cas.authority(parent)
    label = ca_key_label(name)
    public_key = _new_key(cas, label, key_type)
    order = IssuanceOrder(ca=parent, profile="sub-ca", subject=subject, public_key=public_key)  # type: ignore[arg-type]
    profile = ca_profile("sub-ca", validity_days=validity_days, path_length=0)
    facts = cas.issuer_facts(parent_ca)
    if parent_ca.record.ocsp_key_label is None:
        # A root without an OCSP responder publishes its status by CRL only.
        facts = IssuerFacts(
            name=facts.name,
            ski=facts.ski,
            not_after=facts.not_after,
            crl_url=facts.crl_url,
            issuers_url=facts.issuers_url,
        )
    issued = cas.sign_order(order, profile, parent_ca, facts)
    cas.store.add_authority(
        name=name,
        kind="issuing",
        parent_id=parent_ca.record.id,
        key_label=label,
        sign_algorithm=default_sign_algorithm(key_type).value,
        certificate=issued.der,
    )
    cas.forget()
    return issued


def create_ocsp_signer(cas: CertificateAuthorities, name: str, key_type: KeyType) -> IssuedCertificate:
    """Delegated OCSP responder for CA `name` (RFC 6960 §4.2.2.2), key in the token."""
    authority = cas.authority(name)
    label = f"ztpki-ocsp-{name}-{secrets.token_hex(4)}"
    public_key = _new_key(cas, label, key_type)
    profile = cas.profiles.get("ocsp-signer") or default_profiles()["ocsp-signer"]
    names = authority.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else name
    # ub-common-name is 64 (RFC 5280 Appendix A.1).
    subject = simple_name(f"{common_name[:48]} OCSP Responder")
    order = IssuanceOrder(ca=name, profile=profile.name, subject=subject, public_key=public_key)  # type: ignore[arg-type]
    issued = cas.sign_order(order, profile, authority, cas.issuer_facts(authority))
    cas.store.set_ocsp_signer(authority.record.id, label, issued.der)
    cas.forget()
    return issued


def import_issuing(
    cas: CertificateAuthorities,
    name: str,
    certificate: x509.Certificate,
    key_label: str,
    parents: list[x509.Certificate],
) -> None:
    """Adopt an existing issuing CA whose key is already in the token.

    parents: the chain above it, nearest first; stored as 'external' CAs
    (no key here) so the chain can be served.
    """
    check_new_ca_name(cas, name)
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise IssuanceError("the certificate has no basicConstraints: not a CA") from None
    if not constraints.ca:
        raise IssuanceError("the certificate is not a CA certificate (cA is false)")
    try:
        token_key = cas.token.public_key(key_label)
        info = cas.token.key_info(key_label)
    except HsmError as exc:
        raise IssuanceError(f"no usable key {key_label!r} in the token: {exc}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if token_key.public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise IssuanceError(f"key {key_label!r} in the token does not match the certificate")
    try:
        certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise IssuanceError("the CA certificate has no subjectKeyIdentifier") from None
    child = certificate
    for parent in parents:
        try:
            child.verify_directly_issued_by(parent)
        except Exception:
            raise IssuanceError(
                f"{child.subject.rfc4514_string()} is not issued by {parent.subject.rfc4514_string()}"
            ) from None
        child = parent
    parent_id = None
    for index, parent in reversed(list(enumerate(parents))):
        record = cas.store.add_authority(
            name=f"{name}-parent-{index + 1}",
            kind="external",
            parent_id=parent_id,
            key_label="",
            sign_algorithm="",
            certificate=parent.public_bytes(serialization.Encoding.DER),
        )
        parent_id = record.id
    cas.store.add_authority(
        name=name,
        kind="issuing",
        parent_id=parent_id,
        key_label=key_label,
        sign_algorithm=default_sign_algorithm(info.key_type).value,
        certificate=certificate.public_bytes(serialization.Encoding.DER),
    )
    cas.forget()
