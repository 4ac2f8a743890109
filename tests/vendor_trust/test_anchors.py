"""Vendor anchors and IDevID path validation (IEEE 802.1AR-aware RFC 5280 profile)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine

from trustfixtures import (  # noqa: F401  (fixtures)
    CA_USAGE,
    DEVICE_USAGE,
    NO_EXPIRY,
    NOW,
    VendorPki,
    acme,
    acme_rsa,
    acme_trusted,
    engine,
    issue,
    key,
    name,
    resign_sha1,
    trust,
    v1_root,
    vendor_pki,
)
from vendor_trust.anchors import VendorTrust
from vendor_trust.trust_errors import (
    BadIdentity,
    CertificateExpired,
    CertificateNotYetValid,
    DuplicateAnchor,
    DuplicateVendor,
    NotACaCertificate,
    UnknownAnchor,
    UnknownVendor,
    UntrustedChain,
)

UNKNOWN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.9.9")


# -- good chains -------------------------------------------------------------------


def test_an_ec_chain_with_a_hardware_module_name_validates(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    device = acme_trusted.device("FOC0001")
    identity = trust.validate(acme_trusted.chain(device))
    assert (identity.serial, identity.vendor, identity.source) == ("FOC0001", "acme", "hardwareModuleName")
    assert identity.certificate == device.certificate
    assert identity.path == (device.certificate, acme_trusted.intermediate.certificate, acme_trusted.root.certificate)


def test_an_rsa_chain_with_a_subject_serial_number_validates(trust: VendorTrust, acme_rsa: VendorPki) -> None:
    trust.add_vendor("acme-rsa")
    trust.add_anchor("acme-rsa", acme_rsa.root.certificate)
    device = acme_rsa.device("RSA-42", identity="subject-serialNumber")
    identity = trust.validate(acme_rsa.chain(device))
    assert (identity.serial, identity.source, identity.vendor) == ("RSA-42", "subject-serialNumber", "acme-rsa")


def test_a_chain_with_a_common_name_identity_validates(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    identity = trust.validate(acme_trusted.chain(acme_trusted.device("CN-9", identity="common-name")))
    assert (identity.serial, identity.source) == ("CN-9", "common-name")


def test_intermediates_in_any_order_with_extras_validate(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    other = vendor_pki("Other Vendor", key_offset=20)
    device = acme_trusted.device()
    chain = [
        device.certificate,
        acme_trusted.root.certificate,  # devices often send the root too
        other.intermediate.certificate,
        acme_trusted.intermediate.certificate,
    ]
    assert trust.validate(chain).serial == "SN0001"


def test_a_device_issued_by_the_anchor_directly_validates(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    device = acme_trusted.device("DIRECT", issuer=acme_trusted.root)
    assert trust.validate([device.certificate]).serial == "DIRECT"


def test_a_v1_self_signed_root_is_an_acceptable_anchor(trust: VendorTrust) -> None:
    root = v1_root(name("Legacy Root", o="Legacy"), key("ec", 30))
    assert root.certificate.version == x509.Version.v1
    intermediate = issue(name("Legacy CA", o="Legacy"), key("ec", 31), root, ca=True, key_usage=CA_USAGE)
    device = issue(name("LEGACY-1", o="Legacy"), key("ec", 32), intermediate, ca=False)
    trust.add_vendor("legacy")
    trust.add_anchor("legacy", root.certificate)
    assert trust.validate([device.certificate, intermediate.certificate]).vendor == "legacy"


def test_the_vendor_is_the_one_whose_anchor_ends_the_path(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    lookalike = vendor_pki(key_offset=10)  # same names, other keys
    trust.add_vendor("evil")
    trust.add_anchor("evil", lookalike.root.certificate)
    assert trust.validate(acme_trusted.chain(acme_trusted.device())).vendor == "acme"
    assert trust.validate(lookalike.chain(lookalike.device())).vendor == "evil"


# -- untrusted ---------------------------------------------------------------------


def test_a_missing_intermediate_is_untrusted(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    with pytest.raises(UntrustedChain, match="no path"):
        trust.validate([acme_trusted.device().certificate])


def test_a_lookalike_root_with_the_same_name_but_another_key_is_untrusted(
    trust: VendorTrust, acme_trusted: VendorPki
) -> None:
    lookalike = vendor_pki(key_offset=10)
    assert lookalike.root.certificate.subject == acme_trusted.root.certificate.subject
    with pytest.raises(UntrustedChain):
        trust.validate(lookalike.chain(lookalike.device()) + [lookalike.root.certificate])


def test_an_empty_chain_is_untrusted(trust: VendorTrust) -> None:
    with pytest.raises(UntrustedChain):
        trust.validate([])


def test_a_device_certificate_that_is_a_ca_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    device = acme_trusted.device(ca=True, key_usage=CA_USAGE)
    with pytest.raises(UntrustedChain, match="is a CA certificate"):
        trust.validate(acme_trusted.chain(device))


def test_an_intermediate_without_ca_true_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    for ca in (None, False):
        rogue = issue(name("Rogue CA"), key("ec", 40), acme_trusted.root, ca=ca)
        device = acme_trusted.device(issuer=rogue)
        with pytest.raises(UntrustedChain, match="not a CA"):
            trust.validate([device.certificate, rogue.certificate])


def test_an_intermediate_whose_key_usage_lacks_key_cert_sign_is_refused(
    trust: VendorTrust, acme_trusted: VendorPki
) -> None:
    bad = issue(name("Signing CA"), key("ec", 41), acme_trusted.root, ca=True, key_usage=DEVICE_USAGE)
    device = acme_trusted.device(issuer=bad)
    with pytest.raises(UntrustedChain, match="keyCertSign"):
        trust.validate([device.certificate, bad.certificate])


def test_a_device_key_usage_without_digital_signature_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    with pytest.raises(UntrustedChain, match="digitalSignature"):
        trust.validate(acme_trusted.chain(acme_trusted.device(key_usage=usage)))


def test_a_device_without_key_usage_or_eku_or_san_or_aki_validates(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    no_aki = x509.CertificateBuilder(
        issuer_name=acme_trusted.intermediate.certificate.subject, subject_name=name("BARE-2"),
        public_key=key("ec", 42).public_key(), serial_number=77,
        not_valid_before=NOW - timedelta(days=1), not_valid_after=NOW + timedelta(days=1),
    ).sign(acme_trusted.intermediate.key, hashes.SHA256())
    assert len(no_aki.extensions) == 0
    assert trust.validate([no_aki, acme_trusted.intermediate.certificate]).serial == "BARE-2"


def test_a_path_length_violation_is_refused(trust: VendorTrust) -> None:
    strict = vendor_pki("Strict", key_offset=50, root_path_length=0)
    trust.add_vendor("strict")
    trust.add_anchor("strict", strict.root.certificate)
    with pytest.raises(UntrustedChain, match="pathLenConstraint"):
        trust.validate(strict.chain(strict.device()))
    assert trust.validate([strict.device(issuer=strict.root).certificate]).vendor == "strict"


def test_an_intermediate_path_length_zero_forbids_a_further_ca(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    upper = issue(name("Upper CA"), key("ec", 43), acme_trusted.root, ca=True, path_length=0, key_usage=CA_USAGE)
    lower = issue(name("Lower CA"), key("ec", 44), upper, ca=True, key_usage=CA_USAGE)
    device = acme_trusted.device(issuer=lower)
    with pytest.raises(UntrustedChain, match="pathLenConstraint"):
        trust.validate([device.certificate, lower.certificate, upper.certificate])
    assert trust.validate([acme_trusted.device(issuer=upper).certificate, upper.certificate])


def test_an_unknown_critical_extension_is_refused_anywhere_in_the_path(
    trust: VendorTrust, acme_trusted: VendorPki
) -> None:
    odd = x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00")
    with pytest.raises(UntrustedChain, match="1.3.6.1.4.1.55555.9.9"):
        trust.validate(acme_trusted.chain(acme_trusted.device(extra=[(odd, True)])))
    odd_ca = issue(name("Odd CA"), key("ec", 45), acme_trusted.root, ca=True, key_usage=CA_USAGE, extra=[(odd, True)])
    with pytest.raises(UntrustedChain, match="unsupported critical extension"):
        trust.validate([acme_trusted.device(issuer=odd_ca).certificate, odd_ca.certificate])
    assert trust.validate(acme_trusted.chain(acme_trusted.device(extra=[(odd, False)])))


def test_a_device_certificate_that_is_itself_an_anchor_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    with pytest.raises(UntrustedChain):
        trust.validate([acme_trusted.root.certificate])


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_sha1_signatures_are_refused_unless_allowed(engine: Engine, trust: VendorTrust, kind: str) -> None:
    pki = vendor_pki("Old Vendor", kind=kind, key_offset=60)
    trust.add_vendor("old")
    trust.add_anchor("old", pki.root.certificate)
    device = resign_sha1(pki.device(), pki.intermediate)
    assert isinstance(device.certificate.signature_hash_algorithm, hashes.SHA1)
    with pytest.raises(UntrustedChain, match="sha1"):
        trust.validate(pki.chain(device))
    assert VendorTrust(engine, allow_sha1=True).validate(pki.chain(device)).vendor == "old"
    forged = resign_sha1(pki.device(), vendor_pki("Old Vendor", kind=kind, key_offset=70).intermediate)
    with pytest.raises(UntrustedChain, match="no path"):
        VendorTrust(engine, allow_sha1=True).validate(pki.chain(forged))


def test_an_rsa_key_below_2048_bits_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    device = issue(name("WEAK-1"), weak, acme_trusted.intermediate, ca=False)
    with pytest.raises(UntrustedChain, match="1024-bit RSA"):
        trust.validate(acme_trusted.chain(device))


def test_a_valid_chain_naming_no_serial_is_a_bad_identity(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    device = issue(name(None), key("ec", 46), acme_trusted.intermediate, ca=False)
    with pytest.raises(BadIdentity):
        trust.validate(acme_trusted.chain(device))


# -- time ---------------------------------------------------------------------------


def test_an_expired_device_certificate_is_refused_as_expired(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    device = acme_trusted.device(not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=1))
    with pytest.raises(CertificateExpired, match="expired"):
        trust.validate(acme_trusted.chain(device))


def test_a_not_yet_valid_device_certificate_is_refused(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    device = acme_trusted.device(not_before=NOW + timedelta(days=1))
    with pytest.raises(CertificateNotYetValid):
        trust.validate(acme_trusted.chain(device))
    assert trust.validate(acme_trusted.chain(device), at=NOW + timedelta(days=2))


def test_not_after_99991231235959z_means_no_expiry(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    forever_ca = issue(name("Forever CA"), key("ec", 47), acme_trusted.root, ca=True, key_usage=CA_USAGE, not_after=NO_EXPIRY)
    device = acme_trusted.device(issuer=forever_ca, not_after=NO_EXPIRY)
    assert device.certificate.not_valid_after_utc == NO_EXPIRY
    far = datetime(2999, 1, 1, tzinfo=timezone.utc)
    assert trust.validate([device.certificate, forever_ca.certificate], at=far).serial == "SN0001"


def test_a_naive_validation_time_is_taken_as_utc(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    device = acme_trusted.device(not_after=NOW + timedelta(hours=1))
    with pytest.raises(CertificateExpired):
        trust.validate(acme_trusted.chain(device), at=(NOW + timedelta(hours=2)).replace(tzinfo=None))


# -- admin ------------------------------------------------------------------------------


def test_only_ca_certificates_become_anchors(trust: VendorTrust, acme: VendorPki) -> None:
    trust.add_vendor("acme")
    with pytest.raises(NotACaCertificate):
        trust.add_anchor("acme", acme.device().certificate)
    self_signed_leaf = issue(name("self"), key("ec", 48), None, ca=None)
    with pytest.raises(NotACaCertificate):
        trust.add_anchor("acme", self_signed_leaf.certificate)
    no_sign = issue(name("no sign"), key("ec", 48), None, ca=True, key_usage=DEVICE_USAGE)
    with pytest.raises(NotACaCertificate, match="keyCertSign"):
        trust.add_anchor("acme", no_sign.certificate)
    assert trust.anchors("acme") == []


def test_a_duplicate_anchor_is_refused_clearly(trust: VendorTrust, acme: VendorPki) -> None:
    trust.add_vendor("acme")
    trust.add_vendor("other")
    trust.add_anchor("acme", acme.root.certificate)
    with pytest.raises(DuplicateAnchor, match="already an anchor of vendor 'acme'"):
        trust.add_anchor("other", acme.root.certificate)


def test_vendor_admin_errors(trust: VendorTrust, acme: VendorPki) -> None:
    with pytest.raises(UnknownVendor):
        trust.add_anchor("nobody", acme.root.certificate)
    trust.add_vendor("acme")
    with pytest.raises(DuplicateVendor):
        trust.add_vendor("acme")
    assert trust.add_vendor("acme", exist_ok=True).name == "acme"
    with pytest.raises(UnknownAnchor):
        trust.remove_anchor("00" * 32)
    with pytest.raises(UnknownVendor):
        trust.remove_vendor("nobody")


def test_list_vendors_counts_anchors(trust: VendorTrust, acme: VendorPki) -> None:
    trust.add_vendor("acme")
    trust.add_vendor("empty")
    trust.add_anchors("acme", [acme.root.certificate, acme.intermediate.certificate])
    counts = {v.name: (v.anchors, v.crls) for v in trust.list_vendors()}
    assert counts == {"acme": (2, 0), "empty": (0, 0)}
    assert {a.vendor for a in trust.anchors()} == {"acme"}


def test_a_removed_anchor_is_no_longer_trusted(engine: Engine, trust: VendorTrust, acme_trusted: VendorPki) -> None:
    chain = acme_trusted.chain(acme_trusted.device())
    other_worker = VendorTrust(engine, cache_seconds=0)
    assert trust.validate(chain) and other_worker.validate(chain)
    removed = trust.remove_anchor(trust.anchors("acme")[0].fingerprint.upper())
    assert removed.certificate == acme_trusted.root.certificate
    with pytest.raises(UntrustedChain):
        trust.validate(chain)
    with pytest.raises(UntrustedChain):
        other_worker.validate(chain)


def test_anchors_are_cached_for_the_configured_time(engine: Engine, trust: VendorTrust, acme_trusted: VendorPki) -> None:
    chain = acme_trusted.chain(acme_trusted.device())
    cached = VendorTrust(engine, cache_seconds=3600)
    assert cached.validate(chain)
    trust.remove_vendor("acme")
    assert cached.validate(chain)  # still within its cache time
    cached.invalidate_cache()
    with pytest.raises(UntrustedChain):
        cached.validate(chain)


def test_removing_a_vendor_removes_its_anchors(trust: VendorTrust, acme_trusted: VendorPki) -> None:
    trust.remove_vendor("acme")
    assert trust.list_vendors() == [] and trust.anchors() == []
    with pytest.raises(UntrustedChain):
        trust.validate(acme_trusted.chain(acme_trusted.device()))

