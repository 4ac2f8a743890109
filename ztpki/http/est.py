"""The EST server over an Instance: routes, CA chains, CsrAttrs from
profiles, server-generated keys and the audit of EST-level refusals."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from storage import db
from ca.issuer import UnknownProfile
from ca.profiles import Profile
from protocols.est import codec
from protocols.est.checks import ServerKey
from protocols.est.server import EstServer, RefusalRecord, Route
from ztpki.instance import Instance

# The profile an unlabelled EST path stands for when the device's own
# profile cannot be known yet (csrattrs and serverkeygen before
# authentication): F5's uCPE profile, when the instance has one.
DEFAULT_EST_PROFILE = "ucpe"

_CURVES = {"ec-p256": ("1.2.840.10045.3.1.7", "1.2.840.10045.4.3.2"),  # prime256v1, ecdsa-with-SHA256
           "ec-p384": ("1.3.132.0.34", "1.2.840.10045.4.3.3")}  # secp384r1, ecdsa-with-SHA384
SHA256_WITH_RSA = "1.2.840.113549.1.1.11"


def est_route_of(instance: Instance, label: str | None) -> Route | None:
    """A label names an issuing CA or a profile (RFC 7030 §3.2.2), as CMP's."""
    target = instance.label_target(label)
    return Route(ca=target[0], profile=target[1]) if target is not None else None


def _profile_for(instance: Instance, route: Route) -> Profile | None:
    name = route.profile or DEFAULT_EST_PROFILE
    try:
        return instance.cas.profile(name)
    except UnknownProfile:
        return None


def csrattrs_of_profile(profile: Profile) -> bytes:
    """CsrAttrs (RFC 7030 §4.5.2, in the style of its example) from what the
    profile knows: challengePassword (tls-unique channel binding, §3.5, is
    checked when sent), the key it prefers and the matching signature
    algorithm, serialNumber when the subject carries it.

    subjectAltName is not asked for: the core keeps a requested SAN only
    when it names the device, so a client filling in its host name would be
    refused; the device's names come from the registry."""
    items: list[str | codec.CsrAttribute] = [codec.CHALLENGE_PASSWORD]
    preferred = profile.key_types[0]
    if preferred in _CURVES:
        curve, signature = _CURVES[preferred]
        items.append(codec.CsrAttribute(codec.ID_EC_PUBLIC_KEY, (codec.oid_der(curve),)))
        items.append(signature)
    elif preferred.startswith("rsa-"):
        # draft-ietf-lamps-rfc7030-csrattrs: rsaEncryption with the key size.
        items.append(codec.CsrAttribute(codec.RSA_ENCRYPTION, (codec.integer_der(int(preferred[4:])),)))
        items.append(SHA256_WITH_RSA)
    if "serialNumber" in profile.subject_attributes:
        items.append(NameOID.SERIAL_NUMBER.dotted_string)
    return codec.csrattrs(items)


def _server_key_for(profile: Profile | None) -> ServerKey:
    preferred = profile.key_types[0] if profile is not None else "ec-p256"
    if preferred == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if preferred.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(preferred[4:]))
    return ec.generate_private_key(ec.SECP256R1())


def est_server_for(instance: Instance) -> EstServer:
    """The EST server over this instance's core (flow F5)."""

    def ca_certificates(route: Route) -> tuple[x509.Certificate, ...]:
        return instance.cas.authority(route.ca).chain

    def csr_attributes(route: Route) -> bytes | None:
        profile = _profile_for(instance, route)
        return csrattrs_of_profile(profile) if profile is not None else None

    return EstServer(
        decide=lambda request: instance.core.decide(request),
        ca_certificates=ca_certificates,
        route=lambda label: est_route_of(instance, label),
        csr_attributes=csr_attributes,
        audit=lambda record: _audit_refusal(instance, record),
        server_key=lambda route: _server_key_for(_profile_for(instance, route)),
        unit_of_work=lambda: db.unit_of_work(instance.engine),
    )


def _audit_refusal(instance: Instance, record: RefusalRecord) -> None:
    # EST authenticates nobody itself: the TLS client certificate and the
    # Basic password are the core's to check, so every refusal EST decides
    # is counted, not chained (issue 10, 6c). The one that follows the
    # core's decision (serverkeygen held for approval) has that decision chained.
    instance.audit_refusal("est", record.operation, record.identity, record.reason, {
        "text": record.text, "status": record.status, "label": record.label, "peer": record.peer,
    }, authenticated=False)


__all__ = ["DEFAULT_EST_PROFILE", "csrattrs_of_profile", "est_route_of", "est_server_for"]
