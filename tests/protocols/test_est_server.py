"""The EST server on a real instance (SoftHSM2, SQLite): RFC 7030 flows on
bytes plus transport facts, and through the Flask binding."""

from __future__ import annotations

import base64
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.est import codec
from protocols.est.http import TransportFacts
from protocols.est.server import EstReply, EstRequest, EstServer
from ra.core import CorePolicy
from ra.requests import Rejected, RejectReason
from ztpki.http.app import create_app
from ztpki.http.est import est_server_for
from ztpki.http.est import csrattrs_of_profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ra"))
from corehelpers import World, make_world
from esthelpers import basic, certs_of, make_csr, multipart_parts, new_key

CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    world = make_world(tmp_path_factory.mktemp("est-home"))
    # The flows and the fuzz send many requests per device within a minute.
    world.instance.core.policy = CorePolicy(per_device_limit=10**6, global_limit=10**6)
    profiles = world.instance.cas.profiles
    profiles["ucpe-manual"] = dataclasses.replace(profiles["ucpe"], name="ucpe-manual", approval="manual")
    profiles["ucpe-named"] = dataclasses.replace(profiles["ucpe"], name="ucpe-named", dns_names=("{serial}.ucpe.example",))
    return world


@pytest.fixture(scope="module")
def server(world: World) -> EstServer:
    return est_server_for(world.instance)


@pytest.fixture
def device(world: World) -> str:
    return world.device(profile="ucpe")


@pytest.fixture
def password(world: World, device: str) -> str:
    username, secret = world.instance.credentials.create_password(device_serial=device)
    return basic(username, secret)


def enrol(server: EstServer, body: bytes, *, operation: str = "simpleenroll", **facts: Any) -> EstReply:
    facts.setdefault("over_tls", True)
    return server.handle(EstRequest(
        operation=operation, method="POST", body=body, content_type="application/pkcs10", peer="192.0.2.7", **facts
    ))


def issued(reply: EstReply) -> x509.Certificate:
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == CERTS_ONLY
    assert reply.headers["Content-Transfer-Encoding"] == "base64"
    (certificate,) = certs_of(reply.body)
    return certificate


def certificates_of(world: World, serial: str) -> list[Any]:
    return list(world.instance.store.certificates(device_id=serial))


def refused(reply: EstReply, status: int) -> str:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.body.strip()
    return reply.body.decode()


def last_noise(world: World) -> Any:
    """The refusal counted last: refusals nobody authenticated are counted,
    not chained (issue 10, 6c)."""
    return max(world.instance.audit.noise.rows(), key=lambda row: row.last_seen)


def csr_b64(key: Any = None, **options: Any) -> bytes:
    return codec.b64_lines(make_csr(key, **options))


# -- distribution -----------------------------------------------------------------------------


def test_cacerts_is_the_issuing_chain_up_to_the_root_in_64_character_lines(world: World, server: EstServer) -> None:
    reply = server.handle(EstRequest(operation="cacerts", method="GET", user_agent="curl/7.88.1", over_tls=True))
    assert reply.status == 200
    assert (reply.headers["Content-Type"], reply.headers["Content-Transfer-Encoding"]) == (CERTS_ONLY, "base64")
    chain = world.instance.cas.authority().chain
    assert len(chain) >= 2 and chain[-1].subject == chain[-1].issuer
    assert set(certs_of(reply.body)) == set(chain)
    lines = reply.body.split(b"\r\n")
    assert len(lines) > 3 and lines[-1] == b""
    assert all(len(line) == 64 for line in lines[:-2]) and 0 < len(lines[-2]) <= 64


def test_a_client_without_user_agent_gets_base64_without_line_breaks(world: World, server: EstServer) -> None:
    # strongSwan 5.9.8's pki --est: no User-Agent, and it cannot decode line breaks.
    reply = server.handle(EstRequest(operation="cacerts", method="GET", over_tls=True))
    assert reply.status == 200 and b"\n" not in reply.body and b"\r" not in reply.body
    assert set(certs_of(reply.body)) == set(world.instance.cas.authority().chain)


def test_a_label_names_an_issuing_ca_or_a_profile_and_an_unknown_label_is_404(world: World, server: EstServer) -> None:
    ca = world.instance.cas.authority().name
    assert server.handle(EstRequest(operation="cacerts", label=ca, over_tls=True)).status == 200
    assert server.handle(EstRequest(operation="cacerts", label="ucpe", over_tls=True)).status == 200
    refused(server.handle(EstRequest(operation="cacerts", label="no-such-label", over_tls=True)), 404)


