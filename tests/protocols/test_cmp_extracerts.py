"""Client certificates in extraCerts (issue 10, finding 4), the server's
catch-all and the unknown-label 404 (finding 8b), on a real instance
(SoftHSM2, SQLite).

A signed ir/cr/kur/rr/certConf carries the signer's certificate and chain in
extraCerts (RFC 9483 §3.3); everything in them is the client's. Whatever is
wrong with those bytes is answered as a client error (RFC 9483 §3.6.4), never
systemFailure, and every refusal leaves an audit record. The hypothesis
fuzzer at the end mutates the extraCerts of correctly signed messages.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from protocols.cmp import codec, der
from protocols.cmp.bodies import FailInfo, PkiStatus, status_info_from_asn1
from protocols.cmp.client import (
    BODY_CR,
    BODY_IR,
    BODY_KUR,
    CertCredential,
    KeySigner,
    cert_req_body,
    cert_request,
    cert_request_der,
    issued_certificate,
    refusal,
    signature_pop,
)
from protocols.cmp.context import Route
from protocols.cmp.protection import protect_with_signature
from protocols.cmp.server import CONTENT_TYPE, CmpServer
from ztpki.http.cmp import cmp_server_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ra"))
from corehelpers import World, make_world

BODY_RR, BODY_CERT_CONF = 11, 24
PEER = "192.0.2.44"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("cmp-extracerts"))


@pytest.fixture(scope="module")
def server(world: World) -> CmpServer:
    server = cmp_server_for(world.instance)
    server.identity(Route())  # the CMP protection certificate, issued before any fuzzed request
    return server


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def der_of(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def tbs_fields(cert: bytes) -> list[der.Tlv]:
    return der.children(cert, der.children(cert, der.read_tlv(cert, 0))[0])


def name_value_offsets(cert: bytes, which: str) -> list[int]:
    """Offsets of the tag octet of every AttributeValue in the issuer or
    subject Name (RFC 5280 §4.1.2.4)."""
    fields = tbs_fields(cert)
    first = 1 if fields[0].tag == 0xA0 else 0  # [0] version present
    name = fields[first + (2 if which == "issuer" else 4)]
    offsets = []
    for rdn in der.children(cert, name):
        for attribute in der.children(cert, rdn):
            offsets.append(der.children(cert, attribute)[1].start)
    return offsets


def retag(cert: bytes, offset: int, tag: int) -> bytes:
    mutated = bytearray(cert)
    mutated[offset] = tag
    return bytes(mutated)


def vendor_chain(world: World) -> tuple[ec.EllipticCurvePrivateKey, list[bytes]]:
    idevid = world.vendor.device(world.device())
    return idevid.key, [der_of(c) for c in world.vendor.chain(idevid)]  # type: ignore[return-value]


def operator_certificate(world: World, server: CmpServer) -> tuple[ec.EllipticCurvePrivateKey, list[bytes]]:
    """A device's operator certificate, enrolled with its vendor certificate:
    what protects its kur and rr (RFC 9483 §4.1.3, §4.2)."""
    idevid = world.vendor.device(world.device())
    vendor = CertCredential(idevid.key, tuple(world.vendor.chain(idevid)))  # type: ignore[arg-type]
    key = new_key()
    _, request = cert_request(vendor, key, implicit=True)
    status, data, _ = server.handle(request, path_label=None, peer=PEER)
    assert status == 200
    return key, [issued_certificate(codec.decode_message(data))]


def body_for(kind: int, signer_cert: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    if kind in (BODY_IR, BODY_CR, BODY_KUR):
        new = new_key()
        spki = new.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "device")])
        request = cert_request_der(spki, subject)
        return cert_req_body(kind, [request + signature_pop(request, KeySigner(new))])
    if kind == BODY_RR:
        # RevDetails { certDetails CertTemplate { serialNumber [1] } } (RFC 9483 §4.2)
        serial = x509.load_der_x509_certificate(signer_cert).serial_number
        template = der.wrap(der.TAG_SEQUENCE, der.wrap(0x81, der.encode_integer(serial)[2:]))
        return der.wrap(0xA0 | BODY_RR, der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, template)))
    # certConf for a transaction nobody opened (RFC 4210 §5.3.18)
    content = der.wrap(der.TAG_OCTET_STRING, os.urandom(32)) + der.encode_integer(0)
    return der.wrap(0xA0 | BODY_CERT_CONF, der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, content)))


def signed(key: ec.EllipticCurvePrivateKey, kid_cert: bytes, body: bytes, extra: list[bytes] | None,
           tid: bytes) -> bytes:
    """A PKIMessage signed with `key`, extraCerts exactly `extra` (None: the
    field absent; []: present and empty, which RFC 4210 §5.1 forbids)."""
    try:
        ski = x509.load_der_x509_certificate(kid_cert).extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier).value.digest
    except (ValueError, x509.ExtensionNotFound):
        ski = b"\x01" * 20
    message = protect_with_signature(_header(ski, tid), body, KeySigner(key), tuple(extra or ()))
    if extra == []:
        outer = der.read_tlv(message, 0)
        message = der.wrap(der.TAG_SEQUENCE, outer.value(message) + der.wrap(0xA1, der.wrap(der.TAG_SEQUENCE, b"")))
    return message


def _header(kid: bytes, tid: bytes) -> Any:
    from datetime import UTC, datetime

    from protocols.cmp.header import NULL_DN_GENERAL_NAME, PkiHeader

    return PkiHeader(
        pvno=2, sender=NULL_DN_GENERAL_NAME, recipient=NULL_DN_GENERAL_NAME,
        message_time=datetime.now(UTC).replace(microsecond=0), sender_kid=kid,
        transaction_id=tid, sender_nonce=os.urandom(16),
    )


@dataclasses.dataclass
class Answer:
    reply: codec.PkiMessage
    audited: int  # audit records the request left

    @property
    def status(self) -> Any:
        if self.reply.body_type in ("error", "ip", "cp", "kup"):
            return refusal(self.reply)
        if self.reply.body_type == "rp":
            return status_info_from_asn1(self.reply.body["status"][0])
        return None


def recorded(world: World) -> int:
    """Chained audit records plus counted refusals (audit noise: a refusal
    nobody authenticated is counted per source and reason, not chained)."""
    audit = world.instance.audit
    return audit.count() + sum(row.count for row in audit.noise.rows())


def noise_row(world: World, reason: str) -> Any:
    (row,) = [r for r in world.instance.audit.noise.rows(source=PEER) if (r.protocol, r.reason) == ("cmp", reason)]
    return row


def send(world: World, server: CmpServer, message: bytes) -> Answer:
    before = recorded(world)
    status, data, content_type = server.handle(message, path_label=None, peer=PEER)
    assert (status, content_type) == (200, CONTENT_TYPE)
    return Answer(codec.decode_message(data), recorded(world) - before)


# -- finding 4: a signer whose issuer does not parse ------------------------------------------


@pytest.mark.parametrize("kind", [BODY_IR, BODY_CR, BODY_KUR])
def test_signer_certificate_whose_issuer_does_not_parse_is_refused_with_badDataFormat_and_audited(
    world: World, server: CmpServer, kind: int
) -> None:
    # An issuer attribute value tagged BOOLEAN: cryptography loads the
    # certificate and raises ValueError only when .issuer is read.
    key, chain = operator_certificate(world, server) if kind == BODY_KUR else vendor_chain(world)
    broken = retag(chain[0], name_value_offsets(chain[0], "issuer")[0], 0x01)
    with pytest.raises(ValueError):
        _ = x509.load_der_x509_certificate(broken).issuer
    answer = send(world, server, signed(key, chain[0], body_for(kind, chain[0], key), [broken, *chain[1:]], os.urandom(16)))
    assert answer.reply.body_type == "error"
    assert answer.status.fail_info == {FailInfo.BAD_DATA_FORMAT}
    assert answer.audited == 1
    assert noise_row(world, "badDataFormat").count >= 1


def test_chain_certificate_whose_subject_does_not_parse_is_refused_with_badDataFormat(world: World, server: CmpServer) -> None:
    key, chain = vendor_chain(world)
    assert len(chain) > 1
    broken = retag(chain[1], name_value_offsets(chain[1], "subject")[0], 0x05)
    answer = send(world, server, signed(key, chain[0], body_for(BODY_IR, chain[0], key), [chain[0], broken], os.urandom(16)))
    assert answer.status.fail_info == {FailInfo.BAD_DATA_FORMAT}
    assert answer.audited == 1


def test_unexpected_failure_is_answered_with_systemFailure_and_audited(world: World) -> None:
    def crash(request: Any) -> Any:
        raise RuntimeError("a bug in the core")

    crashing = cmp_server_for(world.instance)
    crashing.decide = crash
    key, chain = vendor_chain(world)
    tid = os.urandom(16)
    answer = send(world, crashing, signed(key, chain[0], body_for(BODY_IR, chain[0], key), chain, tid))
    assert answer.status.fail_info == {FailInfo.SYSTEM_FAILURE}
    assert answer.audited == 1
    assert tid.hex() in noise_row(world, "systemFailure").sample


# -- finding 8b: the unknown label is not echoed in full -----------------------------------------


def test_unknown_path_label_404_echoes_at_most_64_characters(server: CmpServer) -> None:
    label = "x" * 4000
    status, body, content_type = server.handle(b"", path_label=label, peer=PEER)
    assert status == 404 and content_type.startswith("text/plain")
    assert len(body) < 100 and b"x" * 64 in body and b"x" * 65 not in body


# -- the fuzzer: signed messages with mutated extraCerts ------------------------------------------

FUZZ = settings(
    max_examples=60 * int(os.environ.get("CMP_BODY_FUZZ_SCALE", "1")),
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    database=None,
)
TAGS = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x17, 0x1E, 0x30, 0x31, 0x80, 0xA0, 0xFF]


@st.composite
def mutations(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["bitflip", "retag_issuer", "retag_subject", "truncate", "append", "garbage",
                                  "empty", "absent", "reverse", "drop_signer", "duplicate"]))
    return {
        "kind": kind,
        "index": draw(st.integers(0, 3)),
        "position": draw(st.integers(0, 10_000)),
        "bit": draw(st.integers(0, 7)),
        "tag": draw(st.sampled_from(TAGS)),
        "cut": draw(st.integers(1, 200)),
        "garbage": draw(st.binary(max_size=40)),
    }


def mutate(chain: list[bytes], spec: dict[str, Any], stranger: bytes) -> list[bytes] | None:
    certs = list(chain)
    i = spec["index"] % len(certs)
    kind = spec["kind"]
    if kind == "bitflip":
        cert = bytearray(certs[i])
        position = spec["position"] % len(cert)
        cert[position] ^= 1 << spec["bit"]
        certs[i] = bytes(cert)
    elif kind in ("retag_issuer", "retag_subject"):
        offsets = name_value_offsets(certs[i], kind.removeprefix("retag_"))
        if offsets:
            certs[i] = retag(certs[i], offsets[spec["position"] % len(offsets)], spec["tag"])
    elif kind == "truncate":
        # Still a SEQUENCE of its (shorter) content: gets past the outer split.
        content = der.read_tlv(certs[i], 0).value(certs[i])
        certs[i] = der.wrap(der.TAG_SEQUENCE, content[: max(0, len(content) - spec["cut"])])
    elif kind == "append":
        certs += [stranger] * (1 + spec["index"])
    elif kind == "garbage":
        certs.insert(i, der.wrap(der.TAG_SEQUENCE, spec["garbage"]))
    elif kind == "empty":
        return []
    elif kind == "absent":
        return None
    elif kind == "reverse":
        certs.reverse()
    elif kind == "drop_signer":
        certs = certs[1:] or [stranger]
    elif kind == "duplicate":
        certs = [certs[0]] * (2 + spec["index"]) + certs[1:]
    return certs


@FUZZ
@given(st.sampled_from([BODY_IR, BODY_CR, BODY_KUR, BODY_RR, BODY_CERT_CONF]), mutations())
def test_signed_messages_with_mutated_extracerts_are_refused_as_client_errors_and_audited(
    world: World, server: CmpServer, stranger_cert: bytes, kind: int, spec: dict[str, Any]
) -> None:
    """Properties: an answer (200, a CMP message), never systemFailure, and an
    audit record for every request (the CMP server's refusal or the core's
    decision)."""
    key, chain = operator_certificate(world, server) if kind in (BODY_KUR, BODY_RR) else vendor_chain(world)
    extra = mutate(chain, spec, stranger_cert)
    answer = send(world, server, signed(key, chain[0], body_for(kind, chain[0], key), extra, os.urandom(16)))
    status = answer.status
    event("%s %s %s" % (answer.reply.body_type, status.status.name if status else None,
                        sorted(f.name for f in status.fail_info) if status else None))
    if status is not None:
        assert FailInfo.SYSTEM_FAILURE not in status.fail_info, status
    assert answer.audited >= 1
    refused = status is not None and status.status == PkiStatus.REJECTION
    if not refused:
        # Only mutations that leave the signer and its chain intact may pass.
        assert spec["kind"] in ("append", "reverse", "duplicate", "garbage", "bitflip", "retag_issuer",
                                "retag_subject", "truncate"), spec


@pytest.fixture(scope="module")
def stranger_cert(world: World) -> bytes:
    idevid = world.stranger.device("STRANGER-1")
    return der_of(idevid.certificate)
