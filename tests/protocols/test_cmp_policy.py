"""The CMP server's policy from [cmp] and the profiles, on a real instance
(SoftHSM2, SQLite): implicitConfirm (RFC 4210 §5.1.1.1, RFC 9483 §4.1.1),
messageTime (RFC 9483 §3.1), unprotected genm (§4.3), the MAC iteration cap,
and raVerified POP from a trusted RA only (RFC 4211 §4, RFC 9483 §5.2)."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocols.cmp import codec, der
from protocols.cmp.bodies import FailInfo
from protocols.cmp.client import (
    BODY_IR,
    CertCredential,
    Credential,
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
from protocols.cmp.general import ID_IT_CA_CERTS
from protocols.cmp.header import encode_header
from protocols.cmp.server import CONTENT_TYPE, CmpServer
from ztpki.http.cmp import cmp_server_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ra"))
from corehelpers import World, make_world  # noqa: E402

RA_VERIFIED_POP = b"\x80\x00"  # ProofOfPossession raVerified [0] NULL (RFC 4211 §4)


def answer(server: CmpServer, request: bytes) -> codec.PkiMessage:
    status, reply, content_type = server.handle(request, path_label=None, peer="192.0.2.7")
    assert (status, content_type) == (200, CONTENT_TYPE)
    return codec.decode_message(reply)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("cmp-policy-home"))


def server_with(world: World, **cmp: object) -> CmpServer:
    """A CMP server over the world's instance with [cmp] changed as given."""
    instance = world.instance
    instance.settings = replace(instance.settings, cmp=replace(instance.settings.cmp, **cmp))
    instance.__dict__.pop("cmp_policy", None)
    return cmp_server_for(instance)


@pytest.fixture(scope="module")
def default_server(world: World) -> CmpServer:
    return server_with(world)


def mac_for(world: World, profile: str = "enb", **options: object) -> MacCredential:
    serial = world.device(profile)
    reference, secret = world.instance.credentials.create_mac(device_serial=serial)
    return MacCredential(reference, secret.encode(), **options)  # type: ignore[arg-type]


# -- implicitConfirm: instance policy and profile -------------------------------------------


def test_implicit_confirm_is_granted_when_policy_and_profile_allow(world: World, default_server: CmpServer) -> None:
    mac = mac_for(world)
    tid, request = cert_request(mac, new_key(), implicit=True)
    reply = answer(default_server, request)
    certificate = issued_certificate(reply)
    assert reply.header.implicit_confirm
    # Nothing awaits a certConf any more (RFC 9483 §4.1.1).
    late = answer(default_server, cert_conf(mac, tid, certificate))
    assert refusal(late).fail_info == {FailInfo.BAD_REQUEST}


def test_implicit_confirm_is_not_granted_unless_asked(world: World, default_server: CmpServer) -> None:
    mac = mac_for(world)
    tid, request = cert_request(mac, new_key())
    reply = answer(default_server, request)
    assert not reply.header.implicit_confirm
    assert answer(default_server, cert_conf(mac, tid, issued_certificate(reply))).body_type == "pkiconf"


def test_a_profile_without_implicit_confirm_makes_the_client_confirm(world: World, default_server: CmpServer) -> None:
    cas = world.instance.cas
    cas.profiles["enb-confirmed"] = replace(cas.profile("enb"), name="enb-confirmed", implicit_confirm=False)
    mac = mac_for(world, "enb-confirmed")
    tid, request = cert_request(mac, new_key(), implicit=True)
    reply = answer(default_server, request)
    certificate = issued_certificate(reply)
    assert not reply.header.implicit_confirm
    assert answer(default_server, cert_conf(mac, tid, certificate)).body_type == "pkiconf"


def test_the_instance_policy_can_refuse_implicit_confirm_for_every_profile(world: World) -> None:
    server = server_with(world, allow_implicit_confirm=False)
    mac = mac_for(world)
    tid, request = cert_request(mac, new_key(), implicit=True)
    reply = answer(server, request)
    assert not reply.header.implicit_confirm
    assert answer(server, cert_conf(mac, tid, issued_certificate(reply))).body_type == "pkiconf"


# -- messageTime, unprotected genm, MAC iterations ----------------------------------------


