"""Order + profile + issuing CA → certificate builder (the TBSCertificate).

Nothing here signs or stores. The profile decides every extension; the
order brings only the subject, the SANs, the key and the device.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from ca.profiles import SAN_TYPES, SUBJECT_ATTRIBUTES, PolicyViolation, Profile

# RFC 6960 §4.2.2.2.1
OCSP_NOCHECK = x509.OCSPNoCheck()

# Devices without a clock source before their first enrolment (eNBs before
# NTP) are a few minutes off; RFC 5280 leaves notBefore to the CA.
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True)
class IssuanceOrder:
    """What the RA orders the CA to sign. The CA checks it against the profile."""

    ca: str
    profile: str
    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    sans: tuple[x509.GeneralName, ...] = ()
    device_id: str | None = None
    validity_days: int | None = None


@dataclass(frozen=True)
class IssuerFacts:
    """What a certificate says about its issuer."""

    name: x509.Name
    ski: x509.SubjectKeyIdentifier
    not_after: datetime
    crl_url: str | None = None
    ocsp_url: str | None = None
    issuers_url: str | None = None


@dataclass(frozen=True)
class Template:
    builder: x509.CertificateBuilder
    serial: int
    subject: x509.Name
    sans: tuple[x509.GeneralName, ...] = field(default=())
    not_before: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    not_after: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def _check_subject(order: IssuanceOrder, profile: Profile) -> x509.Name:
    allowed = {SUBJECT_ATTRIBUTES[a] for a in profile.subject_attributes}
    rdns = []
    for rdn in order.subject.rdns:
        kept = [a for a in rdn if a.oid in allowed]
        if kept:
            rdns.append(x509.RelativeDistinguishedName(kept))
    subject = x509.Name(rdns)
    if profile.require_cn and not subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise PolicyViolation(f"profile {profile.name!r} needs a subject CN")
    for attribute in subject:
        if attribute.oid == NameOID.COUNTRY_NAME and (
            not isinstance(attribute.value, str) or len(attribute.value) != 2
        ):
            raise PolicyViolation("subject C must be a two-letter country code")
        if isinstance(attribute.value, str) and not attribute.value.strip():
            raise PolicyViolation("empty subject attribute")
    return subject


def _looks_like_dns_name(value: str) -> bool:
    labels = value.split(".")
    return (
        len(labels) >= 2
        and len(value) <= 253
        and all(
            0 < len(label) <= 63
            and all(c.isalnum() or c == "-" for c in label)
            and not label.startswith("-")
            and not label.endswith("-")
            for label in labels
        )
        and not all(label.isdigit() for label in labels)
    )


def _check_sans(order: IssuanceOrder, profile: Profile, subject: x509.Name) -> tuple[x509.GeneralName, ...]:
    allowed = {SAN_TYPES[t] for t in profile.san_types}
    for name in order.sans:
        if type(name) not in allowed:
            raise PolicyViolation(
                f"profile {profile.name!r} does not allow SAN {type(name).__name__}"
            )
        if isinstance(name, x509.DNSName) and not _looks_like_dns_name(name.value.removeprefix("*.")):
            raise PolicyViolation(f"SAN {name.value!r} is not a DNS name")
        if isinstance(name, x509.IPAddress) and isinstance(name.value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            raise PolicyViolation("SAN IP address ranges are not allowed")
    sans = tuple(dict.fromkeys(order.sans))
    if profile.cn_as_dns_san and not any(isinstance(n, x509.DNSName) for n in sans):
        for attribute in subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attribute.value
            if isinstance(value, str) and _looks_like_dns_name(value):
                sans = (x509.DNSName(value.lower()),) + sans
    return sans


def build_template(
    order: IssuanceOrder,
    profile: Profile,
    issuer: IssuerFacts,
    *,
    serial: int,
    now: datetime | None = None,
) -> Template:
    """RFC 5280 §4.1 TBSCertificate for an order under a profile."""
    profile.check_public_key(order.public_key)
    subject = _check_subject(order, profile)
    sans = _check_sans(order, profile, subject)
    validity = profile.validity_days
    if order.validity_days is not None:
        if not 1 <= order.validity_days <= profile.validity_days:
            raise PolicyViolation(
                f"validity must be 1 to {profile.validity_days} days under profile {profile.name!r}"
            )
        validity = order.validity_days
    issued_at = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    not_before = issued_at - BACKDATE
    # A certificate outliving its issuer cannot be validated to the end.
    not_after = min(issued_at + timedelta(days=validity), issuer.not_after)
    if not_after <= issued_at:
        raise PolicyViolation("the issuing CA certificate has expired")

    builder = (
        x509.CertificateBuilder()
        .serial_number(serial)
        .issuer_name(issuer.name)
        .subject_name(subject)
        .public_key(order.public_key)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=profile.is_ca, path_length=profile.path_length),
            critical=True,
        )
        .add_extension(profile.key_usage_extension(order.public_key), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(order.public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer.ski),
            critical=False,
        )
    )
    if profile.extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(profile.extended_key_usage)), critical=False
        )
    if sans:
        # RFC 5280 §4.2.1.6: critical when the subject is empty.
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(sans)), critical=not list(subject)
        )
    elif not list(subject):
        raise PolicyViolation("a certificate needs a subject or a SAN")
    if issuer.crl_url:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(issuer.crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
    access = []
    if issuer.ocsp_url and not profile.ocsp_no_check:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(issuer.ocsp_url)
            )
        )
    if issuer.issuers_url:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(issuer.issuers_url),
            )
        )
    if access:
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    if profile.certificate_policies:
        builder = builder.add_extension(
            x509.CertificatePolicies(
                [x509.PolicyInformation(oid, None) for oid in profile.certificate_policies]
            ),
            critical=False,
        )
    if profile.ocsp_no_check:
        builder = builder.add_extension(OCSP_NOCHECK, critical=False)
    return Template(
        builder=builder,
        serial=serial,
        subject=subject,
        sans=sans,
        not_before=not_before,
        not_after=not_after,
    )
