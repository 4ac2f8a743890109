"""Issue 10 against a running `ztpki serve`, over HTTP: client certificates
that do not parse (finding 4), genm amplification (6a), MAC guessing (6b)
and the unknown-label 404 (8b).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftools import Instance, Server, edit_config, serving, ztpki

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from protocols.cmp import codec, der  # noqa: E402
from protocols.cmp.bodies import FailInfo  # noqa: E402
from protocols.cmp.client import (  # noqa: E402
    CertCredential,
    MacCredential,
    cert_request,
    issued_certificate,
    protect,
    refusal,
    request_header,
)
from protocols.cmp.general import ID_IT_CA_CERTS  # noqa: E402
from protocols.cmp.header import encode_header  # noqa: E402

CONTENT_TYPE = "application/pkixcmp"
WINDOW = 4  # [cmp] mac_failure_window_seconds here


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    def tighter(inst: Instance, _base: Path) -> None:
        # init writes the [cmp] throttle keys with their defaults; tighter here.
        edit_config(inst, cmp={"mac_failures_per_kid": 3, "mac_failure_window_seconds": WINDOW})

    yield from serving(tmp_path_factory, "served-cost", tighter)


def post(server: Server, message: bytes, path: str = "/.well-known/cmp") -> tuple[int, bytes]:
    request = urllib.request.Request(
        server.url + path, data=message, headers={"Content-Type": CONTENT_TYPE}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answer(server: Server, message: bytes) -> codec.PkiMessage:
    status, body = post(server, message)
    assert status == 200, (status, body[:200], server.log())
    server.assert_alive()
    return codec.decode_message(body)


def mac_credential(server: Server) -> MacCredential:
    serial = "DEV-%s" % os.urandom(4).hex().upper()
    records = server.inst.home / f"{serial}.csv"
    records.write_text(f"serial,vendor,profile\n{serial},,enb\n")
    ztpki("devices", "import", records, home=server.inst.home)
    out = ztpki("credentials", "create", "--device", serial, "--kind", "mac", "--json", home=server.inst.home).stdout
    created = json.loads(out[out.index("{") : out.rindex("}") + 1])
    return MacCredential(created["reference"], created["secret"].encode())


def last_audit(server: Server) -> dict[str, object]:
    out = ztpki("audit", "list", "--json", home=server.inst.home).stdout
    records = json.loads(out[out.index("[") : out.rindex("]") + 1])
    return dict(records[-1])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- finding 4 ----------------------------------------------------------------------------


def certificate_with_unparsable_issuer(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    now = datetime.now(UTC)
    good = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    data = bytearray(good.public_bytes(serialization.Encoding.DER))
    fields = der.children(bytes(data), der.children(bytes(data), der.read_tlv(bytes(data), 0))[0])
    issuer = fields[3]  # [0] version, serialNumber, signature, issuer
    rdn = der.children(bytes(data), issuer)[0]
    value = der.children(bytes(data), der.children(bytes(data), rdn)[0])[1]
    data[value.start] = 0x01  # the CN value tagged BOOLEAN
    return x509.load_der_x509_certificate(bytes(data))


def test_signer_certificate_whose_issuer_does_not_parse_gets_badDataFormat_and_an_audit_record(served: Server) -> None:
    key = new_key()
    credential = CertCredential(key, (certificate_with_unparsable_issuer(key),))
    def counted() -> int:
        # Nobody authenticated: the refusal is counted per source and reason
        # (`ztpki audit noise`), not chained.
        out = ztpki("audit", "noise", "--json", "--source", "127.0.0.1", home=served.inst.home).stdout
        rows = json.loads(out[out.index("[") :])
        return sum(int(r["count"]) for r in rows if (r["protocol"], r["reason"]) == ("cmp", "badDataFormat"))

    for body_tag in (0, 2, 7):  # ir, cr, kur
        before = counted()
        tid, request = cert_request(credential, new_key(), body_tag=body_tag)
        reply = answer(served, request)
        assert reply.body_type == "error"
        assert refusal(reply).fail_info == {FailInfo.BAD_DATA_FORMAT}
        assert counted() == before + 1
    assert "unexpected failure" not in served.log()


# -- finding 6a -----------------------------------------------------------------------------


def test_genm_with_20000_caCerts_infoTypes_is_refused_small(served: Server) -> None:
    mac = mac_credential(served)
    infos = der.wrap(der.TAG_SEQUENCE, der.encode_oid(ID_IT_CA_CERTS)) * 20_000
    body = der.wrap(0xA0 | 21, der.wrap(der.TAG_SEQUENCE, infos))
    request = protect(mac, request_header(mac, os.urandom(16)), body)
    started = time.monotonic()
    status, reply = post(served, request)
    assert status == 200
    assert len(reply) < 10_000, len(reply)  # was 21 MB from 240 kB
    assert refusal(codec.decode_message(reply)).fail_info == {FailInfo.BAD_REQUEST}
    assert time.monotonic() - started < 5


def test_unprotected_genm_is_refused_by_default(served: Server) -> None:
    mac = mac_credential(served)
    body = der.wrap(0xA0 | 21, der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, der.encode_oid(ID_IT_CA_CERTS))))
    unprotected = codec.assemble_message(encode_header(request_header(mac, os.urandom(16))), body, None)
    assert refusal(answer(served, unprotected)).fail_info == {FailInfo.BAD_MESSAGE_CHECK}


# -- finding 6b -----------------------------------------------------------------------------


def test_init_writes_the_mac_throttle_and_closed_genm(served: Server) -> None:
    text = (served.inst.home / "ztpki.toml").read_text()
    assert "allow_unprotected_genm = false" in text and "mac_failures_per_address = 100" in text


def test_mac_guessing_is_throttled_and_the_right_secret_works_after_the_window(served: Server) -> None:
    mac = mac_credential(served)
    wrong = replace(mac, secret=b"guess")
    for _ in range(3):
        _, request = cert_request(wrong, new_key())
        assert "does not verify" in refusal(answer(served, request)).texts[0]
    _, request = cert_request(mac, new_key())
    locked = refusal(answer(served, request))
    assert locked.fail_info == {FailInfo.BAD_MESSAGE_CHECK}
    wait = int(re.search(r"retry in (\d+) s", locked.texts[0]).group(1))  # type: ignore[union-attr]
    assert 1 <= wait <= WINDOW
    time.sleep(wait + 0.5)
    _, request = cert_request(mac, new_key())
    issued_certificate(answer(served, request))


# -- finding 8b -----------------------------------------------------------------------------


def test_unknown_label_404_echoes_at_most_64_characters(served: Server) -> None:
    status, body = post(served, b"\x30\x00", "/.well-known/cmp/p/" + "x" * 4000)
    assert status == 404
    assert len(body) < 120 and b"x" * 65 not in body, body[:200]
