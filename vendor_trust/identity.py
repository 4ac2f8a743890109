"""The device identity an IDevID (IEEE 802.1AR) names.

IEEE 802.1AR §8.10.4 recommends the device serial in the subjectAltName as
an otherName hardwareModuleName (RFC 4108 §5); many vendors instead put it in
the subject serialNumber attribute (X.520, 2.5.4.5), and some only in the CN.
We read them in that order of preference. The first source present decides:
a malformed or ambiguous value there is refused rather than silently replaced
by a weaker source, because the vendor signed what it meant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.error import PyAsn1Error
from pyasn1_alt_modules import rfc4108

from vendor_trust.trust_errors import BadIdentity

IdentitySource = Literal["hardwareModuleName", "subject-serialNumber", "common-name"]

# RFC 4108 §5: id-on-hardwareModuleName.
HARDWARE_MODULE_NAME = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4")

# The registry's devices.serial column is String(128).
MAX_SERIAL_LENGTH = 128


@dataclass(frozen=True)
class DeviceIdentity:
    """Who the device is, as its vendor certified it."""

    serial: str
    vendor: str  # the vendor whose anchor terminated the validated path
    source: IdentitySource
    certificate: x509.Certificate
    # The validated path, device certificate first, the anchor last.
    path: tuple[x509.Certificate, ...] = field(default=(), compare=False, repr=False)


def read_identity(certificate: x509.Certificate) -> tuple[str, IdentitySource]:
    """(serial, source) from hardwareModuleName, subject serialNumber or CN, in that order."""
    try:
        hardware = _hardware_module_serials(certificate)
        if hardware is not None:
            return _single(hardware, "hardwareModuleName"), "hardwareModuleName"
        subject = certificate.subject
        serials = [_attribute_text(a) for a in subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
        if serials:
            return _single(serials, "subject serialNumber"), "subject-serialNumber"
        names = [_attribute_text(a) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names:
            return _single(names, "subject commonName"), "common-name"
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        # cryptography parses extensions and names lazily; a malformed
        # encoding surfaces here rather than at load time.
        raise BadIdentity(f"cannot read the device identity: {exc}") from None
    raise BadIdentity(
        "the device certificate names no serial: no hardwareModuleName, "
        "no subject serialNumber and no commonName"
    )


def _hardware_module_serials(certificate: x509.Certificate) -> list[str] | None:
    """Serials of every hardwareModuleName in the SAN; None when there is none."""
    try:
        san = certificate.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return None
    assert isinstance(san.value, x509.SubjectAlternativeName)
    values = [
        name.value
        for name in san.value.get_values_for_type(x509.OtherName)
        if name.type_id == HARDWARE_MODULE_NAME
    ]
    if not values:
        return None
    return [_decode_hardware_module_name(v) for v in values]


def _decode_hardware_module_name(der: bytes) -> str:
    """RFC 4108 §5: HardwareModuleName ::= SEQUENCE { hwType OID, hwSerialNum OCTET STRING }."""
    try:
        decoded, rest = der_decoder.decode(der, asn1Spec=rfc4108.HardwareModuleName())
    except PyAsn1Error as exc:
        raise BadIdentity(f"malformed hardwareModuleName: {exc}") from None
    if rest:
        raise BadIdentity("malformed hardwareModuleName: trailing data")
    octets = bytes(decoded["hwSerialNum"])
    if not octets:
        raise BadIdentity("hardwareModuleName with an empty hwSerialNum")
    # hwSerialNum is an OCTET STRING: vendors write ASCII serials, but nothing
    # stops them writing binary ones, which we name by their hex.
    if all(0x20 <= b <= 0x7E for b in octets) and octets.strip() == octets:
        return octets.decode("ascii")
    return octets.hex()


def _attribute_text(attribute: x509.NameAttribute[str | bytes]) -> str:
    value = attribute.value
    if isinstance(value, bytes):
        raise BadIdentity(f"{attribute.oid.dotted_string} is not a string")
    return value


def _single(values: list[str], where: str) -> str:
    distinct = set(values)
    if len(distinct) > 1:
        raise BadIdentity(f"the device certificate names several serials in its {where}")
    value = values[0]
    if not value.strip():
        raise BadIdentity(f"empty device serial in the {where}")
    if len(value) > MAX_SERIAL_LENGTH:
        raise BadIdentity(f"device serial in the {where} longer than {MAX_SERIAL_LENGTH} characters")
    # Serials end up in logs, audit records and CLI output.
    if any(not ch.isprintable() for ch in value):
        raise BadIdentity(f"device serial in the {where} contains control characters")
    return value