def test_csrattrs_asks_for_channel_binding_and_the_profile_key(server: EstServer) -> None:
    reply = server.handle(EstRequest(operation="csrattrs", method="GET", over_tls=True))
    assert reply.status == 200
    assert (reply.headers["Content-Type"], reply.headers["Content-Transfer-Encoding"]) == ("application/csrattrs", "base64")
    items = codec.parse_csrattrs(base64.b64decode(reply.body))
    assert codec.CHALLENGE_PASSWORD in items
    # ucpe's first key type is ec-p256: id-ecPublicKey with prime256v1.
    assert codec.CsrAttribute(codec.ID_EC_PUBLIC_KEY, (codec.oid_der("1.2.840.10045.3.1.7"),)) in items
    assert NameOID.SERIAL_NUMBER.dotted_string in items


def test_csrattrs_of_an_rsa_profile_asks_for_the_rsa_key_size(world: World) -> None:
    items = codec.parse_csrattrs(csrattrs_of_profile(world.instance.cas.profile("phone")))
    assert codec.CsrAttribute(codec.RSA_ENCRYPTION, (codec.integer_der(2048),)) in items


def test_csrattrs_is_204_when_the_route_has_none(world: World) -> None:
    bare = EstServer(decide=world.instance.core.decide, ca_certificates=lambda route: ())
    reply = bare.handle(EstRequest(operation="csrattrs", method="GET", over_tls=True))
    assert (reply.status, reply.body) == (204, b"")


# -- simpleenroll ------------------------------------------------------------------------------


def test_simpleenroll_with_an_enrolment_password_returns_the_certificate(world: World, server: EstServer, device: str, password: str) -> None:
    key = new_key()
    certificate = issued(enrol(server, csr_b64(key), authorization=password))
    assert certificate.public_key() == key.public_key()
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device
    certificate.verify_directly_issued_by(world.instance.cas.authority().certificate)
    assert [r.serial for r in certificates_of(world, device)] == [certificate.serial_number]


def test_simpleenroll_with_the_idevid_as_tls_client_certificate(world: World, server: EstServer, device: str) -> None:
    certificate = issued(enrol(server, csr_b64(), client_chain=world.idevid(device)))
    assert len(certificates_of(world, device)) == 1
    assert certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == device


def test_the_same_request_resent_gets_the_same_certificate_not_a_second(world: World, server: EstServer, device: str, password: str) -> None:
    body = csr_b64()
    first = issued(enrol(server, body, authorization=password))
    # The same CSR re-encoded differently is still the same request.
    again = issued(enrol(server, base64.b64encode(base64.b64decode(body)), authorization=password))
    assert again == first
    assert len(certificates_of(world, device)) == 1


def test_a_one_time_password_is_refused_for_a_second_csr_but_its_own_request_may_be_resent(world: World, server: EstServer, device: str) -> None:
    username, secret = world.instance.credentials.create_password(device_serial=device, max_uses=1)
    body = csr_b64()
    first = issued(enrol(server, body, authorization=basic(username, secret)))
    assert issued(enrol(server, body, authorization=basic(username, secret))) == first
    reply = enrol(server, csr_b64(), authorization=basic(username, secret))
    refused(reply, 401)
    assert reply.headers["WWW-Authenticate"] == 'Basic realm="ztpki EST"'
    assert len(certificates_of(world, device)) == 1


def test_a_wrong_password_is_401_with_www_authenticate_audited_and_nothing_issued(world: World, server: EstServer, device: str) -> None:
    username, _ = world.instance.credentials.create_password(device_serial=device)
    reply = enrol(server, csr_b64(), authorization=basic(username, "not-the-password"))
    assert "bad_credential" in refused(reply, 401)
    assert reply.headers["WWW-Authenticate"] == 'Basic realm="ztpki EST"'
    # The reply does not tell a wrong password from an unknown username.
    assert enrol(server, csr_b64(), authorization=basic("est-nobody", "x")).body == reply.body
    chained = world.instance.audit.count()
    record = last_noise(world)
    assert (record.protocol, record.reason) == ("est", "bad_credential") and record.count >= 2
    enrol(server, csr_b64(), authorization=basic(username, "not-the-password"))
    assert world.instance.audit.count() == chained and last_noise(world).count == record.count + 1
    assert certificates_of(world, device) == []


