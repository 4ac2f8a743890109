"""What a device's certificate says, decided from the registry, not the request.

The subject is built from the device identity; a requested SAN survives only
when it names this device (its serial, MAC or IMEI in a standard URN form);
requested extensions beyond the profile are refused by ca.csr's checks.
"""

from __future__ import annotations

from typing import Iterable

from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.profiles import Profile
from ra.authenticate import Refusal
from ra.requests import RejectReason


def device_subject(serial: str, tenant: str | None, profile: Profile) -> x509.Name:
    """CN and serialNumber are the device serial; O the tenant (3GPP TS 33.310
    §9.5 leaves the subject to the operator; the device cannot choose it)."""
    attributes = []
    if tenant and "O" in profile.subject_attributes:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant))
    if "serialNumber" in profile.subject_attributes:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial[:64]))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, serial[:64]))
    return x509.Name(attributes)


def device_names(serial: str, mac: str | None, imei: str | None) -> set[str]:
    """Lower-case SAN values that identify this device."""
    # No URN for the bare serial: RFC 9039 registers mac, ow, org, os and ops
    # (the last two need the vendor's OUI, which the registry does not hold),
    # and pkilint refused urn:dev:serial:<serial> when it was allowed here.
    names = {serial.lower()}
    if mac:
        # RFC 9039 §4.1: urn:dev:mac with the hex digits, no separators.
        names.add(f"urn:dev:mac:{mac.replace(':', '').replace('-', '').lower()}")
    if imei:
        # RFC 7254 §3: urn:imei:<TAC>-<SNR>-<spare> and the plain digit form.
        names.add(f"urn:imei:{imei}")
        if len(imei) == 15:
            names.add(f"urn:imei:{imei[:8]}-{imei[8:14]}-{imei[14]}")
    return names


def check_device_sans(
    requested: Iterable[x509.GeneralName], serial: str, mac: str | None, imei: str | None
) -> tuple[x509.GeneralName, ...]:
    allowed = device_names(serial, mac, imei)
    kept = []
    for name in requested:
        value = name.value if isinstance(name.value, str) else str(name.value)
        lowered = value.lower()
        if isinstance(name, x509.DNSName):
            # The device's own name: its serial as the first label.
            ok = lowered in allowed or lowered.split(".", 1)[0] in allowed
        elif isinstance(name, x509.UniformResourceIdentifier):
            ok = lowered in allowed
        else:
            ok = False
        if not ok:
            raise Refusal(
                RejectReason.POLICY_VIOLATION,
                f"SAN {value!r} does not name device {serial}",
            )
        kept.append(name)
    return tuple(dict.fromkeys(kept))
