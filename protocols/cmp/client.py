"""A small RFC 9483 client, sans-I/O plus one HTTP helper.

Builds ir/cr/kur and certConf messages, protected with a shared secret
(PasswordBasedMac or PBMAC1) or signed with a certificate and its chain, and
reads the replies. The tests, the benchmarks and the demo use it; the real
clients (openssl cmp) are what conformance/ drives.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocols.cmp import codec, der, macs
from protocols.cmp.bodies import PkiStatus, StatusInfo, status_info_from_asn1
from protocols.cmp.header import NULL_DN_GENERAL_NAME, PkiHeader, implicit_confirm_info
from protocols.cmp.protection import (
    MacAlgorithm,
    protect_with_mac,
    protect_with_signature,
    signature_algorithm_id,
)

CONTENT_TYPE = "application/pkixcmp"  # RFC 6712 §3.4
BODY_IR, BODY_CR, BODY_KUR = 0, 2, 7  # RFC 4210 §5.1.2 PKIBody tags


class KeySigner:
    """Signs with an in-process EC key the way hsm.KeySigner does (DER ECDSA)."""

    algorithm = "ecdsa-sha256"

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


@dataclass
class MacCredential:
    reference: str
    secret: bytes
    pbmac1: bool = False
    iterations: int = 500  # what openssl cmp uses for PasswordBasedMac


@dataclass
class CertCredential:
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]  # the signer's certificate first


Credential = MacCredential | CertCredential


def request_header(
    credential: Credential,
    transaction_id: bytes,
    *,
    implicit: bool = False,
    nonce: bytes | None = None,
    recip_nonce: bytes | None = None,
    moment: datetime | None = None,
) -> PkiHeader:
    """A PKIHeader as RFC 9483 §3.1 asks: fresh 16-byte nonce, messageTime,
    senderKID (the MAC reference or the signer's SKI)."""
    if isinstance(credential, MacCredential):
        kid = credential.reference.encode()
    else:
        kid = credential.chain[0].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return PkiHeader(
        pvno=2,
        sender=NULL_DN_GENERAL_NAME,
        recipient=NULL_DN_GENERAL_NAME,
        message_time=(moment or datetime.now(UTC)).replace(microsecond=0),
        sender_kid=kid,
        transaction_id=transaction_id,
        sender_nonce=nonce or os.urandom(16),
        recip_nonce=recip_nonce,
        general_info=(implicit_confirm_info(),) if implicit else (),
    )


def protect(credential: Credential, header: PkiHeader, body_der: bytes) -> bytes:
    """The whole PKIMessage: MAC-protected (RFC 4210 §5.1.3.1, RFC 9481 §6.1)
    or signed with the chain in extraCerts (RFC 9483 §3.2)."""
    if isinstance(credential, MacCredential):
        algorithm: MacAlgorithm = (
            macs.new_pbmac1(iterations=credential.iterations)
            if credential.pbmac1
            else macs.new_password_based_mac(iterations=credential.iterations)
        )
        return protect_with_mac(header, body_der, credential.secret, algorithm)
    certs = tuple(c.public_bytes(serialization.Encoding.DER) for c in credential.chain)
    return protect_with_signature(header, body_der, KeySigner(credential.key), certs)


# -- certificate requests (RFC 4211) ------------------------------------------------------


def cert_request_der(
    public_key_der: bytes | None,
    subject: x509.Name | None,
    extensions: tuple[bytes, ...] = (),
    cert_req_id: int = 0,
    validity: bytes = b"",
    controls: bytes = b"",
) -> bytes:
    """CertRequest (RFC 4211 §5) with a template of validity [4] (content as
    given), subject [5], publicKey [6], extensions [9]; controls as given."""
    template = der.wrap(0xA4, validity) if validity else b""
    if subject is not None:
        template += der.wrap(0xA5, subject.public_bytes())
    if public_key_der is not None:
        spki = der.read_tlv(public_key_der, 0)
        template += der.wrap(0xA6, spki.value(public_key_der))
    if extensions:
        template += der.wrap(0xA9, b"".join(extensions))
    return der.wrap(der.TAG_SEQUENCE, der.encode_integer(cert_req_id) + der.wrap(der.TAG_SEQUENCE, template) + controls)


def signature_pop(cert_request: bytes, signer: Any) -> bytes:
    """ProofOfPossession signature [1] POPOSigningKey over the CertRequest DER
    (RFC 4211 §4.1: no poposkInput when the template has subject and key)."""
    alg = signature_algorithm_id(signer.algorithm)
    alg_der = der.wrap(der.TAG_SEQUENCE, der.encode_oid(alg.oid) + (alg.parameters or b""))
    return der.wrap(0xA1, alg_der + der.wrap(0x03, b"\x00" + signer.sign(cert_request)))


def cert_req_body(body_tag: int, messages: list[bytes]) -> bytes:
    """ir [0] / cr [2] / kur [7] CertReqMessages (RFC 4210 §5.1.2); each item is
    the content of one CertReqMsg (certReq, then popo if any)."""
    return der.wrap(0xA0 | body_tag, der.wrap(der.TAG_SEQUENCE, b"".join(der.wrap(der.TAG_SEQUENCE, m) for m in messages)))


def cert_request(
    credential: Credential,
    key: ec.EllipticCurvePrivateKey,
    *,
    body_tag: int = BODY_IR,
    subject: x509.Name | None = None,
    transaction_id: bytes | None = None,
    implicit: bool = False,
    **header: Any,
) -> tuple[bytes, bytes]:
    """(transactionID, DER) of an ir/cr/kur for `key` with signature POP."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    subject = subject or x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "device")])
    request = cert_request_der(spki, subject)
    body = cert_req_body(body_tag, [request + signature_pop(request, KeySigner(key))])
    tid = transaction_id or os.urandom(16)
    return tid, protect(credential, request_header(credential, tid, implicit=implicit, **header), body)


def cert_conf(
    credential: Credential, transaction_id: bytes, certificate: bytes, *, accept: bool = True,
    recip_nonce: bytes | None = None,
) -> bytes:
    """certConf (RFC 4210 §5.3.18) with certHash SHA-256 for certReqId 0;
    accept=False sends PKIStatusInfo rejection."""
    content = der.wrap(der.TAG_OCTET_STRING, hashlib.sha256(certificate).digest()) + der.encode_integer(0)
    if not accept:
        content += bytes.fromhex("3003020102")  # PKIStatusInfo { rejection }
    body = der.wrap(0xA0 | 24, der.wrap(der.TAG_SEQUENCE, der.wrap(der.TAG_SEQUENCE, content)))
    return protect(credential, request_header(credential, transaction_id, recip_nonce=recip_nonce), body)


# -- replies -----------------------------------------------------------------------------


def issued_certificate(reply: codec.PkiMessage) -> bytes:
    """The DER certificate of an accepted ip/cp/kup; AssertionError otherwise."""
    assert reply.body_type in ("ip", "cp", "kup"), reply.body_type
    response = reply.body["response"][0]
    status = status_info_from_asn1(response["status"])
    assert status.status in (PkiStatus.ACCEPTED, PkiStatus.GRANTED_WITH_MODS), status
    return bytes(response["certifiedKeyPair"]["certOrEncCert"]["certificate"])


def refusal(reply: codec.PkiMessage) -> StatusInfo:
    """The PKIStatusInfo of an error message or of the first CertResponse."""
    if reply.body_type == "error":
        return status_info_from_asn1(reply.body["pKIStatusInfo"])
    return status_info_from_asn1(reply.body["response"][0]["status"])


def post(url: str, message: bytes, *, timeout: float = 30) -> codec.PkiMessage:
    """POST one message (RFC 6712 §3) and decode the reply."""
    request = urllib.request.Request(url, data=message, headers={"Content-Type": CONTENT_TYPE}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return codec.decode_message(response.read())