def test_no_credential_is_401_with_www_authenticate_and_audited(world: World, server: EstServer) -> None:
    reply = enrol(server, csr_b64())
    refused(reply, 401)
    assert reply.headers["WWW-Authenticate"] == 'Basic realm="ztpki EST"'
    record = last_noise(world)
    assert (record.protocol, record.reason) == ("est", "no_credentials") and '"simpleenroll"' in record.sample


def test_a_malformed_authorization_header_is_401(server: EstServer) -> None:
    refused(enrol(server, csr_b64(), authorization="Basic %%%"), 401)
    refused(enrol(server, csr_b64(), authorization="Bearer abc"), 401)


def test_a_blocked_device_is_403_and_nothing_issued(world: World, server: EstServer, device: str) -> None:
    world.instance.registry.block(device, "stolen")
    assert "device_blocked" in refused(enrol(server, csr_b64(), client_chain=world.idevid(device)), 403)
    assert certificates_of(world, device) == []


def test_an_untrusted_vendor_chain_is_403_and_nothing_issued(world: World, server: EstServer, device: str) -> None:
    reply = enrol(server, csr_b64(), client_chain=world.idevid(device, world.stranger))
    assert "untrusted_certificate" in refused(reply, 403)
    assert certificates_of(world, device) == []


def test_a_csr_asking_for_ca_true_is_400_and_nothing_issued(world: World, server: EstServer, device: str, password: str) -> None:
    body = csr_b64(extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)])
    assert "CA:TRUE" in refused(enrol(server, body, authorization=password), 400)
    assert certificates_of(world, device) == []


def test_a_san_naming_another_device_is_400_and_nothing_issued(world: World, server: EstServer, device: str, password: str) -> None:
    body = csr_b64(sans=[x509.UniformResourceIdentifier("urn:dev:serial:someone-else")])
    assert "does not name device" in refused(enrol(server, body, authorization=password), 400)
    assert certificates_of(world, device) == []


def test_a_dns_name_under_another_domain_is_400_and_nothing_issued(world: World, server: EstServer, device: str, password: str) -> None:
    # Issue 10 finding 2: the serial as first label was enough, whatever the domain.
    for foreign in (f"{device.lower()}.evil.example", f"{device.lower()}.ucpe.example"):
        body = csr_b64(sans=[x509.DNSName(foreign)])
        assert "does not name device" in refused(enrol(server, body, authorization=password), 400)
    assert certificates_of(world, device) == []
    last = list(world.instance.audit.records(device=device))[-1]
    assert (last.outcome, last.reason) == ("rejected", "policy_violation")


def test_the_dns_name_the_profile_gives_the_device_is_kept_in_its_canonical_spelling(world: World, server: EstServer) -> None:
    device = world.device(profile="ucpe-named")
    username, secret = world.instance.credentials.create_password(device_serial=device)
    san = x509.DNSName(f"{device.upper()}.UCPE.example")
    certificate = issued(enrol(server, csr_b64(sans=[san]), authorization=basic(username, secret)))
    kept = list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    assert kept == [x509.DNSName(f"{device.lower()}.ucpe.example")]


def test_a_csr_whose_signature_fails_is_400_bad_pop(world: World, server: EstServer, device: str, password: str) -> None:
    der = bytearray(make_csr())
    der[-5] ^= 1
    assert "bad_pop" in refused(enrol(server, base64.b64encode(bytes(der)), authorization=password), 400)
    assert certificates_of(world, device) == []


@pytest.mark.parametrize("body", [b"*** not base64 ***", base64.b64encode(b"\x30\x03\x02\x01\x00"), b""])
def test_a_malformed_body_is_400_with_a_text_reason_and_audited(world: World, server: EstServer, password: str, body: bytes) -> None:
    refused(enrol(server, body, authorization=password), 400)
    record = last_noise(world)
    assert (record.protocol, record.reason) == ("est", "bad_request") and '"status": 400' in record.sample


def test_an_oversized_body_is_413(server: EstServer, password: str) -> None:
    refused(enrol(server, b"A" * (codec.MAX_BODY_BYTES + 4), authorization=password), 413)


