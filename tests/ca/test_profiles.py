from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ca.profiles import PolicyViolation, ProfileError, default_profiles, parse_profiles

MINIMAL = """
[profiles.x]
validity_days = 30
key_types = ["ec-p256"]
key_usage = ["digital_signature"]
extended_key_usage = ["client_auth"]
subject_attributes = ["CN"]
san_types = ["dns"]
"""


def test_default_profiles_have_every_profile_the_flows_need() -> None:
    profiles = default_profiles()
    assert {"server", "client", "enb", "ucpe", "phone", "ocsp-signer"} <= set(profiles)
    assert profiles["ocsp-signer"].ocsp_no_check


@pytest.mark.parametrize(
    "change, message",
    [
        ("validity_days = 30", "validity_days = 0"),
        ('key_types = ["ec-p256"]', 'key_types = ["rsa-1024"]'),
        ('extended_key_usage = ["client_auth"]', 'extended_key_usage = ["bogus"]'),
        ('san_types = ["dns"]', 'san_types = ["x400"]'),
        ('subject_attributes = ["CN"]', 'subject_attributes = ["XX"]'),
        ("validity_days = 30", "validity_days = 30\nfoo = 1"),
        ("validity_days = 30", "validity_days = 30\nlint = 'yes'"),
    ],
)
def test_a_wrong_profile_file_is_refused_with_a_clear_message(change: str, message: str) -> None:
    with pytest.raises(ProfileError, match="profile 'x'"):
        parse_profiles(MINIMAL.replace(change, message))


def test_implicit_confirm_defaults_to_true_and_reads_false() -> None:
    assert parse_profiles(MINIMAL)["x"].implicit_confirm
    assert not parse_profiles(MINIMAL + "implicit_confirm = false\n")["x"].implicit_confirm
    with pytest.raises(ProfileError, match="implicit_confirm must be true or false"):
        parse_profiles(MINIMAL + 'implicit_confirm = "no"\n')


def test_default_profiles_grant_implicit_confirm_to_devices_only() -> None:
    # Device certificates stay in the store and a device can enrol again;
    # server and OCSP-signer certificates are confirmed or revoked.
    granted = {name for name, profile in default_profiles().items() if profile.implicit_confirm}
    assert granted == {"client", "enb", "ucpe", "phone"}


def test_broken_toml_is_a_profile_error() -> None:
    with pytest.raises(ProfileError):
        parse_profiles("[profiles.x\n")


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(65537, 1024).public_key(),
        ec.generate_private_key(ec.SECP521R1()).public_key(),
        ec.generate_private_key(ec.SECP256K1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
    ],
    ids=["rsa-1024", "p-521", "secp256k1", "ed25519"],
)
def test_keys_outside_the_profile_are_refused(key: object) -> None:
    with pytest.raises(PolicyViolation, match="not allowed"):
        default_profiles()["server"].check_public_key(key)


def test_allowed_keys_pass() -> None:
    profile = default_profiles()["server"]
    profile.check_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    profile.check_public_key(rsa.generate_private_key(65537, 2048).public_key())


def test_dns_names_rules_are_read_lower_case_and_default_to_none() -> None:
    assert parse_profiles(MINIMAL)["x"].dns_names == ()
    assert all(profile.dns_names == () for profile in default_profiles().values())
    rules = parse_profiles(MINIMAL + 'dns_names = ["{serial}.ENB.Operator.example", "m-{mac}.x.example"]\n')["x"].dns_names
    assert rules == ("{serial}.enb.operator.example", "m-{mac}.x.example")


@pytest.mark.parametrize(
    "rules, message",
    [
        ('["enb.operator.example"]', "must name the device"),  # the same name for every device
        ('["{tenant}.operator.example"]', "must name the device"),
        ('["{SERIAL}.operator.example"]', "must name the device"),
        ('["{serial}"]', "not a host name"),  # a single label
        ('["*.{serial}.operator.example"]', "not a host name"),
        ('["{serial}.operator.example."]', "not a host name"),
        ('["{serial}..example"]', "not a host name"),
        ('["{serial}.bücher.example"]', "not a host name"),
        ('["{serial}.under_score.example"]', "not a host name"),
        ('["{serial}.operator.123"]', "not a host name"),
        ('["{serial.operator.example"]', "must name the device"),
        ('["{serial}}.operator.example"]', "not a host name"),
    ],
)
def test_a_dns_names_rule_that_is_not_a_host_name_of_the_device_is_refused(rules: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profiles(MINIMAL + f"dns_names = {rules}\n")


def test_dns_names_needs_the_dns_san_type() -> None:
    with pytest.raises(ProfileError, match='needs "dns" in san_types'):
        parse_profiles(MINIMAL.replace('san_types = ["dns"]', 'san_types = ["uri"]') + 'dns_names = ["{serial}.x.example"]\n')
