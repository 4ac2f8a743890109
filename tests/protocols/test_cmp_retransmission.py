"""Crash recovery and lost replies (issue 18): a retransmitted CMP message gets
the same answer (RFC 4210 §5.1.1, RFC 9483 §3.5), and the confirmation sweep
leaves no never-confirmed certificate valid whatever step a crash stopped."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update

from protocols.cmp import codec
from protocols.cmp.bodies import FailInfo
from protocols.cmp.client import MacCredential, cert_conf, cert_request, issued_certificate, refusal
from protocols.cmp.server import CONTENT_TYPE, CmpServer
from ra.schema import cmp_transactions
from ztpki.http.cmp import cmp_server_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ra"))
from corehelpers import World, make_world  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("cmp-retransmit"))


@pytest.fixture(scope="module")
def server(world: World) -> CmpServer:
    return cmp_server_for(world.instance)


def raw(server: CmpServer, request: bytes) -> bytes:
    status, reply, content_type = server.handle(request, path_label=None, peer="198.51.100.20")
    assert (status, content_type) == (200, CONTENT_TYPE)
    return reply


def mac_for(world: World, max_uses: int | None = None) -> MacCredential:
    reference, secret = world.instance.credentials.create_mac(device_serial=world.device(), max_uses=max_uses)
    return MacCredential(reference, secret.encode())


def test_a_certconf_resent_after_its_pkiconf_was_lost_gets_pkiconf_again(world: World, server: CmpServer) -> None:
    mac = mac_for(world)
    tid, request = cert_request(mac, ec.generate_private_key(ec.SECP256R1()))
    certificate = issued_certificate(codec.decode_message(raw(server, request)))
    confirm = cert_conf(mac, tid, certificate)
    first = raw(server, confirm)
    assert codec.decode_message(first).body_type == "pkiconf"
    # The same bytes again (the client never saw the pkiConf): the same reply.
    assert raw(server, confirm) == first
    # A new certConf for the same certificate (new senderNonce): pkiConf too.
    again = codec.decode_message(raw(server, cert_conf(mac, tid, certificate)))
    assert again.body_type == "pkiconf"
    # One for another certificate is refused, and nothing is revoked.
    other = codec.decode_message(raw(server, cert_conf(mac, tid, b"another certificate")))
    assert other.body_type == "error" and refusal(other).fail_info == {FailInfo.BAD_REQUEST}
    serial = x509.load_der_x509_certificate(certificate).serial_number
    assert world.instance.store.certificate(serial).status == "valid"


@pytest.mark.parametrize("max_uses", [None, 1], ids=["reusable", "one-time credential"])
def test_a_retransmitted_ir_gets_the_same_ip(world: World, server: CmpServer, max_uses: int | None) -> None:
    mac = mac_for(world, max_uses)
    tid, request = cert_request(mac, ec.generate_private_key(ec.SECP256R1()))
    first = raw(server, request)
    issued_certificate(codec.decode_message(first))
    assert raw(server, request) == first
    assert codec.decode_message(raw(server, cert_conf(mac, tid, issued_certificate(codec.decode_message(first))))).body_type == "pkiconf"
    # Once the transaction moved on, the ir is no longer its last message: a replay.
    late = codec.decode_message(raw(server, request))
    assert late.body_type == "error" and refusal(late).fail_info == {FailInfo.BAD_SENDER_NONCE}


def test_the_sweep_revokes_a_certificate_a_crash_left_valid_after_its_transaction_ended(
    world: World, server: CmpServer
) -> None:
    """An older sweep committed `unconfirmed`, then crashed before revoking."""
    mac = mac_for(world)
    tid, request = cert_request(mac, ec.generate_private_key(ec.SECP256R1()))
    certificate = x509.load_der_x509_certificate(issued_certificate(codec.decode_message(raw(server, request))))
    with world.instance.engine.begin() as conn:
        conn.execute(update(cmp_transactions).where(cmp_transactions.c.transaction_id == tid.hex())
                     .values(status="unconfirmed", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    assert world.instance.store.certificate(certificate.serial_number).status == "valid"
    assert world.instance.cmp_transactions.expire_unconfirmed() >= 1
    assert world.instance.store.certificate(certificate.serial_number).status == "revoked"
    # and a second sweep has nothing left to do for it
    world.instance.cmp_transactions.expire_unconfirmed()
    assert world.instance.store.certificate(certificate.serial_number).status == "revoked"
