"""Reading the device serial from an IDevID (RFC 4108 hardwareModuleName, serialNumber, CN)."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustfixtures import HARDWARE_MODULE_NAME, hardware_module_name, issue, key, name
from vendor_trust.identity import read_identity
from vendor_trust.trust_errors import BadIdentity


def device(subject: x509.Name, san: list[x509.GeneralName] | None = None) -> x509.Certificate:
    return issue(subject, key("ec", 50), None, ca=False, san=san or ()).certificate


def test_hardware_module_name_with_an_ascii_serial_is_read_as_text() -> None:
    cert = device(x509.Name([]), [hardware_module_name(b"FOC1234X0AB")])
    assert read_identity(cert) == ("FOC1234X0AB", "hardwareModuleName")


def test_hardware_module_name_with_a_binary_serial_is_read_as_hex() -> None:
    cert = device(x509.Name([]), [hardware_module_name(b"\x00\x01\xfe\xff")])
    assert read_identity(cert) == ("0001feff", "hardwareModuleName")


def test_hardware_module_name_with_surrounding_spaces_is_read_as_hex() -> None:
    cert = device(x509.Name([]), [hardware_module_name(b" SN1 ")])
    assert read_identity(cert) == (b" SN1 ".hex(), "hardwareModuleName")


def test_hardware_module_name_wins_over_serial_number_and_common_name() -> None:
    cert = device(name("cn-serial", serial="subject-serial"), [hardware_module_name(b"HW-SERIAL")])
    assert read_identity(cert) == ("HW-SERIAL", "hardwareModuleName")


def test_subject_serial_number_wins_over_common_name() -> None:
    cert = device(name("cn-serial", serial="PID:ISR4451 SN:FTX1234"), [x509.DNSName("router.example")])
    assert read_identity(cert) == ("PID:ISR4451 SN:FTX1234", "subject-serialNumber")


def test_common_name_is_the_last_resort() -> None:
    assert read_identity(device(name("AB-1234"))) == ("AB-1234", "common-name")


def test_a_certificate_naming_no_serial_is_refused() -> None:
    with pytest.raises(BadIdentity, match="names no serial"):
        read_identity(device(name(None)))


def test_a_malformed_hardware_module_name_is_refused_not_skipped() -> None:
    # An OCTET STRING where the SEQUENCE should be; the CN must not be used instead.
    bad = x509.OtherName(HARDWARE_MODULE_NAME, b"\x04\x03abc")
    with pytest.raises(BadIdentity, match="malformed hardwareModuleName"):
        read_identity(device(name("fallback"), [bad]))


def test_two_different_hardware_module_names_are_refused() -> None:
    cert = device(x509.Name([]), [hardware_module_name(b"A1"), hardware_module_name(b"B2")])
    with pytest.raises(BadIdentity, match="several serials"):
        read_identity(cert)


def test_an_empty_hw_serial_num_is_refused() -> None:
    with pytest.raises(BadIdentity, match="empty"):
        read_identity(device(x509.Name([]), [hardware_module_name(b"")]))


def test_other_other_names_are_ignored() -> None:
    unrelated = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x03abc")
    cert = device(name("CN-7"), [unrelated])
    assert read_identity(cert) == ("CN-7", "common-name")


def test_a_serial_with_control_characters_is_refused() -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SN1\nforged log line")])
    with pytest.raises(BadIdentity, match="control characters"):
        read_identity(device(subject))


def test_two_different_subject_serial_numbers_are_refused() -> None:
    subject = x509.Name([
        x509.NameAttribute(NameOID.SERIAL_NUMBER, "A"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, "B"),
    ])
    with pytest.raises(BadIdentity):
        read_identity(device(subject))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.binary(max_size=40), cn=st.one_of(st.none(), st.text(min_size=1, max_size=64)))
def test_read_identity_of_arbitrary_other_name_values_returns_or_raises_bad_identity(
    value: bytes, cn: str | None
) -> None:
    try:
        cert = device(name(cn), [x509.OtherName(HARDWARE_MODULE_NAME, value)])
    except ValueError:
        return  # cryptography refused to encode it; nothing to read
    try:
        serial, source = read_identity(cert)
    except BadIdentity:
        return
    assert source == "hardwareModuleName" and serial


MUTABLE = device(name("CN-1", serial="S-1"), [hardware_module_name(b"HW-1")])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_read_identity_of_mutated_certificates_returns_or_raises_bad_identity(data: st.DataObject) -> None:
    der = bytearray(MUTABLE.public_bytes(Encoding.DER))
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is not a ValueError
        return
    try:
        serial, source = read_identity(cert)
    except BadIdentity:
        return
    assert isinstance(serial, str) and source in ("hardwareModuleName", "subject-serialNumber", "common-name")
