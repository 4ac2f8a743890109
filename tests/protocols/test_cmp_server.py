"""The CMP server on a real instance (SoftHSM2, SQLite): RFC 9483 flows on bytes."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocols.cmp import codec, der
from protocols.cmp.bodies import FailInfo
from protocols.cmp.protection import (
    verify_mac_protection,
    verify_signature_protection,
)
from protocols.cmp.server import CONTENT_TYPE, CmpServer
from ztpki.http.cmp import cmp_server_for
from ztpki.instance import Instance

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ra"))
from cmphelpers import cert_req_body, signature_pop
from corehelpers import World, make_world

# -- the client side: protocols/cmp/client.py -------------------------------------------
from protocols.cmp.client import (
    CertCredential,
    KeySigner,
    MacCredential,
    cert_conf,
    cert_request,
    issued_certificate,
    protect,
    refusal,
)
from protocols.cmp.client import request_header as _header


def answer(server: CmpServer, request: bytes) -> codec.PkiMessage:
    status, reply, content_type = server.handle(request, path_label=None, peer="192.0.2.1")
    assert (status, content_type) == (200, CONTENT_TYPE)
    return codec.decode_message(reply)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("cmp-home"))


@pytest.fixture(scope="module")
def server(world: World) -> CmpServer:
    return cmp_server_for(world.instance)


@pytest.fixture
def mac(world: World) -> MacCredential:
    serial = world.device()
    reference, secret = world.instance.credentials.create_mac(device_serial=serial)
    return MacCredential(reference, secret.encode())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- the flows ---------------------------------------------------------------------------------


def test_mac_protected_ir_gets_ip_then_certconf_gets_pkiconf(server: CmpServer, mac: MacCredential) -> None:
    key = new_key()
    tid, request = cert_request(mac, key)
    reply = answer(server, request)
    verify_mac_protection(reply, mac.secret)
    certificate = issued_certificate(reply)
    assert x509.load_der_x509_certificate(certificate).public_key() == key.public_key()
    assert reply.header.transaction_id == tid
    assert reply.body["caPubs"].isValue  # the operator root for a first enrolment
    confirmed = answer(server, cert_conf(mac, tid, certificate))
    verify_mac_protection(confirmed, mac.secret)
    assert confirmed.body_type == "pkiconf"


def test_vendor_signed_ir_gets_signed_ip_with_the_root_in_capubs(world: World, server: CmpServer) -> None:
    serial = world.device()
    idevid = world.vendor.device(serial)
    credential = CertCredential(idevid.key, tuple(world.vendor.chain(idevid)))  # type: ignore[arg-type]
    tid, request = cert_request(credential, new_key())
    reply = answer(server, request)
    signer = verify_signature_protection(reply)
    issuing = world.instance.cas.authority()
    signer.verify_directly_issued_by(issuing.certificate)  # the CMP protection certificate
    assert signer.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    certificate = issued_certificate(reply)
    ca_pubs = [x509.load_der_x509_certificate(bytes(c)) for c in reply.body["caPubs"]]
    assert ca_pubs == [issuing.chain[-1]]
    assert answer(server, cert_conf(credential, tid, certificate)).body_type == "pkiconf"


def test_untrusted_vendor_certificate_is_refused_with_signerNotTrusted(world: World, server: CmpServer) -> None:
    serial = world.device()
    idevid = world.stranger.device(serial)
    credential = CertCredential(idevid.key, tuple(world.stranger.chain(idevid)))  # type: ignore[arg-type]
    _, request = cert_request(credential, new_key())
    assert refusal(answer(server, request)).fail_info == {FailInfo.SIGNER_NOT_TRUSTED}


def test_replayed_request_is_refused_with_badSenderNonce(server: CmpServer, mac: MacCredential) -> None:
    tid, request = cert_request(mac, new_key())
    certificate = issued_certificate(answer(server, request))
    # While the ir is its transaction's last message, the same bytes are a
    # retransmission and get the same ip (test_cmp_retransmission.py); once
    # the transaction moved on, they are a replay.
    assert answer(server, cert_conf(mac, tid, certificate)).body_type == "pkiconf"
    again = answer(server, request)
    assert refusal(again).fail_info == {FailInfo.BAD_SENDER_NONCE}


def test_reused_transaction_id_is_refused_with_transactionIdInUse(server: CmpServer, mac: MacCredential) -> None:
    tid, request = cert_request(mac, new_key())
    issued_certificate(answer(server, request))
    _, second = cert_request(mac, new_key(), transaction_id=tid)
    assert refusal(answer(server, second)).fail_info == {FailInfo.TRANSACTION_ID_IN_USE}


def test_wrong_secret_is_refused_with_badMessageCheck(server: CmpServer, mac: MacCredential) -> None:
    _, request = cert_request(replace(mac, secret=b"not the secret"), new_key())
    reply = answer(server, request)
    assert refusal(reply).fail_info == {FailInfo.BAD_MESSAGE_CHECK}
    verify_signature_protection(reply)  # the secret is unknown to us: signed instead


def test_unknown_sender_kid_is_refused_with_badMessageCheck(server: CmpServer) -> None:
    _, request = cert_request(MacCredential("mac-unknown", b"secret"), new_key())
    assert refusal(answer(server, request)).fail_info == {FailInfo.BAD_MESSAGE_CHECK}


def test_stale_message_time_is_refused_with_badTime(server: CmpServer, mac: MacCredential) -> None:
    _, request = cert_request(mac, new_key(), moment=datetime.now(UTC) - timedelta(hours=1))
    assert refusal(answer(server, request)).fail_info == {FailInfo.BAD_TIME}


def test_certconf_with_a_wrong_hash_is_refused(server: CmpServer, mac: MacCredential) -> None:
    tid, request = cert_request(mac, new_key())
    issued_certificate(answer(server, request))
    reply = answer(server, cert_conf(mac, tid, b"some other certificate"))
    assert refusal(reply).fail_info == {FailInfo.BAD_CERT_ID}


def test_certconf_for_an_unknown_transaction_is_refused(server: CmpServer, mac: MacCredential) -> None:
    reply = answer(server, cert_conf(mac, os.urandom(16), b"x"))
    assert refusal(reply).fail_info == {FailInfo.BAD_REQUEST}


def test_certconf_reaches_another_worker(world: World, server: CmpServer, mac: MacCredential) -> None:
    tid, request = cert_request(mac, new_key())
    certificate = issued_certificate(answer(server, request))
    other = Instance.open(world.instance.settings.home)
    try:
        confirmed = answer(cmp_server_for(other), cert_conf(mac, tid, certificate))
    finally:
        other.close()
    assert confirmed.body_type == "pkiconf"
    # and the transaction is finished: a certConf sent again (its pkiConf was
    # lost) gets pkiConf again on any worker, one for another certificate is refused
    assert answer(server, cert_conf(mac, tid, certificate)).body_type == "pkiconf"
    assert refusal(answer(server, cert_conf(mac, tid, b"other"))).fail_info == {FailInfo.BAD_REQUEST}


def test_certconf_rejecting_the_certificate_revokes_it(world: World, server: CmpServer, mac: MacCredential) -> None:
    tid, request = cert_request(mac, new_key())
    certificate = x509.load_der_x509_certificate(issued_certificate(answer(server, request)))
    assert answer(server, cert_conf(mac, tid, b"", accept=False)).body_type == "pkiconf"
    assert world.instance.store.certificate(certificate.serial_number).status == "revoked"


def test_implicit_confirm_is_granted(server: CmpServer, mac: MacCredential) -> None:
    tid, request = cert_request(mac, new_key(), implicit=True)
    reply = answer(server, request)
    issued_certificate(reply)
    assert reply.header.implicit_confirm


def test_single_use_credential_still_confirms(world: World, server: CmpServer) -> None:
    serial = world.device()
    reference, secret = world.instance.credentials.create_mac(device_serial=serial, max_uses=1)
    mac = MacCredential(reference, secret.encode())
    tid, request = cert_request(mac, new_key())
    certificate = issued_certificate(answer(server, request))
    assert answer(server, cert_conf(mac, tid, certificate)).body_type == "pkiconf"


def test_garbage_gets_a_4xx_and_truncated_cmp_an_error(server: CmpServer, mac: MacCredential) -> None:
    status, _, content_type = server.handle(b"hello", path_label=None, peer=None)
    assert status == 400 and content_type.startswith("text/plain")
    tid, request = cert_request(mac, new_key())
    reply = answer(server, request[:-40])
    assert reply.body_type == "error" and reply.header.transaction_id == tid
    assert refusal(reply).fail_info == {FailInfo.BAD_DATA_FORMAT}


def test_unknown_path_label_is_a_404(server: CmpServer, mac: MacCredential) -> None:
    _, request = cert_request(mac, new_key())
    status, _, _ = server.handle(request, path_label="nonesuch", peer=None)
    assert status == 404


def test_cmp_level_refusals_nobody_authenticated_are_counted_not_chained(world: World, server: CmpServer, mac: MacCredential) -> None:
    # Issue 10, 6c: a bad MAC, garbage, a replay or a stranger's signed
    # certConf says nothing about who sent it; a flood must not grow the chain.
    peer = "192.0.2.77"
    before = world.instance.audit.count()
    stranger = world.stranger.device(world.device())
    credential = CertCredential(stranger.key, tuple(world.stranger.chain(stranger)))  # type: ignore[arg-type]
    for _ in range(5):
        _, request = cert_request(replace(mac, secret=b"wrong"), new_key())
        server.handle(request, path_label=None, peer=peer)
        server.handle(os.urandom(64), path_label=None, peer=peer)
        _, reply, _ = server.handle(cert_conf(credential, os.urandom(16), b"\x30\x00"), path_label=None, peer=peer)
        assert refusal(codec.decode_message(reply)).fail_info == {FailInfo.BAD_REQUEST}
    assert world.instance.audit.count() == before
    counted = {(r.reason, r.count) for r in world.instance.audit.noise.rows(source=peer)}
    assert counted == {("badMessageCheck", 5), ("badDataFormat", 5), ("badRequest", 5)}


def test_cmp_level_refusal_of_an_authenticated_sender_is_chained(world: World, server: CmpServer, mac: MacCredential) -> None:
    # The MAC verified: the refusal concerns a credential holder, recorded one by one.
    before = world.instance.audit.count()
    unknown = cert_conf(mac, os.urandom(16), b"\x30\x00")
    assert refusal(answer(server, unknown)).fail_info == {FailInfo.BAD_REQUEST}
    records = list(world.instance.audit.records(after_seq=before))
    assert [(r.protocol, r.outcome, r.reason, r.evidence) for r in records] == [
        ("cmp", "rejected", "badRequest", (f"kid:{mac.reference.encode().hex()}",)),
    ]


def test_overlong_transaction_id_is_refused_with_badRequest(server: CmpServer, mac: MacCredential) -> None:
    _, request = cert_request(mac, new_key(), transaction_id=os.urandom(65))
    assert refusal(answer(server, request)).fail_info == {FailInfo.BAD_REQUEST}


def test_subject_attribute_of_the_wrong_type_is_refused_with_badCertTemplate(server: CmpServer, mac: MacCredential) -> None:
    # CN as a BIT STRING: cryptography raises TypeError building the Name.
    attribute = der.wrap(der.TAG_SEQUENCE, der.encode_oid("2.5.4.3") + bytes.fromhex("03020041"))
    subject = der.wrap(der.TAG_SEQUENCE, der.wrap(0x31, attribute))
    key = new_key()
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    template = der.wrap(0xA5, subject) + der.wrap(0xA6, der.read_tlv(spki, 0).value(spki))
    request = der.wrap(der.TAG_SEQUENCE, der.encode_integer(0) + der.wrap(der.TAG_SEQUENCE, template))
    body = cert_req_body(0, [request + signature_pop(request, KeySigner(key))])  # type: ignore[arg-type]
    message = protect(mac, _header(mac, os.urandom(16)), body)
    assert refusal(answer(server, message)).fail_info == {FailInfo.BAD_CERT_TEMPLATE}
