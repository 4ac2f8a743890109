"""What an unauthenticated CMP client can cost the server (issue 10, finding 6),
on a real instance (SoftHSM2, SQLite).

6a: a genm answers at most MAX_INFO_TYPES infoTypes, each once, and is
refused without protection unless [cmp] allows it (RFC 9483 §3.2, §4.3).
6b: failed PBM/PBMAC1 MACs are counted per senderKID and per source address
in the store; past the limit the request is refused before any key
derivation, and once the window has passed the right secret works again.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from protocols.cmp import codec, der, macs
from protocols.cmp.bodies import FailInfo
from protocols.cmp.client import MacCredential, cert_request, issued_certificate, protect, refusal, request_header
from protocols.cmp.general import ID_IT_CA_CERTS, ID_IT_ROOT_CA_KEY_UPDATE, MAX_INFO_TYPES
from protocols.cmp.header import encode_header
from protocols.cmp.server import CONTENT_TYPE, CmpServer
from ra.ratelimit import RateLimiter
from ztpki.http.cmp import MacFailures, cmp_server_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ra"))
from corehelpers import World, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("cmp-cost"))


def server_with(world: World, **cmp: object) -> CmpServer:
    instance = world.instance
    instance.settings = replace(instance.settings, cmp=replace(instance.settings.cmp, **cmp))
    instance.__dict__.pop("cmp_policy", None)
    return cmp_server_for(instance)


def mac_for(world: World) -> MacCredential:
    reference, secret = world.instance.credentials.create_mac(device_serial=world.device())
    return MacCredential(reference, secret.encode())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def answer(server: CmpServer, request: bytes, peer: str = "192.0.2.50") -> codec.PkiMessage:
    status, reply, content_type = server.handle(request, path_label=None, peer=peer)
    assert (status, content_type) == (200, CONTENT_TYPE)
    return codec.decode_message(reply)


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def guarded(world: World, clock: Clock, **cmp: object) -> CmpServer:
    server = server_with(world, **cmp)
    server.mac_guard = MacFailures(RateLimiter(world.instance.engine, clock=clock), world.instance.settings.cmp)
    return server


def derivations() -> int:
    return macs._pbm_key.cache_info().misses + macs._pbkdf2_key.cache_info().misses


# -- 6b: failed MACs --------------------------------------------------------------------------


def test_failed_macs_for_one_sender_kid_lock_it_before_any_derivation_until_the_window_passes(world: World) -> None:
    clock = Clock()
    server = guarded(world, clock, mac_failures_per_kid=3, mac_failures_per_address=1000, mac_failure_window_seconds=60)
    mac = mac_for(world)
    wrong = replace(mac, secret=b"not the secret")
    for attempt in range(3):
        _, request = cert_request(wrong, new_key())
        reply = refusal(answer(server, request, peer="192.0.2.%d" % (attempt + 1)))
        assert reply.fail_info == {FailInfo.BAD_MESSAGE_CHECK} and "does not verify" in reply.texts[0]
    _, request = cert_request(mac, new_key())  # the right secret, from yet another address
    before = derivations()  # (the client above derived its key in this process too)
    locked = refusal(answer(server, request, peer="192.0.2.99"))
    assert locked.fail_info == {FailInfo.BAD_MESSAGE_CHECK} and "too many failed MACs" in locked.texts[0]
    assert derivations() == before  # refused before the key derivation
    counted = [r for r in world.instance.audit.noise.rows(source="192.0.2.99") if r.reason == "badMessageCheck"]
    assert counted and counted[0].count >= 1  # nobody authenticated: counted, not chained
    clock.now += 60
    _, request = cert_request(mac, new_key())
    issued_certificate(answer(server, request, peer="192.0.2.99"))


def test_failed_macs_from_one_address_lock_it_for_every_sender_kid(world: World) -> None:
    clock = Clock()
    server = guarded(world, clock, mac_failures_per_kid=100, mac_failures_per_address=4, mac_failure_window_seconds=60)
    peer = "198.51.100.7"
    for _ in range(2):
        _, request = cert_request(replace(mac_for(world), secret=b"guess"), new_key())
        assert refusal(answer(server, request, peer)).fail_info == {FailInfo.BAD_MESSAGE_CHECK}
    for _ in range(2):  # senderKIDs with no secret behind them count for the address too
        _, request = cert_request(MacCredential("no-such-%s" % os.urandom(4).hex(), b"guess"), new_key())
        assert refusal(answer(server, request, peer)).fail_info == {FailInfo.BAD_MESSAGE_CHECK}
    mac = mac_for(world)
    _, request = cert_request(mac, new_key())
    assert "too many failed MACs" in refusal(answer(server, request, peer)).texts[0]
    _, request = cert_request(mac, new_key())
    issued_certificate(answer(server, request, "198.51.100.8"))  # another address is not locked


def test_default_iteration_cap_is_what_real_clients_send() -> None:
    # openssl cmp: 500 (PBM); LightweightCmpRa: 10,000 (PBM and PBMAC1).
    assert macs.MAX_ITERATIONS == 10_000
    macs.new_password_based_mac(10_000)
    with pytest.raises(macs.MacParameterError):
        macs.new_password_based_mac(10_001)


# -- 6a: genm ---------------------------------------------------------------------------------


def genm(mac: MacCredential, info_types: list[str]) -> bytes:
    infos = b"".join(der.wrap(der.TAG_SEQUENCE, der.encode_oid(oid)) for oid in info_types)
    body = der.wrap(0xA0 | 21, der.wrap(der.TAG_SEQUENCE, infos))
    return protect(mac, request_header(mac, os.urandom(16)), body)


def test_genm_with_thousands_of_info_types_is_refused_with_badRequest(world: World) -> None:
    server = server_with(world)
    reply = answer(server, genm(mac_for(world), [ID_IT_CA_CERTS] * 5000))
    assert refusal(reply).fail_info == {FailInfo.BAD_REQUEST}
    assert len(codec.encode_message(reply)) < 10_000


def test_genm_answers_each_info_type_once(world: World) -> None:
    server = server_with(world)
    reply = answer(server, genm(mac_for(world), [ID_IT_CA_CERTS] * (MAX_INFO_TYPES - 1) + [ID_IT_ROOT_CA_KEY_UPDATE]))
    assert reply.body_type == "genp"
    assert [str(info["infoType"]) for info in reply.body] == [ID_IT_CA_CERTS, ID_IT_ROOT_CA_KEY_UPDATE]


def test_unprotected_genm_is_refused_by_default(world: World) -> None:
    server = server_with(world)
    assert not world.instance.cmp_policy.allow_unprotected_genm
    mac = mac_for(world)
    info = der.wrap(der.TAG_SEQUENCE, der.encode_oid(ID_IT_CA_CERTS))
    body = der.wrap(0xA0 | 21, der.wrap(der.TAG_SEQUENCE, info))

    unprotected = codec.assemble_message(encode_header(request_header(mac, os.urandom(16))), body, None)
    assert refusal(answer(server, unprotected)).fail_info == {FailInfo.BAD_MESSAGE_CHECK}
