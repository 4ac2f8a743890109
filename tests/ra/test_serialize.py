"""EnrolmentRequest ⇄ bytes round trips over generated requests."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ra.requests import (
    CurrentCertificate,
    EnrolmentRequest,
    HttpBasic,
    OneTimePin,
    Operation,
    Protocol,
    SharedSecretReference,
    TlsClientCertificate,
    TrustedRa,
    VendorCertificate,
)
from ra.serialize import SerializationError, VerifiedHttpBasic, VerifiedOneTimePin, decode_request, encode_request

# Real keys and certificates, made once: key generation is too slow to do per example.
PRIVATE_KEYS = [
    ec.generate_private_key(ec.SECP256R1()),
    ec.generate_private_key(ec.SECP384R1()),
    ed25519.Ed25519PrivateKey.generate(),
    ed448.Ed448PrivateKey.generate(),
    rsa.generate_private_key(public_exponent=65537, key_size=2048),
]
PUBLIC_KEYS = [k.public_key() for k in PRIVATE_KEYS]


def _certificate(name: str, key: Any, issuer_key: Any, issuer: str, ca: bool) -> x509.Certificate:
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                 x509.NameAttribute(NameOID.SERIAL_NUMBER, name.upper())]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    algorithm = None if isinstance(issuer_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


_VENDOR_CA_KEY = PRIVATE_KEYS[0]
VENDOR_CA = _certificate("Vendor CA", _VENDOR_CA_KEY, _VENDOR_CA_KEY, "Vendor CA", True)
CERTIFICATES = [VENDOR_CA] + [
    _certificate(f"device-{i}", key, _VENDOR_CA_KEY, "Vendor CA", False) for i, key in enumerate(PRIVATE_KEYS)
]

# -- strategies ---------------------------------------------------------------------

_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
_dns = st.builds(lambda labels: ".".join(labels), st.lists(_label, min_size=1, max_size=4))
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=30)
# cryptography caps CN and O at 64 bytes of UTF-8: 16 characters always fit.
_name_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=16)

_attribute = st.one_of(
    st.builds(x509.NameAttribute, st.just(NameOID.COMMON_NAME), _name_text),
    st.builds(x509.NameAttribute, st.just(NameOID.ORGANIZATION_NAME), _name_text),
    st.builds(x509.NameAttribute, st.just(NameOID.SERIAL_NUMBER), _label),
    st.builds(x509.NameAttribute, st.just(NameOID.COUNTRY_NAME), st.sampled_from(["DE", "FR", "US"])),
)
_names = st.builds(lambda attrs: x509.Name(attrs), st.lists(_attribute, max_size=4))

_general_name = st.one_of(
    st.builds(x509.DNSName, _dns),
    st.builds(lambda user, host: x509.RFC822Name(f"{user}@{host}"), _label, _dns),
    st.builds(x509.IPAddress, st.ip_addresses()),
    st.builds(lambda host: x509.UniformResourceIdentifier(f"https://{host}/x"), _dns),
    st.builds(x509.RegisteredID, st.sampled_from([x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), NameOID.COMMON_NAME])),
    st.builds(x509.DirectoryName, _names),
    # RFC 4108 hardwareModuleName: an otherName carrying DER we keep as is.
    st.builds(lambda data: x509.OtherName(x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4"), b"\x04" + bytes([len(data)]) + data),
              st.binary(max_size=40)),
)


def _key_usage(digital_signature: bool, key_agreement: bool, encipher_only: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature, False, True, False, key_agreement, False, False,
                         key_agreement and encipher_only, False)


_extension_value = st.one_of(
    st.builds(x509.BasicConstraints, st.just(False), st.none()),
    st.builds(lambda n: x509.BasicConstraints(True, n), st.one_of(st.none(), st.integers(0, 5))),
    st.builds(_key_usage, st.booleans(), st.booleans(), st.booleans()),
    st.builds(lambda oids: x509.ExtendedKeyUsage(oids),
              st.lists(st.sampled_from([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), min_size=1, max_size=2)),
    st.builds(x509.SubjectKeyIdentifier, st.binary(min_size=1, max_size=32)),
    st.builds(lambda names: x509.SubjectAlternativeName(names), st.lists(_general_name, min_size=1, max_size=3)),
    st.builds(lambda data: x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.7"), b"\x04" + bytes([len(data)]) + data),
              st.binary(max_size=20)),
)
_extension = st.builds(lambda value, critical: x509.Extension(value.oid, critical, value), _extension_value, st.booleans())

_chain = st.lists(st.sampled_from(CERTIFICATES), min_size=1, max_size=3).map(tuple)
_secret = st.text(min_size=8, max_size=24).map(lambda s: "s3cr3t-" + s)
_plain_evidence = st.one_of(
    st.builds(VendorCertificate, _chain),
    st.builds(TlsClientCertificate, _chain, st.one_of(st.none(), st.binary(min_size=1, max_size=48))),
    st.builds(SharedSecretReference, _text),
    st.builds(CurrentCertificate, st.sampled_from(CERTIFICATES), st.lists(st.sampled_from(CERTIFICATES), max_size=2).map(tuple)),
    st.builds(TrustedRa, st.sampled_from(CERTIFICATES)),
)
_secret_evidence = st.one_of(st.builds(OneTimePin, _secret), st.builds(HttpBasic, _text, _secret))
_moment = st.one_of(
    st.none(),
    st.datetimes(timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=2))])),
    st.datetimes(),
)


def _requests(evidence: st.SearchStrategy[Any]) -> st.SearchStrategy[EnrolmentRequest]:
    return st.builds(
        EnrolmentRequest,
        protocol=st.sampled_from(Protocol),
        operation=st.sampled_from(Operation),
        public_key=st.one_of(st.none(), st.sampled_from(PUBLIC_KEYS)),
        pop_verified=st.booleans(),
        subject=_names,
        sans=st.lists(_general_name, max_size=4).map(tuple),
        extensions=st.lists(_extension, max_size=4).map(tuple),
        evidence=st.lists(evidence, max_size=3).map(tuple),
        ca=st.one_of(st.none(), _label),
        profile=st.one_of(st.none(), _label),
        transaction_id=st.one_of(st.none(), _text),
        claimed_device=st.one_of(st.none(), _text),
        revoke_serial=st.one_of(st.none(), st.integers(1, 2**159)),
        revoke_reason=st.one_of(st.none(), st.sampled_from(["keyCompromise", "superseded"])),
        revoke_issuer=st.one_of(st.none(), st.binary(min_size=2, max_size=40)),
        server_generated_key=st.booleans(),
        peer=st.one_of(st.none(), st.ip_addresses().map(str)),
        received_at=_moment,
    )


# -- properties -------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(_requests(_plain_evidence))
def test_a_request_without_secrets_comes_back_equal(request: EnrolmentRequest) -> None:
    data = encode_request(request)
    assert decode_request(data) == request
    assert encode_request(decode_request(data)) == data  # canonical: the bytes are stable too


@settings(max_examples=60, deadline=None)
@given(_requests(st.one_of(_plain_evidence, _secret_evidence)))
def test_secrets_are_not_stored_only_that_they_were_verified(request: EnrolmentRequest) -> None:
    data = encode_request(request)
    for item in request.evidence:
        secret = item.pin if isinstance(item, OneTimePin) else item.password if isinstance(item, HttpBasic) else None
        if secret is not None:
            assert secret.encode() not in data
            assert json.dumps(secret).encode() not in data
    decoded = decode_request(data)
    expected = tuple(
        VerifiedOneTimePin() if isinstance(e, OneTimePin)
        else VerifiedHttpBasic(e.username) if isinstance(e, HttpBasic)
        else e
        for e in request.evidence
    )
    assert decoded.evidence == expected
    assert decoded == EnrolmentRequest(**{**request.__dict__, "evidence": expected})
    assert encode_request(decoded) == data


def test_the_stored_form_is_readable_json_with_der_parts() -> None:
    request = EnrolmentRequest(
        protocol=Protocol.SCEP, operation=Operation.INITIAL, public_key=PUBLIC_KEYS[0], pop_verified=True,
        subject=x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-1")]),
        sans=(x509.IPAddress(ipaddress.ip_address("192.0.2.1")),),
        evidence=(OneTimePin("123456"), VendorCertificate((CERTIFICATES[1], VENDOR_CA))),
        transaction_id="tx-1",
    )
    document = json.loads(encode_request(request))
    assert document["format"] == 1
    assert document["evidence"] == [
        {"type": "one_time_pin", "verified": True},
        {"type": "vendor_certificate", "chain": document["evidence"][1]["chain"]},
    ]
    assert "123456" not in json.dumps(document)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_refused_with_a_serialization_error(data: bytes) -> None:
    with pytest.raises(SerializationError):
        decode_request(data)


@settings(max_examples=100, deadline=None)
@given(_requests(_plain_evidence), st.data())
def test_a_damaged_field_is_refused_not_misread(request: EnrolmentRequest, data: st.DataObject) -> None:
    document = json.loads(encode_request(request))
    field = data.draw(st.sampled_from(["subject", "public_key", "protocol", "evidence", "extensions", "sans", "pop_verified"]))
    document[field] = data.draw(st.sampled_from(["AAAA", "!!", 7, [{"type": "magic"}], [{"oid": "2.5.29.15"}], ["MAA="]]))
    try:
        decoded = decode_request(json.dumps(document).encode())
    except SerializationError:
        return
    # Whatever still decodes must be a well-formed request.
    assert isinstance(decoded, EnrolmentRequest)


def test_every_field_of_the_request_is_stored() -> None:
    # A field added to EnrolmentRequest must be added to the stored form too,
    # or an approved request would be re-run without it.
    request = EnrolmentRequest(protocol=Protocol.CMP, operation=Operation.INITIAL, public_key=None, pop_verified=False)
    stored = set(json.loads(encode_request(request))) - {"format"}
    assert stored == {f.name for f in dataclasses.fields(EnrolmentRequest)}


def test_another_format_version_is_refused() -> None:
    request = EnrolmentRequest(protocol=Protocol.EST, operation=Operation.RENEWAL, public_key=None, pop_verified=False)
    document = json.loads(encode_request(request))
    document["format"] = 2
    with pytest.raises(SerializationError, match="format"):
        decode_request(json.dumps(document).encode())
