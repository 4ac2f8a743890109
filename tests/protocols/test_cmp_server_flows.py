"""More CMP server flows: pending requests and polling (RFC 9483 §4.4), the HTTP
binding (RFC 6712), revocation, genm, and mutated input (never a traceback)."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.cmp import codec, der
from protocols.cmp.bodies import FailInfo, PkiStatus, status_info_from_asn1
from protocols.cmp.server import CONTENT_TYPE, ID_IT_CA_CERTS, CmpServer
from ztpki.http.app import create_app
from ztpki.http.cmp import cmp_server_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ra"))
from corehelpers import World, make_world  # noqa: E402
from test_cmp_server import (  # noqa: E402
    CertCredential,
    MacCredential,
    _header,
    answer,
    cert_conf,
    cert_request,
    issued_certificate,
    new_key,
    protect,
    refusal,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("cmp-flows"))


@pytest.fixture(scope="module")
def server(world: World) -> CmpServer:
    return cmp_server_for(world.instance)


def mac_for(world: World, profile: str = "enb") -> MacCredential:
    serial = world.device(profile=profile)
    reference, secret = world.instance.credentials.create_mac(device_serial=serial)
    return MacCredential(reference, secret.encode())


def poll_req(credential: MacCredential, transaction_id: bytes) -> bytes:
    body = der.wrap(0xA0 | 25, der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, der.encode_integer(0))))
    return protect(credential, _header(credential, transaction_id), body)


def test_pending_request_is_polled_until_approved(world: World, server: CmpServer) -> None:
    cas = world.instance.cas
    cas.profiles["enb-manual"] = dataclasses.replace(cas.profiles["enb"], name="enb-manual", approval="manual")
    mac = mac_for(world, "enb-manual")
    tid, request = cert_request(mac, new_key())
    waiting = answer(server, request)
    assert waiting.body_type == "ip"
    assert status_info_from_asn1(waiting.body["response"][0]["status"]).status == PkiStatus.WAITING
    polled = answer(server, poll_req(mac, tid))
    assert polled.body_type == "pollRep"
    assert int(polled.body[0]["checkAfter"]) > 0
    (record,) = [r for r in world.instance.pending.list(status="pending") if r.transaction_key.startswith("cmp:" + tid.hex() + "@")]
    world.instance.pending.approve(record.id, "admin")
    ready = answer(server, poll_req(mac, tid))
    certificate = issued_certificate(ready)
    assert answer(server, cert_conf(mac, tid, certificate)).body_type == "pkiconf"


def test_blocked_device_is_refused_with_notAuthorized(world: World, server: CmpServer) -> None:
    serial = world.device()
    reference, secret = world.instance.credentials.create_mac(device_serial=serial)
    world.instance.registry.block(serial, "stolen")
    _, request = cert_request(MacCredential(reference, secret.encode()), new_key())
    assert refusal(answer(server, request)).fail_info == {FailInfo.NOT_AUTHORIZED}


def test_vendor_signed_rr_for_someone_elses_certificate_is_refused(world: World, server: CmpServer) -> None:
    serial = world.device()
    idevid = world.vendor.device(serial)
    credential = CertCredential(idevid.key, tuple(world.vendor.chain(idevid)))  # type: ignore[arg-type]
    tid, request = cert_request(credential, new_key(), implicit=True)
    issued = x509.load_der_x509_certificate(issued_certificate(answer(server, request)))
    # rr signed with the vendor certificate, not the certificate to revoke (RFC 9483 §4.2)
    serial_der = der.encode_integer(issued.serial_number)
    template = der.wrap(0x81, der.read_tlv(serial_der, 0).value(serial_der))  # [1] IMPLICIT serialNumber
    body = der.wrap(0xAB, der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, template))))
    reply = answer(server, protect(credential, _header(credential, os.urandom(16)), body))
    assert reply.body_type == "rp"
    status = status_info_from_asn1(reply.body["status"][0])
    assert status.status == PkiStatus.REJECTION and status.fail_info == {FailInfo.SIGNER_NOT_TRUSTED}
    assert world.instance.store.certificate(issued.serial_number).status == "valid"


def test_genm_cacerts_answers_the_chain(world: World, server: CmpServer) -> None:
    mac = mac_for(world)
    info = der.wrap(der.TAG_SEQUENCE, der.encode_oid(ID_IT_CA_CERTS))
    body = der.wrap(0xA0 | 21, der.wrap(der.TAG_SEQUENCE, info))
    reply = answer(server, protect(mac, _header(mac, os.urandom(16)), body))
    assert reply.body_type == "genp"
    value = bytes(reply.body[0]["infoValue"])
    outer = der.read_tlv(value, 0)
    certs = [x509.load_der_x509_certificate(c.slice(value)) for c in der.children(value, outer)]
    assert tuple(certs) == world.instance.cas.authority().chain


def test_http_binding(world: World) -> None:
    client = create_app(world.instance).test_client()
    mac = mac_for(world)
    _, request = cert_request(mac, new_key())
    wrong_type = client.post("/.well-known/cmp", data=request, content_type="application/octet-stream")
    assert wrong_type.status_code == 415
    garbage = client.post("/.well-known/cmp", data=b"hello", content_type=CONTENT_TYPE)
    assert garbage.status_code == 400 and garbage.mimetype == "text/plain"
    ok = client.post("/.well-known/cmp", data=request, content_type=CONTENT_TYPE)
    assert ok.status_code == 200 and ok.mimetype == CONTENT_TYPE
    issued_certificate(codec.decode_message(ok.data))
    ca = world.instance.cas.default_ca
    _, labelled = cert_request(mac_for(world), new_key())
    by_ca = client.post(f"/.well-known/cmp/p/{ca}", data=labelled, content_type=CONTENT_TYPE)
    assert by_ca.status_code == 200
    issued_certificate(codec.decode_message(by_ca.data))
    assert client.post("/.well-known/cmp/p/nonesuch", data=labelled, content_type=CONTENT_TYPE).status_code == 404
    assert client.post("/.well-known/cmp/elsewhere", data=labelled, content_type=CONTENT_TYPE).status_code == 404


@pytest.fixture(scope="module")
def valid_request(world: World) -> bytes:
    _, request = cert_request(MacCredential("mac-fuzz", b"secret"), new_key())
    return request


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_requests_get_a_cmp_error_or_a_4xx(server: CmpServer, valid_request: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(valid_request) - 1))
    replacement = data.draw(st.binary(min_size=0, max_size=4))
    mutated = valid_request[:position] + replacement + valid_request[position + 1 :]
    status, reply, content_type = server.handle(mutated, path_label=None, peer=None)
    if status == 200:
        assert content_type == CONTENT_TYPE
        message = codec.decode_message(reply)
        assert message.body_type == "error"
    else:
        assert 400 <= status < 500 and content_type.startswith("text/plain")


def test_signed_replies_carry_the_cmp_protection_certificate_and_its_chain(world: World, server: CmpServer) -> None:
    _, request = cert_request(MacCredential("mac-nobody", b"x"), new_key())
    reply = answer(server, request)
    first = x509.load_der_x509_certificate(reply.extra_certs_der[0])
    issuing = world.instance.cas.authority()
    first.verify_directly_issued_by(issuing.certificate)
    eku = first.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")]  # id-kp-cmcRA
    assert reply.extra_certs[1:] == issuing.chain
    # made once: another server object (worker) uses the same certificate
    again = answer(cmp_server_for(world.instance), cert_request(MacCredential("mac-nobody", b"x"), new_key())[1])
    assert again.extra_certs_der[0] == reply.extra_certs_der[0]
    assert reply.header.sender_kid == first.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert first.public_bytes(serialization.Encoding.DER) == reply.extra_certs_der[0]


def test_pbmac1_protected_ir_gets_a_pbmac1_reply(world: World, server: CmpServer) -> None:
    from protocols.cmp import macs
    from protocols.cmp.protection import protect_with_mac, verify_mac_protection

    mac = mac_for(world)
    key = new_key()
    tid, request = cert_request(mac, key)
    # re-protect the same body with PBMAC1 (RFC 9481 §6.1.2)
    message = codec.decode_message(request)
    header = dataclasses.replace(message.header, sender_nonce=os.urandom(16))
    request = protect_with_mac(header, message.body_der, mac.secret, macs.new_pbmac1(iterations=1000))
    reply = answer(server, request)
    assert verify_mac_protection(reply, mac.secret).algorithm_id().oid == macs.ID_PBMAC1
    issued_certificate(reply)


def test_cmp2021_certconf_with_hashalg(world: World, server: CmpServer) -> None:
    from cryptography.hazmat.primitives import hashes

    mac = mac_for(world)
    tid, request = cert_request(mac, new_key())
    certificate = issued_certificate(answer(server, request))
    digest = hashes.Hash(hashes.SHA384())
    digest.update(certificate)
    sha384 = der.wrap(der.TAG_SEQUENCE, der.encode_oid("2.16.840.1.101.3.4.2.2"))
    status = der.wrap(der.TAG_OCTET_STRING, digest.finalize()) + der.encode_integer(0) + der.wrap(0xA0, sha384)
    body = der.wrap(0xA0 | 24, der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, status)))
    header = dataclasses.replace(_header(mac, tid), pvno=3)
    confirmed = answer(server, protect(mac, header, body))
    assert confirmed.body_type == "pkiconf" and confirmed.header.pvno == 3


def test_certificate_never_confirmed_is_revoked(world: World, server: CmpServer) -> None:
    from sqlalchemy import update

    from ra.schema import cmp_transactions

    mac = mac_for(world)
    tid, request = cert_request(mac, new_key())
    certificate = issued_certificate(answer(server, request))
    serial = x509.load_der_x509_certificate(certificate).serial_number
    with world.instance.engine.begin() as conn:
        conn.execute(
            update(cmp_transactions)
            .where(cmp_transactions.c.transaction_id == tid.hex())
            .values(expires_at=cmp_transactions.c.created_at)
        )
    assert world.instance.cmp_transactions.expire_unconfirmed() >= 1
    assert world.instance.store.certificate(serial).status == "revoked"
    assert refusal(answer(server, cert_conf(mac, tid, certificate))).fail_info == {FailInfo.BAD_REQUEST}


@pytest.mark.parametrize("info_type", ["1.3.6.1.5.5.7.4.18", "1.3.6.1.5.5.7.4.19"])
def test_genm_root_key_update_and_template_answer_without_value(world: World, server: CmpServer, info_type: str) -> None:
    mac = mac_for(world)
    body = der.wrap(0xA0 | 21, der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, der.encode_oid(info_type))))
    reply = answer(server, protect(mac, _header(mac, os.urandom(16)), body))
    assert reply.body_type == "genp"
    assert str(reply.body[0]["infoType"]) == info_type and not reply.body[0]["infoValue"].isValue


def test_genm_with_only_unknown_info_types_is_refused(world: World, server: CmpServer) -> None:
    mac = mac_for(world)
    body = der.wrap(0xA0 | 21, der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, der.encode_oid("1.2.3.4"))))
    reply = answer(server, protect(mac, _header(mac, os.urandom(16)), body))
    assert refusal(reply).fail_info == {FailInfo.BAD_REQUEST}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.binary(max_size=600))
def test_random_bytes_get_a_cmp_error_or_a_4xx(server: CmpServer, body: bytes) -> None:
    status, reply, content_type = server.handle(body, path_label=None, peer=None)
    if status == 200:
        assert codec.decode_message(reply).body_type == "error"
    else:
        assert 400 <= status < 500 and content_type.startswith("text/plain")


def _kur_with_old_cert_id(credential: CertCredential, new: ec.EllipticCurvePrivateKey, serial: int) -> bytes:
    from cmphelpers import cert_req_body, signature_pop

    from test_cmp_server import KeySigner

    spki = new.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    template = der.wrap(0xA6, der.read_tlv(spki, 0).value(spki))
    issuer = der.wrap(0xA4, credential.chain[0].issuer.public_bytes())
    old_cert_id = der.wrap(der.TAG_SEQUENCE, issuer + der.encode_integer(serial))
    control = der.wrap(der.TAG_SEQUENCE, der.encode_oid("1.3.6.1.5.5.7.5.1.5") + old_cert_id)
    request = der.wrap(
        der.TAG_SEQUENCE, der.encode_integer(0) + der.wrap(der.TAG_SEQUENCE, template) + der.wrap(der.TAG_SEQUENCE, control)
    )
    body = cert_req_body(7, [request + signature_pop(request, KeySigner(new))])  # type: ignore[arg-type]
    return protect(credential, _header(credential, os.urandom(16)), body)


def test_kur_old_cert_id_must_name_the_protecting_certificate(world: World, server: CmpServer) -> None:
    serial = world.device()
    idevid = world.vendor.device(serial)
    vendor_credential = CertCredential(idevid.key, tuple(world.vendor.chain(idevid)))  # type: ignore[arg-type]
    key = new_key()
    _, request = cert_request(vendor_credential, key, implicit=True)
    current = x509.load_der_x509_certificate(issued_certificate(answer(server, request)))
    operator = CertCredential(key, (current,))
    wrong = answer(server, _kur_with_old_cert_id(operator, new_key(), current.serial_number + 1))
    assert refusal(wrong).fail_info == {FailInfo.BAD_CERT_ID}
    right = answer(server, _kur_with_old_cert_id(operator, new_key(), current.serial_number))
    assert right.body_type == "kup"
    issued_certificate(right)


def test_two_workers_racing_on_one_certconf_confirm_once(world: World) -> None:
    from concurrent.futures import ThreadPoolExecutor

    transactions = world.instance.cmp_transactions
    tid = os.urandom(16)
    assert transactions.begin(tid, "kid:00", "ir")
    assert not transactions.begin(tid, "kid:00", "ir")  # transactionIdInUse
    assert transactions.record_issued(tid, "kid:00", ca=None, certificate=b"c", serial=1, cert_req_id=0,
                                      implicit_confirm=False)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: transactions.confirm(tid, "kid:00"), range(8)))
    assert results.count(True) == 1
    assert not transactions.first_use_of_nonce(b"n" * 16) or not transactions.first_use_of_nonce(b"n" * 16)


def _crl_genm(mac: MacCredential, this_update: str | None) -> bytes:
    source = der.wrap(0xA1, der.wrap(0xA4, der.wrap(der.TAG_SEQUENCE, b"")))  # issuer [1] GeneralNames
    status = source + (der.wrap(0x18, this_update.encode()) if this_update else b"")
    value = der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, status))
    info = der.wrap(der.TAG_SEQUENCE, der.encode_oid("1.3.6.1.5.5.7.4.22") + value)
    body = der.wrap(0xA0 | 21, der.wrap(der.TAG_SEQUENCE, info))
    return protect(mac, _header(mac, os.urandom(16)), body)


def test_genm_crl_status_list_gets_the_current_crl_unless_the_client_has_it(world: World, server: CmpServer) -> None:
    mac = mac_for(world)
    reply = answer(server, _crl_genm(mac, "20000101000000Z"))
    assert reply.body_type == "genp" and str(reply.body[0]["infoType"]) == "1.3.6.1.5.5.7.4.23"
    crls = bytes(reply.body[0]["infoValue"])
    crl = x509.load_der_x509_crl(der.children(crls, der.read_tlv(crls, 0))[0].slice(crls))
    assert crl.issuer == world.instance.cas.authority().certificate.subject
    current = answer(server, _crl_genm(mac, crl.last_update_utc.strftime("%Y%m%d%H%M%SZ")))
    assert not current.body[0]["infoValue"].isValue
