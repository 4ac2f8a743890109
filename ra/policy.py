"""What a device's certificate says, decided from the registry, not the request.

The subject is built from the device identity. A requested SAN survives only
when it is exactly a name the device has: a dNSName its profile's dns_names
rule gives it, or the URN of its registered MAC or IMEI. Whatever survives is
written in its canonical form, never in the request's spelling; every other
name is refused. Requested extensions beyond the profile are refused by
ca.csr's checks.
"""

from __future__ import annotations

import re
from typing import Iterable, Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.profiles import DNS_NAME_PLACEHOLDER, Profile, is_host_name, is_ldh_label
from ra.authenticate import Refusal
from ra.requests import RejectReason

# RFC 5280 appendix A: ub-common-name and ub-serial-number.
SUBJECT_VALUE_LIMIT = 64
# X.520 PrintableString, the type RFC 5280 appendix A gives X520SerialNumber.
_PRINTABLE_STRING = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]+")
# A registry value filled into a dns_names template: one label, no dot.
_LABEL_VALUE = re.compile(r"[a-z0-9-]+")
_SHOWN = 80


class DeviceRecord(Protocol):
    """The registry fields the names come from (vendor_trust.registry.Device)."""

    @property
    def serial(self) -> str: ...
    @property
    def mac(self) -> str | None: ...
    @property
    def imei(self) -> str | None: ...
    @property
    def hnb_id(self) -> str | None: ...


def device_subject(serial: str, tenant: str | None, profile: Profile) -> x509.Name:
    """CN and serialNumber are the device serial; O the tenant (3GPP TS 33.310
    §9.5 leaves the subject to the operator; the device cannot choose it).

    The registry accepts serials of up to 128 printable characters: one that
    does not fit is refused, never cut, so no two devices share a subject."""
    if len(serial) > SUBJECT_VALUE_LIMIT:
        raise Refusal(
            RejectReason.POLICY_VIOLATION,
            f"device serial is longer than the {SUBJECT_VALUE_LIMIT} characters a subject name holds",
        )
    attributes = []
    if tenant and "O" in profile.subject_attributes:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant))
    if "serialNumber" in profile.subject_attributes:
        if _PRINTABLE_STRING.fullmatch(serial) is None:
            raise Refusal(
                RejectReason.POLICY_VIOLATION,
                f"device serial {_shown(serial)} has characters a PrintableString serialNumber cannot hold",
            )
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, serial))
    return x509.Name(attributes)


def device_dns_names(device: DeviceRecord, profile: Profile) -> frozenset[str]:
    """The dNSNames the profile's dns_names rules give this device, lower-case."""
    values = {
        "serial": device.serial,
        "mac": device.mac.replace(":", "") if device.mac else None,
        "imei": device.imei,
        "hnb_id": device.hnb_id,
    }
    names = (_fill(rule, values) for rule in profile.dns_names)
    return frozenset(name for name in names if name is not None)


def _fill(rule: str, values: dict[str, str | None]) -> str | None:
    labels = []
    for label in rule.split("."):
        fields = DNS_NAME_PLACEHOLDER.findall(label)
        for field in fields:
            value = (values.get(field) or "").lower()
            # A dot would put the device under another name; anything but
            # LDH is not a host name; both mean no name from this rule.
            if not value.isascii() or _LABEL_VALUE.fullmatch(value) is None:
                return None
            label = label.replace("{" + field + "}", value)
        if fields and not is_ldh_label(label, a_label_ok=False):
            return None
        labels.append(label)
    name = ".".join(labels)
    return name if is_host_name(name) else None


def device_uris(device: DeviceRecord) -> dict[str, str]:
    """Accepted spelling (lower-case) → canonical URN of the device's identifiers.

    Both URN forms compare without regard to case: RFC 8141 §3.1 makes "urn"
    and the NID case-insensitive, and the rest of each is ABNF quoted text
    and hex or decimal digits, case-insensitive by RFC 5234 §2.3."""
    uris: dict[str, str] = {}
    if device.mac:
        # RFC 9039 §4.1: the 12 hex digits of the MAC, no separators.
        mac = f"urn:dev:mac:{device.mac.replace(':', '').lower()}"
        uris[mac] = mac
    if device.imei and len(device.imei) == 15:
        # RFC 7254 §4: urn:gsma:imei:TAC-SNR-spare, and the spare digit is 0
        # as the device sends it (3GPP TS 23.003 §6.2.1). Some Android IMS
        # stacks put the Luhn check digit there: the same device, so it is
        # accepted and written with the 0.
        imei = device.imei
        canonical = f"urn:gsma:imei:{imei[:8]}-{imei[8:14]}-0"
        uris[canonical] = canonical
        uris[f"urn:gsma:imei:{imei[:8]}-{imei[8:14]}-{imei[14]}"] = canonical
    return uris


def check_device_sans(
    requested: Iterable[x509.GeneralName], device: DeviceRecord, profile: Profile
) -> tuple[x509.GeneralName, ...]:
    """The requested SANs in their canonical form when each is exactly a name
    of this device; refuse the request otherwise (RFC 5280 §4.2.1.6 makes the
    CA answer for every name it certifies)."""
    dns_names = device_dns_names(device, profile)
    uris = device_uris(device)
    kept: list[x509.GeneralName] = []
    for name in requested:
        canonical = _canonical(name, dns_names, uris)
        if canonical is None:
            raise Refusal(
                RejectReason.POLICY_VIOLATION,
                f"SAN {type(name).__name__} {_shown(name.value)} does not name device {device.serial}",
            )
        kept.append(canonical)
    if profile.cn_as_dns_san and not any(isinstance(n, x509.DNSName) for n in kept):
        # ca.template would copy a CN that looks like a host name into a
        # dNSName: the CN is the serial, which no rule may have given.
        serial = device.serial.lower()
        if "." in serial and serial not in dns_names:
            raise Refusal(
                RejectReason.POLICY_VIOLATION,
                f"profile {profile.name!r} would copy serial {_shown(device.serial)} into a dNSName the device is not given",
            )
    return tuple(dict.fromkeys(kept))


def _canonical(name: x509.GeneralName, dns_names: frozenset[str], uris: dict[str, str]) -> x509.GeneralName | None:
    value = name.value
    if not isinstance(value, str) or not value.isascii():
        # IP addresses, otherName, directoryName, registeredID: the registry
        # gives a device none. Non-ASCII is a U-label or an IRI, never the
        # canonical form of a name the device has.
        return None
    lowered = value.lower()
    if isinstance(name, x509.DNSName):
        # RFC 4343: DNS names compare without regard to ASCII case.
        return x509.DNSName(lowered) if lowered in dns_names else None
    if isinstance(name, x509.UniformResourceIdentifier):
        canonical = uris.get(lowered)
        return x509.UniformResourceIdentifier(canonical) if canonical is not None else None
    # rfc822Name: no e-mail address in the registry.
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