def test_an_unknown_operation_is_404_and_a_wrong_method_405(server: EstServer) -> None:
    refused(server.handle(EstRequest(operation="fullcmc", method="POST", over_tls=True)), 404)
    reply = server.handle(EstRequest(operation="simpleenroll", method="GET", over_tls=True))
    refused(reply, 405)
    assert reply.headers["Allow"] == "POST"
    refused(server.handle(EstRequest(operation="cacerts", method="POST", over_tls=True)), 405)
    assert server.handle(EstRequest(operation="cacerts", method="HEAD", over_tls=True)).status == 200


# -- channel binding (RFC 7030 §3.5) ----------------------------------------------------------------


def test_a_challenge_password_matching_tls_unique_is_accepted(server: EstServer, password: str) -> None:
    tls_unique = bytes(range(12))
    body = csr_b64(challenge_password=base64.b64encode(tls_unique))
    issued(enrol(server, body, authorization=password, tls_unique=tls_unique))


def test_a_challenge_password_not_matching_tls_unique_is_403_and_nothing_issued(world: World, server: EstServer, device: str, password: str) -> None:
    body = csr_b64(challenge_password=base64.b64encode(b"another session"))
    assert "tls-unique" in refused(enrol(server, body, authorization=password, tls_unique=b"this session"), 403)
    assert certificates_of(world, device) == []


def test_channel_binding_is_never_required_without_tls_unique(server: EstServer, password: str) -> None:
    # TLS 1.3 or a terminating proxy: nothing to bind to.
    issued(enrol(server, csr_b64(challenge_password=b"anything"), authorization=password))
    issued(enrol(server, csr_b64(), authorization=password, tls_unique=b"session"))


# -- simplereenroll (RFC 7030 §4.2.2) ------------------------------------------------------------------


def _first_certificate(world: World, server: EstServer, device: str) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    current = issued(enrol(server, csr_b64(), client_chain=world.idevid(device)))
    return current, (current,) + world.instance.cas.authority().chain


def test_simplereenroll_with_the_current_certificate_renews_it_with_a_new_key(world: World, server: EstServer, device: str) -> None:
    current, chain = _first_certificate(world, server, device)
    key = new_key()
    reply = enrol(server, csr_b64(key, subject=current.subject), operation="simplereenroll", client_chain=chain)
    renewed = issued(reply)
    assert renewed.public_key() == key.public_key() != current.public_key()
    assert renewed.subject == current.subject
    assert renewed.serial_number != current.serial_number
    assert len(certificates_of(world, device)) == 2


def test_simplereenroll_with_another_subject_is_400(world: World, server: EstServer, device: str) -> None:
    _, chain = _first_certificate(world, server, device)
    body = csr_b64(cn="someone else")
    assert "subject" in refused(enrol(server, body, operation="simplereenroll", client_chain=chain), 400)
    assert len(certificates_of(world, device)) == 1


def test_simplereenroll_with_other_sans_is_400(world: World, server: EstServer, device: str) -> None:
    current, chain = _first_certificate(world, server, device)
    body = csr_b64(subject=current.subject, sans=[x509.DNSName(f"{device.lower()}.ucpe.example")])
    assert "SAN" in refused(enrol(server, body, operation="simplereenroll", client_chain=chain), 400)


def test_simplereenroll_without_a_client_certificate_is_403(server: EstServer, password: str) -> None:
    refused(enrol(server, csr_b64(), operation="simplereenroll", authorization=password), 403)


def test_simplereenroll_with_a_certificate_without_clientauth_is_403(world: World, server: EstServer, device: str) -> None:
    idevid = world.idevid(device)
    assert not any(
        isinstance(e.value, x509.ExtendedKeyUsage) and ExtendedKeyUsageOID.CLIENT_AUTH in e.value for e in idevid[0].extensions
    )
    body = csr_b64(subject=idevid[0].subject)
    assert "clientAuth" in refused(enrol(server, body, operation="simplereenroll", client_chain=idevid), 403)


def test_simplereenroll_with_a_revoked_certificate_is_403_and_nothing_issued(world: World, server: EstServer, device: str) -> None:
    current, chain = _first_certificate(world, server, device)
    world.instance.revocations.revoke(current.serial_number, "keyCompromise")
    reply = enrol(server, csr_b64(subject=current.subject), operation="simplereenroll", client_chain=chain)
    assert "certificate_revoked" in refused(reply, 403)
    assert len(certificates_of(world, device)) == 1


# -- serverkeygen (RFC 7030 §4.4) -----------------------------------------------------------------------


