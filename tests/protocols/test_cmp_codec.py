"""protocols/cmp/codec.py on the LightweightCmpRa golden messages and on our own replies."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyasn1.codec.der import decoder, encoder
from pyasn1_alt_modules import rfc9480

from cmphelpers import expected_body_type, load_vector, vector_id, vector_paths
from protocols.cmp import bodies, codec, der
from protocols.cmp.header import (
    NULL_DN_GENERAL_NAME,
    InfoTypeAndValue,
    PkiHeader,
    encode_header,
    implicit_confirm_info,
    reply_header,
)

VECTORS = vector_paths()


def _full_decode(data: bytes) -> rfc9480.PKIMessage:
    value, rest = decoder.decode(data, asn1Spec=rfc9480.PKIMessage())
    assert not rest
    return value


def test_all_36_vectors_are_present() -> None:
    assert len(VECTORS) == 36


@pytest.mark.parametrize("path", VECTORS, ids=vector_id)
def test_vector_decodes_to_the_body_type_its_name_says(path: Path) -> None:
    message = codec.decode_message(path.read_bytes())
    assert message.body_type == expected_body_type(path)
    assert message.header.pvno == 2
    assert message.header.transaction_id is not None and len(message.header.transaction_id) == 16
    assert message.protection


@pytest.mark.parametrize("path", VECTORS, ids=vector_id)
def test_vector_reencodes_byte_for_byte(path: Path) -> None:
    data = path.read_bytes()
    assert codec.encode_message(codec.decode_message(data)) == data


@pytest.mark.parametrize("path", VECTORS, ids=vector_id)
def test_sliced_protected_part_equals_reencoded_header_and_body(path: Path) -> None:
    data = path.read_bytes()
    full = _full_decode(data)
    part = rfc9480.ProtectedPart()
    part["header"] = full["header"]
    part["body"] = full["body"]
    assert codec.decode_message(data).protected_part == encoder.encode(part)


@pytest.mark.parametrize("path", VECTORS, ids=vector_id)
def test_extra_certs_are_the_certificates_pyasn1_would_decode(path: Path) -> None:
    data = path.read_bytes()
    full = _full_decode(data)
    message = codec.decode_message(data)
    expected = tuple(encoder.encode(cert) for cert in full["extraCerts"]) if full["extraCerts"].isValue else ()
    assert message.extra_certs_der == expected
    assert all(isinstance(cert, x509.Certificate) for cert in message.extra_certs)
    assert tuple(cert.public_bytes(serialization.Encoding.DER) for cert in message.extra_certs) == expected


def _untag(explicit: bytes) -> bytes:
    # pyasn1 encodes CertOrEncCert.certificate with its explicit [0] tag.
    outer = der.read_tlv(explicit, 0)
    return outer.value(explicit)


@pytest.mark.parametrize("path", [p for p in VECTORS if expected_body_type(p) in ("ip", "cp", "kup")], ids=vector_id)
def test_issued_certificate_stays_opaque_der(path: Path) -> None:
    data = path.read_bytes()
    full = _full_decode(data)
    message = codec.decode_message(data)
    name = message.body_type
    ours = bytes(message.body["response"][0]["certifiedKeyPair"]["certOrEncCert"]["certificate"])
    theirs = encoder.encode(full["body"][name]["response"][0]["certifiedKeyPair"]["certOrEncCert"]["certificate"])
    assert ours == _untag(theirs)
    x509.load_der_x509_certificate(ours)


def test_mac_protected_ir_header_fields() -> None:
    message = codec.decode_message(load_vector("IrWithMacProtection", "downstream_INIT_REQ"))
    header = message.header
    assert header.sender_kid == b"senderKid"
    assert header.transaction_id == bytes.fromhex("6e7db6c2faddf0f9a4aed271d1da2fe5")
    assert header.sender_nonce == bytes.fromhex("391983d47693c6e48aaa5890171a18cc")
    assert header.message_time == datetime(2022, 7, 27, 8, 49, 42, tzinfo=timezone.utc)
    assert header.protection_alg is not None and header.protection_alg.oid == "1.2.840.113549.1.5.14"
    assert header.general_info == (
        InfoTypeAndValue("1.3.6.1.5.5.7.4.21", bytes.fromhex("0c21") + b"theCertProfileForOnlineEnrollment"),
    )
    assert not header.implicit_confirm
    assert message.extra_certs_der == ()


def test_message_over_256_kib_is_refused_with_ids_echoed() -> None:
    data = load_vector("IrWithMacProtection", "downstream_INIT_REQ")
    header = der.read_tlv(data, der.read_tlv(data, 0).content)
    padded = der.wrap(0x30, header.slice(data) + der.wrap(0xA0, b"\x00" * (codec.MAX_MESSAGE_SIZE)))
    with pytest.raises(codec.CmpDecodeError) as caught:
        codec.decode_message(padded)
    assert caught.value.transaction_id == bytes.fromhex("6e7db6c2faddf0f9a4aed271d1da2fe5")
    assert caught.value.sender_nonce == bytes.fromhex("391983d47693c6e48aaa5890171a18cc")
    assert caught.value.sender_kid == b"senderKid"


def test_extra_cert_with_bad_version_is_refused_when_loaded() -> None:
    data = load_vector("Rr", "upstream_REVOCATION_REQ")
    message = codec.decode_message(data)
    cert = message.extra_certs_der[0]
    # tbsCertificate version [0] INTEGER 2 → 10 (cryptography: InvalidVersion)
    broken = cert.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x0a", 1)
    assert broken != cert
    bad = codec.decode_message(data.replace(cert, broken))
    with pytest.raises(codec.CmpDecodeError) as caught:
        bad.extra_certs
    assert caught.value.transaction_id == message.header.transaction_id


def test_truncated_message_error_still_echoes_its_ids() -> None:
    data = load_vector("CrWithSignatureProtection", "downstream_CERT_REQ")
    header = codec.decode_message(data).header
    with pytest.raises(codec.CmpDecodeError) as caught:
        codec.decode_message(data[: len(data) // 2])
    failure = caught.value
    assert (failure.transaction_id, failure.sender_nonce, failure.sender_kid) == (
        header.transaction_id,
        header.sender_nonce,
        header.sender_kid,
    )


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(codec.CmpDecodeError):
        codec.decode_message(load_vector("Rr", "upstream_REVOCATION_REQ") + b"\x00")


def test_broken_body_error_still_echoes_transaction_id() -> None:
    data = load_vector("CrWithSignatureProtection", "downstream_CERT_REQ")
    top = der.read_tlv(data, 0)
    header, body = der.children(data, top)[:2]
    broken = der.wrap(0x30, header.slice(data) + der.wrap(body.tag, b"\x30\x03\x02\x01"))
    with pytest.raises(codec.CmpDecodeError) as caught:
        codec.decode_message(broken)
    assert caught.value.transaction_id == codec.decode_message(data).header.transaction_id


def test_ten_thousand_nested_sequences_are_refused_quickly() -> None:
    data = load_vector("IrWithMacProtection", "downstream_INIT_REQ")
    header = der.read_tlv(data, der.read_tlv(data, 0).content).slice(data)
    bomb = b""
    for _ in range(10_000):
        bomb = der.wrap(0x30, bomb)
    started = time.perf_counter()
    with pytest.raises(codec.CmpDecodeError) as caught:
        codec.decode_message(der.wrap(0x30, header + der.wrap(0xA0, bomb)))
    assert time.perf_counter() - started < 0.5
    assert caught.value.transaction_id == bytes.fromhex("6e7db6c2faddf0f9a4aed271d1da2fe5")


def test_indefinite_length_is_refused() -> None:
    with pytest.raises(codec.CmpDecodeError):
        codec.decode_message(b"\x30\x80" + load_vector("Rr", "upstream_REVOCATION_REQ")[4:] + b"\x00\x00")


# -- our own replies -------------------------------------------------------------------

_CERT = codec.decode_message(load_vector("CrDelayed", "upstream_CERT_REP")).extra_certs_der[0]


def _reply_header() -> PkiHeader:
    return PkiHeader(
        pvno=2,
        sender=NULL_DN_GENERAL_NAME,
        recipient=NULL_DN_GENERAL_NAME,
        message_time=datetime(2026, 11, 23, 12, 0, 1, 250000, tzinfo=timezone.utc),
        sender_kid=b"\x01" * 20,
        transaction_id=os.urandom(16),
        sender_nonce=os.urandom(16),
        recip_nonce=os.urandom(16),
        free_text=("ztpki",),
        general_info=(implicit_confirm_info(),),
    )


_REJECTED = bodies.StatusInfo(
    bodies.PkiStatus.REJECTION,
    frozenset({bodies.FailInfo.BAD_POP, bodies.FailInfo.NOT_AUTHORIZED}),
    ("proof of possession failed",),
)

REPLIES = {
    "ip": bodies.cert_rep_body([bodies.CertResponse(0, bodies.StatusInfo(bodies.PkiStatus.ACCEPTED), _CERT)], [_CERT]),
    "cp": bodies.cert_rep_body([bodies.CertResponse(0, _REJECTED)]),
    "kup": bodies.cert_rep_body([bodies.CertResponse(0, bodies.StatusInfo(bodies.PkiStatus.ACCEPTED), _CERT)]),
    "pkiconf": bodies.pkiconf_body(),
    "rp": bodies.rp_body([bodies.StatusInfo(bodies.PkiStatus.ACCEPTED)]),
    "genp": bodies.genp_body([InfoTypeAndValue("1.3.6.1.5.5.7.4.17", der.wrap(0x30, _CERT))]),
    "pollRep": bodies.poll_rep_body([bodies.PollResponse(0, 10, ("waiting for approval",))]),
    "error": bodies.error_body(_REJECTED, 7, ("detail",)),
}


@pytest.mark.parametrize("body_type", sorted(REPLIES))
def test_reply_is_valid_rfc9480_and_round_trips(body_type: str) -> None:
    header = _reply_header()
    header_der = encode_header(header)
    body_der = codec.encode_body(body_type, REPLIES[body_type])
    data = codec.assemble_message(header_der, body_der, b"\x5a" * 32, (_CERT,))
    full = _full_decode(data)
    assert full["body"].getName() == body_type
    assert encoder.encode(full) == data
    message = codec.decode_message(data)
    assert message.header == header
    assert message.body_type == body_type
    assert message.protection == b"\x5a" * 32
    assert message.protected_part == codec.protected_part(header_der, body_der)
    assert codec.encode_message(message) == data


def test_error_reply_carries_failinfo_bits_and_status_string() -> None:
    body_der = codec.encode_body("error", REPLIES["error"])
    message = codec.decode_message(codec.assemble_message(encode_header(_reply_header()), body_der, None))
    assert bodies.status_info_from_asn1(message.body["pKIStatusInfo"]) == _REJECTED
    assert int(message.body["errorCode"]) == 7
    full = _full_decode(codec.assemble_message(encode_header(_reply_header()), body_der, None))
    fail = full["body"]["error"]["pKIStatusInfo"]["failInfo"]
    assert fail[9] == 1 and fail[23] == 1 and sum(fail) == 2


def test_ip_carries_issued_certificate_and_ca_pubs_as_given() -> None:
    body_der = codec.encode_body("ip", REPLIES["ip"])
    full = _full_decode(codec.assemble_message(encode_header(_reply_header()), body_der, None))
    ip = full["body"]["ip"]
    assert encoder.encode(ip["caPubs"][0]) == _CERT
    assert _untag(encoder.encode(ip["response"][0]["certifiedKeyPair"]["certOrEncCert"]["certificate"])) == _CERT


def test_error_reply_to_an_undecodable_request_echoes_what_could_be_read() -> None:
    data = load_vector("IrWithMacProtection", "downstream_INIT_REQ")
    top = der.read_tlv(data, 0)
    header = der.children(data, top)[0]
    with pytest.raises(codec.CmpDecodeError) as caught:
        codec.decode_message(der.wrap(0x30, header.slice(data) + b"\xa0\x01\xff"))
    failure = caught.value
    reply = reply_header(
        NULL_DN_GENERAL_NAME, transaction_id=failure.transaction_id, recip_nonce=failure.sender_nonce
    )
    info = bodies.StatusInfo(bodies.PkiStatus.REJECTION, frozenset({bodies.FailInfo.BAD_DATA_FORMAT}), (failure.reason,))
    message = codec.assemble_message(encode_header(reply), codec.encode_body("error", bodies.error_body(info)), None)
    full = _full_decode(message)
    assert bytes(full["header"]["transactionID"]) == bytes.fromhex("6e7db6c2faddf0f9a4aed271d1da2fe5")
    assert bytes(full["header"]["recipNonce"]) == bytes.fromhex("391983d47693c6e48aaa5890171a18cc")
    assert full["body"]["error"]["pKIStatusInfo"]["failInfo"][5] == 1
