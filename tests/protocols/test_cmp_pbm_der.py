"""PBMParameter (RFC 4211 §4.4) read and written by hand in macs.py agrees
with pyasn1's reading and writing of the ASN.1 module, and refuses what it must."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ
from pyasn1_alt_modules import rfc4210

from protocols.cmp import macs

OWFS = sorted(macs.OWF_BY_OID)
MACS = sorted(macs.HMAC_BY_OID)


def pyasn1_pbm(salt: bytes, owf: str, count: int, mac: str, null_params: bool = False) -> bytes:
    params = rfc4210.PBMParameter()
    params["salt"] = salt
    params["owf"]["algorithm"] = univ.ObjectIdentifier(owf)
    params["iterationCount"] = count
    params["mac"]["algorithm"] = univ.ObjectIdentifier(mac)
    if null_params:
        params["owf"]["parameters"] = univ.Any(b"\x05\x00")
        params["mac"]["parameters"] = univ.Any(b"\x05\x00")
    return bytes(encoder.encode(params))


@settings(max_examples=200, deadline=None)
@given(
    salt=st.binary(min_size=macs.MIN_SALT, max_size=macs.MAX_SALT),
    owf=st.sampled_from(OWFS),
    count=st.integers(min_value=macs.MIN_ITERATIONS, max_value=macs.MAX_ITERATIONS),
    mac=st.sampled_from(MACS),
    null_params=st.booleans(),
)
def test_hand_written_der_matches_pyasn1(salt: bytes, owf: str, count: int, mac: str, null_params: bool) -> None:
    encoded = pyasn1_pbm(salt, owf, count, mac, null_params)
    read = macs.parse_password_based_mac(encoded)
    assert (read.salt, read.owf_oid, read.iterations, read.mac_oid) == (salt, owf, count, mac)
    written = read.algorithm_id().parameters
    assert written == pyasn1_pbm(salt, owf, count, mac)  # parameters absent, as RFC 9481 §6.1.1 allows
    back, rest = decoder.decode(written, asn1Spec=rfc4210.PBMParameter())
    assert not rest and bytes(back["salt"]) == salt and int(back["iterationCount"]) == count


@pytest.mark.parametrize("count_der", [
    b"\x02\x00",  # empty INTEGER
    b"\x02\x02\x00\x01",  # non-minimal
    b"\x02\x01\xff",  # negative
    b"\x02\x09\x01" + b"\x00" * 8,  # absurdly large
])
def test_bad_iteration_counts_are_mac_parameter_errors(count_der: bytes) -> None:
    good = pyasn1_pbm(b"s" * 16, OWFS[0], 1000, MACS[0])
    body = good[2:]
    salt_end = 2 + 16
    owf_len = body[salt_end + 1] + 2
    start = salt_end + owf_len
    count_len = body[start + 1] + 2
    mutated = body[:start] + count_der + body[start + count_len:]
    with pytest.raises(macs.MacParameterError):
        macs.parse_password_based_mac(bytes([0x30, len(mutated)]) + mutated)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_mac_parameter_error(data: bytes) -> None:
    try:
        macs.parse_password_based_mac(data)
    except macs.MacParameterError:
        pass