def test_serverkeygen_returns_a_key_matching_the_certificate_and_keeps_no_copy(world: World, server: EstServer, device: str, password: str) -> None:
    csr_key = new_key()
    reply = enrol(server, csr_b64(csr_key), operation="serverkeygen", authorization=password)
    assert reply.status == 200, reply.body
    parts = multipart_parts(reply.headers["Content-Type"], reply.body)
    assert [content_type for content_type, _ in parts] == ["application/pkcs8", CERTS_ONLY]
    key = serialization.load_der_private_key(parts[0][1], None)
    (certificate,) = certs_of(base64.b64encode(parts[1][1]))
    assert certificate.public_key() == key.public_key() != csr_key.public_key()
    assert len(certificates_of(world, device)) == 1
    # Nowhere under the instance home: not the PKCS#8, not the private scalar.
    scalar = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    home = Path(world.instance.settings.home)
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert parts[0][1] not in data and scalar not in data, path


def test_serverkeygen_under_manual_approval_is_refused_and_leaves_nothing_to_approve(world: World, server: EstServer) -> None:
    # The key is not kept: an approval later could only certify a key nobody holds.
    device = world.device(profile="ucpe-manual")
    username, secret = world.instance.credentials.create_password(device_serial=device)
    reply = enrol(server, csr_b64(), operation="serverkeygen", authorization=basic(username, secret))
    assert "policy_violation" in refused(reply, 400)
    assert world.instance.pending.list(status="pending", device=device) == []
    assert certificates_of(world, device) == []


def test_serverkeygen_with_a_bad_csr_signature_is_400(world: World, server: EstServer, device: str, password: str) -> None:
    der = bytearray(make_csr())
    der[-5] ^= 1
    refused(enrol(server, base64.b64encode(bytes(der)), operation="serverkeygen", authorization=password), 400)
    assert certificates_of(world, device) == []


# -- manual approval: 202, then the certificate once ----------------------------------------------------------


def test_pending_request_gets_202_then_after_approval_the_certificate_once(world: World, server: EstServer) -> None:
    device = world.device(profile="ucpe-manual")
    username, secret = world.instance.credentials.create_password(device_serial=device)
    body = csr_b64()
    reply = enrol(server, body, authorization=basic(username, secret))
    assert reply.status == 202 and int(reply.headers["Retry-After"]) > 0
    assert enrol(server, body, authorization=basic(username, secret)).status == 202
    (pending,) = world.instance.pending.list(status="pending", device=device)
    world.instance.pending.approve(pending.id, "alice")
    first = issued(enrol(server, body, authorization=basic(username, secret)))
    again = issued(enrol(server, body, authorization=basic(username, secret)))
    assert again == first
    assert len(certificates_of(world, device)) == 1


def test_a_rejected_pending_request_is_403(world: World, server: EstServer) -> None:
    device = world.device(profile="ucpe-manual")
    chain = world.idevid(device)
    body = csr_b64()
    assert enrol(server, body, client_chain=chain).status == 202
    (pending,) = world.instance.pending.list(status="pending", device=device)
    world.instance.pending.reject(pending.id, "alice", "not this one")
    assert "request_rejected" in refused(enrol(server, body, client_chain=chain), 403)


# -- the core's other answers, and failures ------------------------------------------------------------------


def test_overload_is_503_with_retry_after(world: World) -> None:
    busy = EstServer(
        decide=lambda request: Rejected(RejectReason.SYSTEM_UNAVAILABLE, "busy: retry later", 7),
        ca_certificates=lambda route: (),
    )
    reply = enrol(busy, csr_b64(), authorization=basic("u", "p"))
    refused(reply, 503)
    assert reply.headers["Retry-After"] == "7"


def test_an_unexpected_failure_is_503_logged_and_audited_never_500(world: World) -> None:
    records: list[Any] = []

    def broken(request: Any) -> Any:
        raise RuntimeError("the store went away")

    server = EstServer(decide=broken, ca_certificates=lambda route: (), audit=records.append)
    reply = enrol(server, csr_b64(), authorization=basic("u", "p"))
    assert "temporarily unable to answer" in refused(reply, 503)
    assert "the store went away" not in reply.body.decode()
    assert [r.reason for r in records] == ["system_failure"]