def test_message_time_tolerance_comes_from_the_configuration(world: World, default_server: CmpServer) -> None:
    moment = datetime.now(UTC) - timedelta(seconds=120)
    strict = server_with(world, message_time_tolerance_seconds=60)
    _, request = cert_request(mac_for(world), new_key(), moment=moment)
    assert refusal(answer(strict, request)).fail_info == {FailInfo.BAD_TIME}
    _, request = cert_request(mac_for(world), new_key(), moment=moment)
    issued_certificate(answer(default_server, request))  # 600 s by default


def _unprotected_ca_certs_genm(mac: MacCredential) -> bytes:
    info = der.wrap(der.TAG_SEQUENCE, der.encode_oid(ID_IT_CA_CERTS))
    body = der.wrap(0xA0 | 21, der.wrap(der.TAG_SEQUENCE, info))
    return codec.assemble_message(encode_header(request_header(mac, os.urandom(16))), body, None)


def test_unprotected_genm_follows_the_configuration(world: World, default_server: CmpServer) -> None:
    mac = mac_for(world)
    # RFC 9483 §3.2: refused by default, answered where the operator opts in.
    assert refusal(answer(default_server, _unprotected_ca_certs_genm(mac))).fail_info == {FailInfo.BAD_MESSAGE_CHECK}
    opened = server_with(world, allow_unprotected_genm=True)
    assert answer(opened, _unprotected_ca_certs_genm(mac)).body_type == "genp"


def test_mac_iteration_cap_comes_from_the_configuration(world: World, default_server: CmpServer) -> None:
    capped = server_with(world, max_mac_iterations=1000)
    for pbmac1 in (False, True):
        _, request = cert_request(mac_for(world, iterations=2000, pbmac1=pbmac1), new_key())
        assert refusal(answer(capped, request)).fail_info == {FailInfo.BAD_ALG}
        _, request = cert_request(mac_for(world, iterations=2000, pbmac1=pbmac1), new_key())
        issued_certificate(answer(default_server, request))
        _, request = cert_request(mac_for(world, iterations=500, pbmac1=pbmac1), new_key())
        issued_certificate(answer(capped, request))


# -- raVerified POP and the trusted RA ---------------------------------------------------------


def ra_credential(
    name: str = "Field RA", key: ec.EllipticCurvePrivateKey | None = None, *, expired: bool = False
) -> CertCredential:
    key = key or new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    start, end = (now - timedelta(days=2), now - timedelta(days=1)) if expired else (now - timedelta(minutes=5), now + timedelta(days=30))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertCredential(key, (certificate,))


def device_name(serial: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, serial), x509.NameAttribute(NameOID.COMMON_NAME, serial)])


