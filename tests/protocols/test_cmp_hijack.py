"""Security issue: a transactionID is not an identity (RFC 4210 §5.1.1).

An attacker who reuses a victim's transactionID and public key must get a
refusal, never the victim's certificate, and nothing the attacker sends
(a rejecting certConf, or silence until the confirmation wait ends) may
revoke the victim's certificate. Every step leaves an audit record.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update

from protocols.cmp import codec
from protocols.cmp.bodies import FailInfo, PkiStatus
from protocols.cmp.client import (
    BODY_IR,
    CertCredential,
    MacCredential,
    cert_conf,
    cert_req_body,
    cert_request,
    cert_request_der,
    issued_certificate,
    protect,
    refusal,
    request_header,
)
from protocols.cmp.server import CONTENT_TYPE, CmpServer
from ra.schema import cmp_transactions
from ztpki.http.cmp import cmp_server_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ra"))
from cmphelpers import self_signed  # noqa: E402
from corehelpers import World, make_world  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("cmp-hijack"))


@pytest.fixture(scope="module")
def server(world: World) -> CmpServer:
    return cmp_server_for(world.instance)


def answer(server: CmpServer, request: bytes, peer: str) -> codec.PkiMessage:
    status, reply, content_type = server.handle(request, path_label=None, peer=peer)
    assert (status, content_type) == (200, CONTENT_TYPE)
    return codec.decode_message(reply)


def hijacking_ir(credential: CertCredential | MacCredential, transaction_id: bytes, victim_key: ec.EllipticCurvePrivateKey,
                 subject: x509.Name) -> bytes:
    """An ir for the victim's public key in the victim's transaction, without
    proof of possession (the attacker does not hold the victim's key)."""
    spki = victim_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = cert_req_body(BODY_IR, [cert_request_der(spki, subject)])
    return protect(credential, request_header(credential, transaction_id), body)


def victim_enrols(world: World, server: CmpServer, *, implicit: bool) -> tuple[bytes, ec.EllipticCurvePrivateKey, x509.Certificate]:
    serial = world.device()
    idevid = world.vendor.device(serial)
    victim = CertCredential(idevid.key, tuple(world.vendor.chain(idevid)))  # type: ignore[arg-type]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, serial)])
    tid, request = cert_request(victim, key, subject=subject, implicit=implicit)
    certificate = issued_certificate(answer(server, request, "198.51.100.1"))
    if not implicit:
        assert answer(server, cert_conf(victim, tid, certificate), "198.51.100.1").body_type == "pkiconf"
    return tid, key, x509.load_der_x509_certificate(certificate)


def expire_every_transaction(world: World, transaction_id: bytes) -> int:
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    with world.instance.engine.begin() as conn:
        conn.execute(update(cmp_transactions).where(cmp_transactions.c.transaction_id == transaction_id.hex())
                     .values(expires_at=past))
    return world.instance.cmp_transactions.expire_unconfirmed()


def audit_since(world: World, seq: int) -> list:
    return list(world.instance.audit.records(after_seq=seq))


def last_seq(world: World) -> int:
    records = list(world.instance.audit.records())
    return records[-1].seq if records else 0


@pytest.mark.parametrize("implicit", [False, True], ids=["certConf", "implicitConfirm"])
def test_self_signed_attacker_reusing_the_victims_transaction_gets_a_refusal_and_revokes_nothing(
    world: World, server: CmpServer, implicit: bool
) -> None:
    tid, victim_key, victim_certificate = victim_enrols(world, server, implicit=implicit)
    before = last_seq(world)
    attacker_peer = "203.0.113.19" if implicit else "203.0.113.9"
    attacker_key = ec.generate_private_key(ec.SECP256R1())
    attacker = CertCredential(attacker_key, (self_signed(attacker_key, "attacker"),))  # type: ignore[arg-type]

    reply = answer(server, hijacking_ir(attacker, tid, victim_key, victim_certificate.subject), attacker_peer)
    assert reply.body_type in ("ip", "error")
    status = refusal(reply)
    assert status.status == PkiStatus.REJECTION
    assert FailInfo.SIGNER_NOT_TRUSTED in status.fail_info

    # The attacker's rejecting certConf finds no transaction of the attacker's to end.
    rejected = answer(server, cert_conf(attacker, tid, victim_certificate.public_bytes(serialization.Encoding.DER),
                                         accept=False), attacker_peer)
    assert rejected.body_type == "error"
    assert world.instance.store.certificate(victim_certificate.serial_number).status == "valid"

    # Nor does the confirmation wait revoke it.
    expire_every_transaction(world, tid)
    assert world.instance.store.certificate(victim_certificate.serial_number).status == "valid"

    records = audit_since(world, before)
    assert not [r for r in records if r.outcome == "revoked"]
    # The attacker authenticated as nobody: its refusals are counted per
    # source and reason (audit noise), not chained one record each.
    counted = [row for row in world.instance.audit.noise.rows(source=attacker_peer) if row.protocol == "cmp"]
    assert sum(row.count for row in counted) == 2


def test_authenticated_attacker_reusing_the_victims_transaction_starts_its_own_and_fails_pop(
    world: World, server: CmpServer
) -> None:
    tid, victim_key, victim_certificate = victim_enrols(world, server, implicit=False)
    other = world.device()
    reference, secret = world.instance.credentials.create_mac(device_serial=other)
    attacker = MacCredential(reference, secret.encode())
    reply = answer(server, hijacking_ir(attacker, tid, victim_key, victim_certificate.subject), "203.0.113.10")
    status = refusal(reply)
    assert status.status == PkiStatus.REJECTION and FailInfo.BAD_POP in status.fail_info
    assert reply.body_type == "ip" and not reply.body["response"][0]["certifiedKeyPair"].isValue
    expire_every_transaction(world, tid)
    assert world.instance.store.certificate(victim_certificate.serial_number).status == "valid"


def test_a_retry_by_the_same_device_still_gets_its_first_answer(world: World, server: CmpServer) -> None:
    """The scoping keeps idempotency for the identity that asked: the core
    answers a second decision for the same transaction and key with the same
    certificate (a one-time credential's use is not spent twice)."""
    serial = world.device()
    reference, secret = world.instance.credentials.create_mac(device_serial=serial, max_uses=1)
    request_id = os.urandom(16).hex()
    from ra.requests import EnrolmentRequest, Operation, Protocol, SharedSecretReference

    key = ec.generate_private_key(ec.SECP256R1())
    request = EnrolmentRequest(
        protocol=Protocol.CMP, operation=Operation.INITIAL, public_key=key.public_key(), pop_verified=True,
        subject=x509.Name([]), sans=(), extensions=(), evidence=(SharedSecretReference(reference),),
        transaction_id=request_id, peer="198.51.100.2", received_at=datetime.now(timezone.utc),
    )
    first = world.instance.core.decide(request)
    second = world.instance.core.decide(request)
    assert type(first).__name__ == type(second).__name__ == "Issued"
    assert first.certificate == second.certificate  # type: ignore[union-attr]
    assert world.instance.credentials.info(reference).uses == 1


def test_rejecting_certconf_and_timeout_revocations_are_audited(world: World, server: CmpServer) -> None:
    serial = world.device()
    reference, secret = world.instance.credentials.create_mac(device_serial=serial)
    mac = MacCredential(reference, secret.encode())
    before = last_seq(world)
    tid, request = cert_request(mac, ec.generate_private_key(ec.SECP256R1()))
    rejected = x509.load_der_x509_certificate(issued_certificate(answer(server, request, "198.51.100.3")))
    answer(server, cert_conf(mac, tid, b"", accept=False), "198.51.100.3")
    tid2, request2 = cert_request(mac, ec.generate_private_key(ec.SECP256R1()))
    silent = x509.load_der_x509_certificate(issued_certificate(answer(server, request2, "198.51.100.3")))
    assert expire_every_transaction(world, tid2) == 1
    revoked = {r.serial: r for r in audit_since(world, before) if r.outcome == "revoked"}
    assert set(revoked) == {format(rejected.serial_number, "x"), format(silent.serial_number, "x")}
    assert all(r.reason == "cessationOfOperation" for r in revoked.values())
    assert world.instance.audit.verify().ok


def test_a_certificate_confirmed_in_one_transaction_is_not_revoked_by_another(world: World, server: CmpServer) -> None:
    """Defence in depth below the core's scoping: should a second transaction
    ever hold a certificate that another confirmed, its rejection or timeout
    leaves the certificate alone, and the audit says why."""
    tid, _, certificate = victim_enrols(world, server, implicit=False)
    transactions = world.instance.cmp_transactions
    other_tid = os.urandom(16)
    assert transactions.begin(other_tid, "cert:" + "ab" * 32, "ir")
    assert transactions.record_issued(
        other_tid, "cert:" + "ab" * 32, ca=None, certificate=certificate.public_bytes(serialization.Encoding.DER),
        serial=certificate.serial_number, cert_req_id=0, implicit_confirm=False,
    )
    before = last_seq(world)
    assert transactions.reject_confirmation(other_tid, "cert:" + "ab" * 32)
    assert world.instance.store.certificate(certificate.serial_number).status == "valid"
    (kept,) = [r for r in audit_since(world, before) if r.serial == format(certificate.serial_number, "x")]
    assert kept.outcome == "kept" and "confirmed in another transaction" in kept.details["why"]