# -- through Flask ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[Any]:
    chains: dict[str, tuple[x509.Certificate, ...]] = {}

    def transport(request: Any) -> TransportFacts:
        # A fake TLS terminator: the test says which chain the handshake
        # verified, and X-Test-Plain that the request came over plain HTTP.
        if request.headers.get("X-Test-Plain"):
            return TransportFacts(over_tls=False)
        return TransportFacts(over_tls=True, client_chain=chains.get(request.headers.get("X-Test-Device", ""), None))

    app = create_app(world.instance, est_transport=transport)
    app.config["TESTING"] = True
    with app.test_client() as client:
        client.chains = chains  # type: ignore[attr-defined]
        yield client


def test_flask_simpleenroll_with_a_client_certificate_from_the_transport(world: World, client: Any, device: str) -> None:
    client.chains[device] = world.idevid(device)
    response = client.post(
        "/.well-known/est/simpleenroll", data=csr_b64(), headers={"Content-Type": "application/pkcs10", "X-Test-Device": device}
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Transfer-Encoding"] == "base64"
    assert len(certs_of(response.data)) == 1


def test_flask_cacerts_and_labelled_paths(world: World, client: Any) -> None:
    assert client.get("/.well-known/est/cacerts").status_code == 200
    assert client.get("/.well-known/est/ucpe/cacerts").status_code == 200
    assert client.get("/.well-known/est/ucpe/csrattrs").headers["Content-Type"] == "application/csrattrs"
    assert client.get("/.well-known/est/nope/cacerts").status_code == 404
    assert client.get("/.well-known/est/a/b/c").status_code == 404
    response = client.post("/.well-known/est/simpleenroll")
    assert response.status_code == 401 and "WWW-Authenticate" in response.headers


def test_flask_oversized_body_is_413(client: Any, password: str) -> None:
    response = client.post("/.well-known/est/simpleenroll", data=b"A" * (codec.MAX_BODY_BYTES + 1), headers={"Authorization": password})
    assert response.status_code == 413


# -- fuzz through Flask: a 2xx or a 4xx with a text body, never a 5xx ------------------------------------------


@pytest.fixture(scope="module")
def fuzz_credentials(world: World, client: Any) -> dict[str, str]:
    device = world.device(profile="ucpe")
    username, secret = world.instance.credentials.create_password(device_serial=device)
    client.chains["fuzz"] = world.idevid(device)
    return {"good": basic(username, secret), "wrong": basic(username, "wrong"), "junk": "Basic !!!", "none": ""}


_VALID = make_csr(cn="fuzz")


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated-der", "mutated-b64"]))
    if kind == "random":
        return draw(st.binary(max_size=1024))
    data = bytearray(_VALID if kind == "mutated-der" else codec.b64_lines(_VALID))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data) - 1))
        choice = draw(st.sampled_from(["flip", "cut", "insert"]))
        if choice == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif choice == "cut":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        if not data:
            break
    return bytes(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    operation=st.sampled_from(["simpleenroll", "simplereenroll", "serverkeygen", "cacerts", "csrattrs", "fullcmc", "x%00y", "..", "Simpleenroll"]),
    label=st.one_of(st.none(), st.sampled_from(["ucpe", "nope", "ucpe-manual", "%2e%2e"])),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    body=_bodies(),
    credential=st.sampled_from(["good", "wrong", "junk", "none"]),
    device=st.sampled_from(["", "fuzz"]),
    encoding=st.sampled_from([None, "base64", "binary", "\x00weird"]),
)
def test_fuzzed_requests_through_flask_get_a_2xx_or_a_4xx_with_text_never_a_5xx(
    client: Any, fuzz_credentials: dict[str, str], operation: str, label: str | None, method: str,
    body: bytes, credential: str, device: str, encoding: str | None,
) -> None:
    path = "/.well-known/est/" + (f"{label}/" if label else "") + operation
    headers = {"Content-Type": "application/pkcs10", "X-Test-Device": device}
    if fuzz_credentials[credential]:
        headers["Authorization"] = fuzz_credentials[credential]
    if encoding is not None:
        headers["Content-Transfer-Encoding"] = encoding
    response = client.open(path, method=method, data=body, headers=headers)
    assert 200 <= response.status_code < 300 or 400 <= response.status_code < 500, (response.status_code, response.data)
    if response.status_code >= 400:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.data.strip()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    operation=st.sampled_from(["simpleenroll", "simplereenroll", "serverkeygen"]),
    body=_bodies(),
    credential=st.sampled_from(["good", "good", "wrong", "junk"]),
    device=st.sampled_from(["", "fuzz"]),
)
def test_fuzzed_enrolment_bodies_with_credentials_get_a_2xx_or_a_4xx_with_text(
    client: Any, fuzz_credentials: dict[str, str], operation: str, body: bytes, credential: str, device: str
) -> None:
    headers = {"Content-Type": "application/pkcs10", "X-Test-Device": device, "Authorization": fuzz_credentials[credential]}
    response = client.post(f"/.well-known/est/{operation}", data=body, headers=headers)
    assert 200 <= response.status_code < 300 or 400 <= response.status_code < 500, (response.status_code, response.data)
    if response.status_code >= 400:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.data.strip()