def ra_verified_ir(credential: Credential, key: ec.EllipticCurvePrivateKey, subject: x509.Name) -> tuple[bytes, bytes]:
    """An ir whose POP is raVerified (RFC 4211 §4), protected by `credential`."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = cert_req_body(BODY_IR, [cert_request_der(spki, subject) + RA_VERIFIED_POP])
    tid = os.urandom(16)
    return tid, protect(credential, request_header(credential, tid), body)


@pytest.fixture(scope="module")
def ra() -> CertCredential:
    return ra_credential()


@pytest.fixture(scope="module")
def ra_server(world: World, ra: CertCredential) -> CmpServer:
    """[cmp] trusted_ra_certificates = "trusted-ras.pem" in the home: `ra`, and
    an expired RA certificate."""
    expired = ra_credential("Old RA", expired=True)
    pem = b"".join(c.chain[0].public_bytes(serialization.Encoding.PEM) for c in (ra, expired))
    (world.instance.settings.home / "trusted-ras.pem").write_bytes(pem)
    server = server_with(world, trusted_ra_certificates="trusted-ras.pem")
    server.expired_ra = expired  # type: ignore[attr-defined]
    return server


def test_ra_verified_pop_in_a_mac_protected_request_is_refused_with_badPOP(world: World, ra_server: CmpServer) -> None:
    mac = mac_for(world)
    _, request = ra_verified_ir(mac, new_key(), device_name("whatever"))
    assert refusal(answer(ra_server, request)).fail_info == {FailInfo.BAD_POP}


def test_ra_verified_pop_from_a_vendor_certificate_is_refused_with_badPOP(world: World, ra_server: CmpServer) -> None:
    serial = world.device()
    idevid = world.vendor.device(serial)
    credential = CertCredential(idevid.key, tuple(world.vendor.chain(idevid)))  # type: ignore[arg-type]
    _, request = ra_verified_ir(credential, new_key(), device_name(serial))
    assert refusal(answer(ra_server, request)).fail_info == {FailInfo.BAD_POP}


def test_ra_verified_pop_from_an_unlisted_ra_is_refused_with_badPOP(world: World, ra_server: CmpServer) -> None:
    serial = world.device()
    _, request = ra_verified_ir(ra_credential("Rogue RA"), new_key(), device_name(serial))
    assert refusal(answer(ra_server, request)).fail_info == {FailInfo.BAD_POP}


def test_ra_verified_pop_is_refused_when_no_ra_is_configured(world: World, default_server: CmpServer, ra: CertCredential) -> None:
    serial = world.device()
    _, request = ra_verified_ir(ra, new_key(), device_name(serial))
    assert refusal(answer(default_server, request)).fail_info == {FailInfo.BAD_POP}


def test_a_trusted_ra_enrols_a_registered_device_and_is_audited(
    world: World, ra_server: CmpServer, ra: CertCredential
) -> None:
    serial = world.device()
    key = new_key()
    tid, request = ra_verified_ir(ra, key, device_name(serial))
    reply = answer(ra_server, request)
    certificate = x509.load_der_x509_certificate(issued_certificate(reply))
    assert certificate.public_key() == key.public_key()
    assert certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == serial
    assert world.instance.store.certificate(certificate.serial_number).device_id == serial
    # The RA confirms under its own protection (the same transaction sender).
    confirmed = answer(ra_server, cert_conf(ra, tid, certificate.public_bytes(serialization.Encoding.DER)))
    assert confirmed.body_type == "pkiconf"
    issued = [r for r in world.instance.audit.records(device=serial) if r.outcome == "issued"]
    fingerprint = ra.chain[0].fingerprint(hashes.SHA256()).hex()[:16]
    assert len(issued) == 1 and issued[0].evidence[0] == f"trusted-ra:{fingerprint}"


def test_a_trusted_ra_is_matched_by_its_public_key(world: World, ra_server: CmpServer, ra: CertCredential) -> None:
    renewed = ra_credential("Field RA, renewed", key=ra.key)  # another certificate, the same key
    serial = world.device()
    _, request = ra_verified_ir(renewed, new_key(), device_name(serial))
    issued_certificate(answer(ra_server, request))


def test_a_trusted_ra_with_an_expired_certificate_is_refused(world: World, ra_server: CmpServer) -> None:
    serial = world.device()
    _, request = ra_verified_ir(ra_server.expired_ra, new_key(), device_name(serial))  # type: ignore[attr-defined]
    assert refusal(answer(ra_server, request)).fail_info == {FailInfo.SIGNER_NOT_TRUSTED}


def test_a_trusted_ra_cannot_enrol_an_unknown_device(ra_server: CmpServer, ra: CertCredential) -> None:
    _, request = ra_verified_ir(ra, new_key(), device_name("DEV-NOT-REGISTERED"))
    assert refusal(answer(ra_server, request)).fail_info == {FailInfo.NOT_AUTHORIZED}


def test_a_trusted_ra_cannot_enrol_a_blocked_device(world: World, ra_server: CmpServer, ra: CertCredential) -> None:
    serial = world.device()
    world.instance.registry.block(serial, "stolen")
    _, request = ra_verified_ir(ra, new_key(), device_name(serial))
    assert refusal(answer(ra_server, request)).fail_info == {FailInfo.NOT_AUTHORIZED}
    assert not [r for r in world.instance.audit.records(device=serial) if r.outcome == "issued"]


def test_a_trusted_ra_may_also_forward_a_signature_pop(world: World, ra_server: CmpServer, ra: CertCredential) -> None:
    serial = world.device()
    _, request = cert_request(ra, new_key(), subject=device_name(serial))
    issued_certificate(answer(ra_server, request))
