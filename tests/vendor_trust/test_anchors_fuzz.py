"""Property tests: validate() on mutated and shuffled chains lets only VendorTrustError escape,
and never accepts a certificate whose signed part was altered."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustfixtures import (  # noqa: F401  (fixtures)
    CA_USAGE,
    Issued,
    VendorPki,
    acme,
    acme_trusted,
    crl_der,
    engine,
    hardware_module_name,
    issue,
    key,
    make_crl,
    name,
    resign_with_extension_value,
    trust,
    vendor_pki,
)
from vendor_trust.anchors import DeviceIdentity, VendorTrust
from vendor_trust.trust_errors import VendorTrustError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def fuzz_trust(trust: VendorTrust, acme_trusted: VendorPki) -> VendorTrust:
    # A CRL on the path, so that the revocation code sees the mutants too.
    trust.load_crl("acme", crl_der(make_crl(acme_trusted.intermediate, [12345])))
    return trust


@st.composite
def mutated(draw: st.DrawFn, der: bytes) -> bytes:
    data = bytearray(der)
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["replace", "replace", "replace", "insert", "delete"]))
        position = draw(st.integers(0, len(data) - 1))
        if action == "replace":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif len(data) > 1:
            del data[position]
    return bytes(data)


def outcome(trust: VendorTrust, chain: list[x509.Certificate]) -> DeviceIdentity | VendorTrustError:
    try:
        return trust.validate(chain)
    except VendorTrustError as exc:
        return exc


@FUZZ
@given(data=st.data(), target=st.sampled_from(["device", "intermediate"]))
def test_validate_of_mutated_certificates_raises_only_vendor_trust_errors(
    fuzz_trust: VendorTrust, acme_trusted: VendorPki, data: st.DataObject, target: str
) -> None:
    device = _pool(acme_trusted)[0]
    intermediate = acme_trusted.intermediate.certificate
    original = device if target == "device" else intermediate
    try:
        mutant = x509.load_der_x509_certificate(data.draw(mutated(original.public_bytes(Encoding.DER))))
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is not a ValueError
        return  # not even a certificate: the protocol layer never gets this far
    chain = [mutant, intermediate] if target == "device" else [device, mutant]
    result = outcome(fuzz_trust, chain)
    if isinstance(result, DeviceIdentity):
        # Only changes outside the signed part can go unnoticed.
        assert mutant.tbs_certificate_bytes == original.tbs_certificate_bytes


@FUZZ
@given(
    target=st.sampled_from(["device", "intermediate", "constrained"]),
    index=st.integers(0, 7),
    original_value=st.booleans(),
    mutant=st.data(),
    critical=st.one_of(st.none(), st.booleans()),
)
def test_validate_of_resigned_certificates_with_garbled_extensions_raises_only_vendor_trust_errors(
    fuzz_trust: VendorTrust, acme_trusted: VendorPki, target: str, index: int, original_value: bool,
    mutant: st.DataObject, critical: bool | None,
) -> None:
    device, constrained_device, constrained_ca = _pool(acme_trusted)[0], *_constrained(acme_trusted)
    intermediate = acme_trusted.intermediate
    subject, issuer = {
        "device": (device, intermediate),
        "intermediate": (intermediate.certificate, acme_trusted.root),
        "constrained": (constrained_device, constrained_ca),
    }[target]
    extensions = list(subject.extensions)
    current = extensions[index % len(extensions)].value.public_bytes()
    value = mutant.draw(mutated(current)) if original_value else mutant.draw(st.binary(max_size=64))
    resigned = resign_with_extension_value(subject, issuer, index, value, critical)
    if resigned is None:
        return
    chain = {
        "device": [resigned, intermediate.certificate],
        "intermediate": [device, resigned],
        "constrained": [resigned, constrained_ca.certificate],
    }[target]
    outcome(fuzz_trust, chain)


@FUZZ
@given(picks=st.lists(st.integers(0, 6), max_size=7), leaf=st.integers(0, 6))
def test_validate_of_arbitrary_chains_accepts_only_acme_paths(
    fuzz_trust: VendorTrust, acme_trusted: VendorPki, picks: list[int], leaf: int
) -> None:
    pool = _pool(acme_trusted)
    chain = [pool[leaf], *(pool[i] for i in picks)]
    result = outcome(fuzz_trust, chain)
    if isinstance(result, DeviceIdentity):
        assert result.vendor == "acme"
        assert result.path[-1] == acme_trusted.root.certificate
        assert chain[0] in (pool[0], pool[1])  # only the genuine devices


_POOLS: dict[int, list[x509.Certificate]] = {}
_CONSTRAINED: dict[int, tuple[x509.Certificate, Issued]] = {}


def _constrained(acme: VendorPki) -> tuple[x509.Certificate, Issued]:
    """A device under a CA with name constraints of every supported form."""
    if id(acme) not in _CONSTRAINED:
        constraints = x509.NameConstraints(
            [x509.DirectoryName(name(None)), x509.DNSName("devices.example"), x509.RFC822Name(".devices.example")],
            [x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")), hardware_module_name(b"X")],
        )
        ca = issue(name("Fuzz NC CA"), key("ec", 120), acme.root, ca=True, key_usage=CA_USAGE, extra=[(constraints, True)])
        device = acme.device(
            "NC-1", issuer=ca, identity="common-name",
            san=[x509.DNSName("r.devices.example"), x509.RFC822Name("a@b.devices.example"),
                 x509.IPAddress(ipaddress.ip_address("192.0.2.1"))],
        ).certificate
        _CONSTRAINED[id(acme)] = (device, ca)
    return _CONSTRAINED[id(acme)]


def _pool(acme: VendorPki) -> list[x509.Certificate]:
    if id(acme) not in _POOLS:
        lookalike = vendor_pki(key_offset=10)
        _POOLS[id(acme)] = [
            acme.device("GOOD-1").certificate,
            acme.device("GOOD-2", identity="subject-serialNumber").certificate,
            lookalike.device("EVIL-1").certificate,
            acme.intermediate.certificate,
            acme.root.certificate,
            lookalike.intermediate.certificate,
            lookalike.root.certificate,
        ]
    return _POOLS[id(acme)]