# -- EST only over TLS; failed evidence is never replaced (issue 10 finding 7) ---------------------------------


@pytest.mark.parametrize(("operation", "method"), [
    ("simpleenroll", "POST"), ("simplereenroll", "POST"), ("serverkeygen", "POST"), ("cacerts", "GET"), ("csrattrs", "GET"),
])
def test_plain_http_not_from_a_trusted_proxy_is_403_tls_required_and_audited(
    world: World, server: EstServer, device: str, password: str, operation: str, method: str
) -> None:
    body = csr_b64() if method == "POST" else b""

    def counted() -> int:
        return sum(row.count for row in world.instance.audit.noise.rows(source="192.0.2.7")
                   if (row.protocol, row.reason) == ("est", "tls_required"))

    before, chained = counted(), world.instance.audit.count()
    reply = server.handle(EstRequest(operation=operation, method=method, body=body, authorization=password,
                                     client_chain=world.idevid(device), peer="192.0.2.7"))
    assert "HTTPS" in refused(reply, 403)
    # Nobody authenticated: counted per source and reason (audit noise), not chained.
    assert counted() == before + 1 and world.instance.audit.count() == chained
    assert certificates_of(world, device) == []


def test_a_revoked_certificate_of_ours_with_a_good_password_is_403_revoked_and_nothing_issued(
    world: World, server: EstServer, device: str, password: str
) -> None:
    current, chain = _first_certificate(world, server, device)
    world.instance.revocations.revoke(current.serial_number, "keyCompromise")
    reply = enrol(server, csr_b64(), client_chain=chain, authorization=password)
    assert "certificate_revoked" in refused(reply, 403)
    assert [r.serial for r in certificates_of(world, device)] == [current.serial_number]
    record = last_noise(world)
    assert (record.protocol, record.reason) == ("est", "certificate_revoked")


def test_an_untrusted_vendor_chain_with_a_good_password_is_403_and_nothing_issued(
    world: World, server: EstServer, device: str, password: str
) -> None:
    reply = enrol(server, csr_b64(), client_chain=world.idevid(device, world.stranger), authorization=password)
    assert "untrusted_certificate" in refused(reply, 403)
    assert certificates_of(world, device) == []


def test_an_unreadable_client_certificate_with_a_good_password_is_403_and_audited(
    world: World, server: EstServer, device: str, password: str
) -> None:
    reply = enrol(server, csr_b64(), certificate_error="certificate 1: bad DER", authorization=password)
    assert "cannot be used" in refused(reply, 403)
    record = last_noise(world)
    assert (record.protocol, record.reason) == ("est", "untrusted_certificate")
    assert certificates_of(world, device) == []


def test_flask_plain_http_simpleenroll_with_a_good_password_is_403(world: World, client: Any, device: str, password: str) -> None:
    response = client.post("/.well-known/est/simpleenroll", data=csr_b64(),
                           headers={"Content-Type": "application/pkcs10", "Authorization": password, "X-Test-Plain": "1"})
    assert response.status_code == 403 and response.headers["Content-Type"].startswith("text/plain")
    assert b"HTTPS" in response.data
    assert client.get("/.well-known/est/cacerts", headers={"X-Test-Plain": "1"}).status_code == 403
    assert certificates_of(world, device) == []


def test_simplereenroll_with_a_wrong_basic_password_beside_the_current_certificate_is_401(
    world: World, server: EstServer, device: str, password: str
) -> None:
    current, chain = _first_certificate(world, server, device)
    username = base64.b64decode(password.split()[1]).decode().split(":")[0]
    body = csr_b64(subject=current.subject)
    refused(enrol(server, body, operation="simplereenroll", client_chain=chain, authorization=basic(username, "wrong")), 401)
    assert len(certificates_of(world, device)) == 1
    issued(enrol(server, body, operation="simplereenroll", client_chain=chain, authorization=password))
