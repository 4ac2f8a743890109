"""protocols/cmp/readers.py on the vectors, and reply headers (header.reply_header_for)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from cmphelpers import load_vector
from protocols.cmp import bodies, codec, readers
from protocols.cmp.header import NULL_DN_GENERAL_NAME, encode_header, reply_header_for

FLOWS_WITH_CONFIRM = [
    ("CrWithSignatureProtection", "downstream_CERT_REP", "downstream_CERT_CONFIRM"),
    ("CrDelayed", "downstream_CERT_REP", "downstream_CERT_CONFIRM"),
    ("IrWithMacProtection", "downstream_INIT_REP", "downstream_CERT_CONFIRM"),
    ("Kur", "downstream_KEY_UPDATE_REP", "downstream_CERT_CONFIRM"),
]


@pytest.mark.parametrize("flow,reply,confirm", FLOWS_WITH_CONFIRM, ids=[f[0] for f in FLOWS_WITH_CONFIRM])
def test_cert_hash_in_certconf_is_sha256_of_the_issued_certificate(flow: str, reply: str, confirm: str) -> None:
    issued = codec.decode_message(load_vector(flow, reply)).body["response"][0]["certifiedKeyPair"]
    certificate = bytes(issued["certOrEncCert"]["certificate"])
    (status,) = readers.cert_confirmations(codec.decode_message(load_vector(flow, confirm)))
    assert status.cert_req_id == 0 and status.accepted and status.hash_alg is None
    # RFC 4210 §5.3.18: certHash with the hash of the certificate's signature algorithm (here SHA-256).
    assert status.cert_hash == hashlib.sha256(certificate).digest()


def test_rr_names_the_serial_and_issuer_of_the_certificate_that_signed_it() -> None:
    message = codec.decode_message(load_vector("Rr", "downstream_REVOCATION_REQ"))
    (request,) = readers.revocation_requests(message)
    signer = message.extra_certs[0]
    assert request.serial_number == signer.serial_number
    assert request.issuer == signer.issuer.public_bytes(serialization.Encoding.DER)
    assert request.reason == "unspecified"


def test_poll_req_names_its_cert_req_id() -> None:
    assert readers.poll_requests(codec.decode_message(load_vector("CrDelayed", "downstream_POLL_REQ"))) == (0,)


def test_reader_refuses_the_wrong_body_type() -> None:
    with pytest.raises(readers.BodyError):
        readers.cert_confirmations(codec.decode_message(load_vector("Rr", "downstream_REVOCATION_REQ")))


def test_reply_header_answers_the_request() -> None:
    request = codec.decode_message(load_vector("CrWithSignatureProtection", "downstream_CERT_REQ")).header
    header = reply_header_for(request, NULL_DN_GENERAL_NAME, b"\x11" * 20, implicit_confirm=True)
    assert header.transaction_id == request.transaction_id
    assert header.recip_nonce == request.sender_nonce
    assert header.sender_nonce is not None and len(header.sender_nonce) == 16
    assert header.sender_nonce != request.sender_nonce
    assert header.recipient == request.sender and header.recip_kid == request.sender_kid
    assert header.implicit_confirm and header.pvno == 2
    body = codec.encode_body("pkiconf", bodies.pkiconf_body())
    assert codec.decode_message(codec.assemble_message(encode_header(header), body, None)).header == header


def test_rr_issuer_that_does_not_re_encode_is_bad_data_format() -> None:
    # The body fuzz found it: an empty RDN decodes but pyasn1 refuses to
    # encode it again; it was a systemFailure.
    from pyasn1_modules import rfc5280

    message = codec.decode_message(load_vector("Rr", "downstream_REVOCATION_REQ"))
    rdns = message.body[0]["certDetails"]["issuer"]["rdnSequence"]
    rdns.append(rfc5280.RelativeDistinguishedName().clear())
    with pytest.raises(readers.BodyError) as refused:
        readers.revocation_requests(message)
    assert refused.value.fail_info is bodies.FailInfo.BAD_DATA_FORMAT
