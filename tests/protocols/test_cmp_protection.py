"""protocols/cmp/protection.py and macs.py: vectors from LightweightCmpRa and
`openssl cmp`, our own MAC and signature replies, the iteration cap."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509

from cmphelpers import LocalSigner, expected_body_type, load_vector, vector_id, vector_paths
from protocols.cmp import bodies, codec, macs, protection
from protocols.cmp.bodies import FailInfo
from protocols.cmp.header import NULL_DN_GENERAL_NAME, AlgorithmId, PkiHeader, encode_header

VECTORS = vector_paths()
MAC_VECTORS = [p for p in VECTORS if protection.is_mac_protected(codec.decode_message(p.read_bytes()))]
SIGNED_VECTORS = [p for p in VECTORS if p not in MAC_VECTORS]

# The LightweightCmpRa flows were MAC-protected with the secret "Password"
# (found by trying the secrets in its test configurations; SOURCE.md does not
# name it). Its PBKDF2 keyLength says 4096 and it derives 512 octets: bits.
LIGHTWEIGHT_SECRET = b"Password"


def test_the_vectors_hold_two_pbmac1_messages() -> None:
    assert [vector_id(p) for p in MAC_VECTORS] == [
        "IrWithMacProtection/downstream_CERT_CONFIRM",
        "IrWithMacProtection/downstream_INIT_REQ",
    ]


@pytest.mark.parametrize("path", MAC_VECTORS, ids=vector_id)
def test_pbmac1_vector_verifies_with_its_secret(path: Path) -> None:
    reading = protection.verify_mac_protection(codec.decode_message(path.read_bytes()), LIGHTWEIGHT_SECRET)
    assert isinstance(reading, macs.Pbmac1)
    assert (reading.key_length, reading.derived_length, reading.iterations) == (4096, 512, 10_000)


@pytest.mark.parametrize("path", MAC_VECTORS, ids=vector_id)
def test_pbmac1_vector_fails_with_a_wrong_secret(path: Path) -> None:
    with pytest.raises(protection.ProtectionError) as caught:
        protection.verify_mac_protection(codec.decode_message(path.read_bytes()), b"myPresharedSecret")
    assert caught.value.fail_info == FailInfo.BAD_MESSAGE_CHECK


@pytest.mark.parametrize("path", SIGNED_VECTORS, ids=vector_id)
def test_signed_vector_verifies_with_extra_certs_0(path: Path) -> None:
    message = codec.decode_message(path.read_bytes())
    assert protection.verify_signature_protection(message) == message.extra_certs[0]


@pytest.mark.parametrize("path", SIGNED_VECTORS[:6], ids=vector_id)
def test_signed_vector_with_a_flipped_protection_bit_fails(path: Path) -> None:
    message = codec.decode_message(path.read_bytes())
    assert message.protection is not None
    broken = replace(message, protection=message.protection[:-1] + bytes([message.protection[-1] ^ 1]))
    with pytest.raises(protection.ProtectionError):
        protection.verify_signature_protection(broken)


def test_signed_vector_does_not_verify_with_another_certificate() -> None:
    message = codec.decode_message(load_vector("Rr", "upstream_REVOCATION_REQ"))
    other = LocalSigner("ecdsa-sha256").certificate
    with pytest.raises(protection.ProtectionError):
        protection.verify_signature_protection(message, other)


def test_signature_over_a_changed_body_fails() -> None:
    data = load_vector("CrWithSignatureProtection", "downstream_CERT_REQ")
    message = codec.decode_message(data)
    changed = replace(message, protected_part=message.protected_part[:-1] + b"\x00")
    with pytest.raises(protection.ProtectionError):
        protection.verify_signature_protection(changed)


# -- our own replies -------------------------------------------------------------------


def _header() -> PkiHeader:
    return PkiHeader(
        pvno=2,
        sender=NULL_DN_GENERAL_NAME,
        recipient=NULL_DN_GENERAL_NAME,
        message_time=datetime.now(timezone.utc),
        sender_kid=b"ref-1",
        transaction_id=os.urandom(16),
        sender_nonce=os.urandom(16),
    )


_BODY = codec.encode_body("pkiconf", bodies.pkiconf_body())

MAC_KINDS = {
    "pbm-sha256": macs.new_password_based_mac(),
    "pbm-openssl-default": macs.new_password_based_mac(500, mac_oid="1.3.6.1.5.5.8.1.2"),
    "pbm-sha1-owf": macs.new_password_based_mac(1000, owf_oid="1.3.14.3.2.26", mac_oid="1.2.840.113549.2.7"),
    "pbmac1-sha256": macs.new_pbmac1(),
    "pbmac1-sha512": macs.new_pbmac1(2_000, "1.2.840.113549.2.11", "1.2.840.113549.2.11"),
}


@pytest.mark.parametrize("kind", sorted(MAC_KINDS))
def test_own_mac_message_round_trips(kind: str) -> None:
    data = protection.protect_with_mac(_header(), _BODY, b"s3cret", MAC_KINDS[kind])
    message = codec.decode_message(data)
    reading = protection.verify_mac_protection(message, b"s3cret")
    assert reading.algorithm_id() == message.header.protection_alg
    with pytest.raises(protection.ProtectionError):
        protection.verify_mac_protection(message, b"s3cret!")


def test_reply_to_pbmac1_vector_uses_its_parameters() -> None:
    request = codec.decode_message(load_vector("IrWithMacProtection", "downstream_INIT_REQ"))
    reading = protection.verify_mac_protection(request, LIGHTWEIGHT_SECRET)
    reply = codec.decode_message(protection.protect_with_mac(_header(), _BODY, LIGHTWEIGHT_SECRET, reading))
    answered = protection.verify_mac_protection(reply, LIGHTWEIGHT_SECRET)
    assert isinstance(answered, macs.Pbmac1) and isinstance(reading, macs.Pbmac1)
    # the request's own parameters, salt included: one key derivation per exchange
    assert answered == reading
    with pytest.raises(protection.ProtectionError):
        protection.verify_mac_protection(reply, LIGHTWEIGHT_SECRET + b"x")


@pytest.mark.parametrize("count", [99, macs.MAX_ITERATIONS + 1, 100_000, 10**9])
def test_iteration_count_outside_the_range_is_refused_quickly(count: int) -> None:
    for params in (macs.new_password_based_mac(), macs.new_pbmac1()):
        data = protection.protect_with_mac(_header(), _BODY, b"k", params)
        message = codec.decode_message(data)
        assert message.header.protection_alg is not None
        big = replace(params, iterations=count).algorithm_id()
        tampered = replace(message, header=replace(message.header, protection_alg=big))
        started = time.perf_counter()
        with pytest.raises(protection.ProtectionError) as caught:
            protection.verify_mac_protection(tampered, b"k")
        assert caught.value.fail_info == FailInfo.BAD_ALG
        assert time.perf_counter() - started < 0.1


def test_pbmac1_key_length_too_costly_is_refused() -> None:
    # 8192 read as octets or as bits (1024 octets, 32 blocks): over the work cap at 10,000 iterations.
    costly = replace(macs.new_pbmac1(10_000), key_length=8192, derived_length=8192)
    alg = costly.algorithm_id()
    with pytest.raises(protection.ProtectionError) as caught:
        protection.mac_readings(alg)
    assert caught.value.fail_info == FailInfo.BAD_ALG


@pytest.mark.parametrize(
    "oid", ["1.2.840.113549.2.5", "1.3.14.3.2.26"], ids=["hmac-md5", "sha1-as-mac"]
)
def test_unknown_mac_algorithm_is_refused_with_bad_alg(oid: str) -> None:
    alg = replace(macs.new_password_based_mac(), mac_oid=oid).algorithm_id()
    with pytest.raises(protection.ProtectionError) as caught:
        protection.mac_readings(alg)
    assert caught.value.fail_info == FailInfo.BAD_ALG


def test_garbage_mac_parameters_are_refused_with_bad_alg() -> None:
    for oid in (macs.ID_PASSWORD_BASED_MAC, macs.ID_PBMAC1):
        for params in (None, b"\x30\x00", b"\x04\x01\x00", b"\xff"):
            with pytest.raises(protection.ProtectionError):
                protection.mac_readings(AlgorithmId(oid, params))


def test_unprotected_message_is_refused() -> None:
    message = codec.decode_message(codec.assemble_message(_header_der(), _BODY, None))
    with pytest.raises(protection.ProtectionError):
        protection.verify_protection(message, b"x")


def _header_der() -> bytes:
    return encode_header(_header())


SIGNERS = ["ecdsa-sha256", "ecdsa-sha384", "rsa-pkcs1-sha256", "rsa-pss-sha256", "rsa-pss-sha384"]


@pytest.mark.parametrize("algorithm", SIGNERS)
def test_own_signed_message_verifies_with_its_certificate(algorithm: str) -> None:
    signer = LocalSigner(algorithm)
    data = protection.protect_with_signature(_header(), _BODY, signer, (signer.certificate_der,))
    message = codec.decode_message(data)
    assert protection.verify_protection(message) == signer.certificate
    other = LocalSigner(algorithm)
    with pytest.raises(protection.ProtectionError):
        protection.verify_signature_protection(message, other.certificate)


def test_signature_algorithm_that_does_not_fit_the_key_is_bad_alg() -> None:
    signer = LocalSigner("ecdsa-sha256")
    data = protection.protect_with_signature(_header(), _BODY, signer, (signer.certificate_der,))
    message = codec.decode_message(data)
    rsa_alg = AlgorithmId("1.2.840.113549.1.1.11", b"\x05\x00")
    with pytest.raises(protection.ProtectionError) as caught:
        protection.verify_signature_protection(replace(message, header=replace(message.header, protection_alg=rsa_alg)))
    assert caught.value.fail_info == FailInfo.BAD_ALG


def test_signature_without_extra_certs_is_refused() -> None:
    signer = LocalSigner("ecdsa-sha256")
    message = codec.decode_message(protection.protect_with_signature(_header(), _BODY, signer))
    with pytest.raises(protection.ProtectionError):
        protection.verify_signature_protection(message)
    assert isinstance(protection.verify_signature_protection(message, signer.certificate), x509.Certificate)


# -- independent implementation: OpenSSL 3.0 `openssl cmp` PBM ---------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize("mac", ["hmac-sha1", "hmacWithSHA256"])
def test_openssl_cmp_pbm_request_verifies(tmp_path: Path, mac: str) -> None:
    # `openssl cmp` writes -reqout before it connects, so a closed port is enough.
    key = tmp_path / "new.key"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)], check=True)
    out = tmp_path / "ir.der"
    subprocess.run(
        ["openssl", "cmp", "-cmd", "ir", "-server", "127.0.0.1:9", "-path", "cmp", "-ref", "ref-7",
         "-secret", "pass:openssl-secret", "-newkey", str(key), "-subject", "/CN=openssl",
         "-recipient", "/CN=ztpki", "-certout", str(tmp_path / "out.pem"), "-reqout", str(out), "-mac", mac],
        capture_output=True, timeout=30,
    )
    message = codec.decode_message(out.read_bytes())
    assert message.body_type == expected_body_type(Path("x_INIT_REQ"))
    assert message.header.sender_kid == b"ref-7"
    reading = protection.verify_mac_protection(message, b"openssl-secret")
    assert isinstance(reading, macs.PasswordBasedMac)
    with pytest.raises(protection.ProtectionError):
        protection.verify_mac_protection(message, b"openssl-secreT")
