"""Name constraints in vendor paths (RFC 5280 §4.2.1.10)."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from trustfixtures import (  # noqa: F401  (fixtures)
    CA_USAGE,
    Issued,
    VendorPki,
    acme,
    acme_trusted,
    engine,
    hardware_module_name,
    issue,
    key,
    name,
    trust,
    vendor_pki,
)
from vendor_trust.anchors import VendorTrust
from vendor_trust.trust_errors import UntrustedChain


def constrained_ca(pki: VendorPki, constraints: x509.NameConstraints, *, critical: bool = True, index: int = 80) -> Issued:
    return issue(
        name("Constrained CA"), key("ec", index), pki.root, ca=True, key_usage=CA_USAGE,
        extra=[(constraints, critical)],
    )


def device(pki: VendorPki, ca: Issued, subject: x509.Name, san: list[x509.GeneralName] | None = None) -> list[x509.Certificate]:
    return [issue(subject, key("ec", 90), ca, ca=False, san=san or ()).certificate, ca.certificate]


def test_a_subject_inside_a_permitted_directory_name_is_accepted(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    ca = constrained_ca(acme_trusted, x509.NameConstraints([x509.DirectoryName(name(None))], None))
    assert trust.validate(device(acme_trusted, ca, name("DEV-1"))).serial == "DEV-1"


def test_a_subject_outside_a_permitted_directory_name_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    ca = constrained_ca(acme_trusted, x509.NameConstraints([x509.DirectoryName(name(None))], None))
    with pytest.raises(UntrustedChain, match="outside the permitted names"):
        trust.validate(device(acme_trusted, ca, name("DEV-1", o="Someone Else")))


def test_an_excluded_directory_name_cannot_be_dodged_by_case(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    excluded = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Devices"),
                          x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Lab")])
    ca = constrained_ca(acme_trusted, x509.NameConstraints(None, [x509.DirectoryName(excluded)]))
    shouted = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME  devices"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "LAB"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "DEV-2")])
    with pytest.raises(UntrustedChain, match="excluded"):
        trust.validate(device(acme_trusted, ca, shouted))
    assert trust.validate(device(acme_trusted, ca, name("DEV-3")))


def test_a_root_constraint_binds_the_whole_path(trust: VendorTrust) -> None:
    scoped = vendor_pki(
        "Scoped", key_offset=85,
        root_extra=[(x509.NameConstraints([x509.DirectoryName(name(None, o="Scoped"))], None), True)],
    )
    trust.add_vendor("scoped")
    trust.add_anchor("scoped", scoped.root.certificate)
    assert trust.validate(scoped.chain(scoped.device(identity="common-name")))
    stray = issue(name("STRAY", o="Elsewhere"), key("ec", 91), scoped.intermediate, ca=False)
    with pytest.raises(UntrustedChain, match="outside the permitted"):
        trust.validate([stray.certificate, scoped.intermediate.certificate])


def test_dns_name_constraints(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    ca = constrained_ca(
        acme_trusted,
        x509.NameConstraints([x509.DNSName("devices.example")], [x509.DNSName("lab.devices.example")]),
    )
    assert trust.validate(device(acme_trusted, ca, name("D1"), [x509.DNSName("r1.devices.example")]))
    with pytest.raises(UntrustedChain, match="outside the permitted"):
        trust.validate(device(acme_trusted, ca, name("D2"), [x509.DNSName("r1.elsewhere.example")]))
    with pytest.raises(UntrustedChain, match="excluded"):
        trust.validate(device(acme_trusted, ca, name("D3"), [x509.DNSName("x.LAB.devices.example")]))
    with pytest.raises(UntrustedChain, match="excluded"):
        trust.validate(device(acme_trusted, ca, name("D4"), [x509.DNSName("*.devices.example")]))


def test_ip_and_email_constraints(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    ca = constrained_ca(
        acme_trusted,
        x509.NameConstraints(
            [x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")), x509.RFC822Name(".devices.example")], None
        ),
    )
    assert trust.validate(device(acme_trusted, ca, name("I1"), [x509.IPAddress(ipaddress.ip_address("10.1.2.3"))]))
    with pytest.raises(UntrustedChain):
        trust.validate(device(acme_trusted, ca, name("I2"), [x509.IPAddress(ipaddress.ip_address("192.0.2.1"))]))
    assert trust.validate(device(acme_trusted, ca, name("E1"), [x509.RFC822Name("ops@a.devices.example")]))
    with pytest.raises(UntrustedChain):
        trust.validate(device(acme_trusted, ca, name("E2"), [x509.RFC822Name("ops@evil.example")]))


def test_an_unsupported_critical_constraint_form_is_refused_when_it_applies(
    trust: VendorTrust, acme_trusted: VendorPki
) -> None:
    on = hardware_module_name(b"ANY")
    ca = constrained_ca(acme_trusted, x509.NameConstraints([on], None))
    with pytest.raises(UntrustedChain, match="cannot check"):
        trust.validate(device(acme_trusted, ca, x509.Name([]), [hardware_module_name(b"HW-1")]))
    # No otherName below it: nothing the constraint could apply to.
    assert trust.validate(device(acme_trusted, ca, name("PLAIN")))
    lenient = constrained_ca(acme_trusted, x509.NameConstraints([on], None), critical=False, index=81)
    assert trust.validate(device(acme_trusted, lenient, x509.Name([]), [hardware_module_name(b"HW-2")]))
