"""ra.policy on its own: which names a device's certificate may carry, and in
which spelling; the subject built from the registry."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.profiles import default_profiles
from ra.authenticate import Refusal
from ra.policy import check_device_sans, device_subject
from ra.requests import RejectReason

PROFILES = default_profiles()
ENB = dataclasses.replace(PROFILES["enb"], dns_names=("{serial}.enb.operator.example", "m{mac}.mgmt.operator.example"))
IMEI = "490154203237518"


@dataclass(frozen=True)
class Device:
    serial: str = "SN-1"
    mac: str | None = "00:1a:2b:3c:4d:5e"
    imei: str | None = IMEI
    hnb_id: str | None = None


def kept(*names: x509.GeneralName, device: Device = Device(), profile: object = ENB) -> list[x509.GeneralName]:
    return list(check_device_sans(names, device, profile))  # type: ignore[arg-type]


def refused(*names: x509.GeneralName, device: Device = Device(), profile: object = ENB) -> str:
    with pytest.raises(Refusal) as caught:
        check_device_sans(names, device, profile)  # type: ignore[arg-type]
    assert caught.value.reason is RejectReason.POLICY_VIOLATION
    return caught.value.text


def dns(value: str) -> x509.DNSName:
    # As parsed from a request: cryptography does not check names it reads.
    return x509.DNSName._init_without_validation(value)  # type: ignore[attr-defined]


def uri(value: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier._init_without_validation(value)  # type: ignore[attr-defined]


# -- dNSName ---------------------------------------------------------------------------------


def test_the_profile_names_are_kept_lower_case_whatever_the_request_spells() -> None:
    assert kept(dns("SN-1.ENB.Operator.Example"), dns("m001a2b3c4d5e.mgmt.operator.example"), dns("sn-1.enb.operator.example")) == [
        x509.DNSName("sn-1.enb.operator.example"), x509.DNSName("m001a2b3c4d5e.mgmt.operator.example"),
    ]


@pytest.mark.parametrize("name", [
    "sn-1.evil.example",  # the finding: the serial as first label, any domain
    "sn-1",  # the bare serial: not a host name, and no rule gives it
    "sn-1.enb.operator.example.",  # trailing dot
    "*.enb.operator.example", "*.sn-1.enb.operator.example",  # wildcards
    "x.sn-1.enb.operator.example", "sn-1.enb.operator.example.evil.example",
    "sn-1..enb.operator.example", ".sn-1.enb.operator.example",
    "sn-1.enb.operator.example\x00.evil.example", "sn-1.enb.operator.example ",
    "sn-1.enb.operatör.example", "ſn-1.enb.operator.example",  # U+017F folds to 's' under casefold
    "SN\u2010\u0031.enb.operator.example",  # a Unicode hyphen
    "m00-1a-2b-3c-4d-5e.mgmt.operator.example", "m001A2B3C4D5E.mgmt.operator.example.evil",
])
def test_any_other_dns_name_is_refused(name: str) -> None:
    assert "does not name device SN-1" in refused(dns(name))


def test_without_a_dns_names_rule_a_device_has_no_dns_name() -> None:
    refused(dns("sn-1.enb.operator.example"), profile=PROFILES["enb"])


@pytest.mark.parametrize("serial", ["a.b", "SN/1", "SN_1", "xn--80ak6aa92e", "snö-1", "-sn", "sn-"])
def test_a_serial_that_is_not_a_plain_label_gets_no_dns_name(serial: str) -> None:
    device = Device(serial=serial)
    refused(dns(f"{serial.lower()}.enb.operator.example"), device=device)
    # The MAC rule still names it.
    assert kept(dns("m001a2b3c4d5e.mgmt.operator.example"), device=device) == [x509.DNSName("m001a2b3c4d5e.mgmt.operator.example")]


def test_a_serial_that_looks_like_a_host_name_is_refused_where_the_cn_would_be_copied() -> None:
    server = PROFILES["server"]
    assert server.cn_as_dns_san
    assert "would copy serial" in refused(device=Device(serial="gw1.bank.example"), profile=server)
    assert kept(device=Device(serial="SN-1"), profile=server) == []


# -- URIs and every other type ------------------------------------------------------------


def test_the_registered_mac_and_imei_urns_are_kept_in_canonical_form() -> None:
    ucpe = PROFILES["ucpe"]
    assert kept(uri("URN:DEV:MAC:001A2B3C4D5E"), uri("urn:gsma:imei:49015420-323751-0"), profile=ucpe) == [
        x509.UniformResourceIdentifier("urn:dev:mac:001a2b3c4d5e"),
        x509.UniformResourceIdentifier("urn:gsma:imei:49015420-323751-0"),
    ]
    # Some Android IMS stacks write the check digit where RFC 7254 has the spare 0.
    assert kept(uri("urn:gsma:imei:49015420-323751-8"), profile=ucpe) == [
        x509.UniformResourceIdentifier("urn:gsma:imei:49015420-323751-0")]


@pytest.mark.parametrize("value", [
    "urn:dev:mac:001a2b3c4d5f",  # another device
    "urn:dev:mac:00:1a:2b:3c:4d:5e", "urn:dev:mac:001a2b3c4d5e_eth0", "urn:dev:mac:001a2b3c4d5e ",
    f"urn:imei:{IMEI}", "urn:imei:49015420-323751-8",  # no such namespace (RFC 7254 registers "gsma")
    "urn:gsma:imei:49015420-323751-7", f"urn:gsma:imei:{IMEI}",
    "SN-1", "sn-1", "urn:dev:serial:SN-1", "https://sn-1.enb.operator.example/",
])
def test_any_other_uri_is_refused(value: str) -> None:
    refused(uri(value), profile=PROFILES["ucpe"])


@pytest.mark.parametrize("name", [
    x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
    x509.RFC822Name("sn-1@operator.example"),
    x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SN-1")])),
    x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
    x509.OtherName(x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4"), b"\x04\x04SN-1"),
])
def test_every_other_san_type_is_refused(name: x509.GeneralName) -> None:
    refused(name)


# -- subject ------------------------------------------------------------------------------


def test_the_subject_is_the_registry_serial_and_tenant() -> None:
    subject = device_subject("SN-1", "Operator A", PROFILES["enb"])
    assert subject.rfc4514_string() == "CN=SN-1,2.5.4.5=SN-1,O=Operator A"


def test_a_serial_too_long_for_the_subject_is_refused_not_cut() -> None:
    # Cut to 64, two devices would share one subject.
    with pytest.raises(Refusal, match="longer than the 64"):
        device_subject("S" * 65, None, PROFILES["enb"])
    assert device_subject("S" * 64, None, PROFILES["enb"]).get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "S" * 64


@pytest.mark.parametrize("serial", ["SN_1", "SN@1", "SNé1", "SN*1"])
def test_a_serial_a_printablestring_cannot_hold_is_refused_where_serialnumber_is_written(serial: str) -> None:
    with pytest.raises(Refusal, match="PrintableString"):
        device_subject(serial, None, PROFILES["enb"])
    # Without serialNumber the CN (a UTF8String) holds it.
    assert device_subject(serial, None, PROFILES["ocsp-signer"]).get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == serial


# -- property: whatever is kept is exactly an allowed name -----------------------------------

ALLOWED = {
    x509.DNSName("sn-1.enb.operator.example"), x509.DNSName("m001a2b3c4d5e.mgmt.operator.example"),
    x509.UniformResourceIdentifier("urn:dev:mac:001a2b3c4d5e"), x509.UniformResourceIdentifier("urn:gsma:imei:49015420-323751-0"),
}
SEEDS = ["sn-1.enb.operator.example", "m001a2b3c4d5e.mgmt.operator.example", "urn:dev:mac:001a2b3c4d5e",
         "urn:gsma:imei:49015420-323751-0", "urn:gsma:imei:49015420-323751-8", "sn-1", "sn-1.evil.example"]


@st.composite
def near_names(draw: st.DrawFn) -> str:
    """An allowed spelling, then maybe re-cased, cut, extended or with a character changed."""
    text = draw(st.sampled_from(SEEDS))
    text = "".join(c.upper() if draw(st.booleans()) else c for c in text)
    edit = draw(st.sampled_from(["none", "prefix", "suffix", "replace", "cut"]))
    extra = draw(st.text(alphabet=st.sampled_from("aZ0-._*:\x00 öſK\u2010"), min_size=1, max_size=3))
    at = draw(st.integers(0, len(text) - 1))
    return {"none": text, "prefix": extra + text, "suffix": text + extra,
            "replace": text[:at] + extra + text[at + 1:], "cut": text[:at]}[edit]


general_names = st.one_of(
    near_names().map(dns), near_names().map(uri),
    st.text(max_size=40).map(dns), st.text(max_size=40).map(uri),
    st.builds(x509.IPAddress, st.ip_addresses()),
    st.emails().map(x509.RFC822Name),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(general_names, max_size=5))
def test_whatever_is_kept_is_exactly_an_allowed_name_in_its_canonical_form(requested: list[x509.GeneralName]) -> None:
    profile = dataclasses.replace(ENB, san_types=frozenset({"dns", "uri"}))
    try:
        result = check_device_sans(requested, Device(), profile)
    except Refusal as refusal:
        assert refusal.reason is RejectReason.POLICY_VIOLATION
        # Only refused when some name is not the device's, case aside.
        assert any(_canonical_of(name) is None for name in requested)
        return
    assert set(result) <= ALLOWED
    assert len(result) == len(set(result))
    assert set(result) == {_canonical_of(n) for n in requested}


def _canonical_of(name: x509.GeneralName) -> x509.GeneralName | None:
    value = name.value
    if not isinstance(value, str) or not value.isascii():
        return None
    lowered = value.lower().replace("-323751-8", "-323751-0")
    for allowed in ALLOWED:
        if type(allowed) is type(name) and allowed.value == lowered:
            return allowed
    return None
