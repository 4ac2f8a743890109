"""Shared helpers for the CMP tests: the golden vectors and what their names mean."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

VECTOR_DIR = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "cmp" / "lightweightcmpra"

# File-name stem (after downstream_/upstream_) → PKIBody alternative (RFC 4210 §5.1.2).
BODY_TYPE_OF_NAME = {
    "INIT_REQ": "ir",
    "INIT_REP": "ip",
    "CERT_REQ": "cr",
    "CERT_REP": "cp",
    "KEY_UPDATE_REQ": "kur",
    "KEY_UPDATE_REP": "kup",
    "CERT_CONFIRM": "certConf",
    "CONFIRM": "pkiconf",
    "POLL_REQ": "pollReq",
    "POLL_REP": "pollRep",
    "REVOCATION_REQ": "rr",
    "REVOCATION_REP": "rp",
}


def vector_paths() -> list[Path]:
    return sorted(VECTOR_DIR.glob("*/*.PKI"))


def vector_id(path: Path) -> str:
    return "%s/%s" % (path.parent.name, path.stem)


def expected_body_type(path: Path) -> str:
    return BODY_TYPE_OF_NAME[path.stem.split("_", 1)[1]]


def load_vector(flow: str, name: str) -> bytes:
    return (VECTOR_DIR / flow / (name + ".PKI")).read_bytes()


# -- in-process signers and certificates (real cryptography, no token) ----------

_HASH = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}


class LocalSigner:
    """Signs like hsm.KeySigner (DER ECDSA, PKCS#1 v1.5 or PSS) with an in-process key."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        if algorithm.startswith("ecdsa"):
            curve = ec.SECP384R1() if algorithm.endswith("384") else ec.SECP256R1()
            self.key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = ec.generate_private_key(curve)
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.certificate = self_signed(self.key, "CN=ztpki CMP test " + algorithm)

    @property
    def hash(self) -> hashes.HashAlgorithm:
        return _HASH["sha384" if self.algorithm.endswith("384") else "sha256"]()

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(data, ec.ECDSA(self.hash))
        if "pss" in self.algorithm:
            pss = padding.PSS(mgf=padding.MGF1(self.hash), salt_length=self.hash.digest_size)
            return self.key.sign(data, pss, self.hash)
        return self.key.sign(data, padding.PKCS1v15(), self.hash)

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def self_signed(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, subject: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject.removeprefix("CN="))])
    now = _dt.datetime.now(_dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


# -- a minimal RFC 9483 client side: CertReqMessages and p10cr bodies ------------------

from protocols.cmp import der as _der
from protocols.cmp.client import cert_req_body, cert_request_der, signature_pop  # noqa: F401


def extension_der(extension: x509.ExtensionType, oid_der: bytes, critical: bool = False) -> bytes:
    """Extension ::= SEQUENCE { extnID, critical DEFAULT FALSE, extnValue } (RFC 5280 §4.1)."""
    flag = b"\x01\x01\xff" if critical else b""
    return _der.wrap(0x30, oid_der + flag + _der.wrap(0x04, extension.public_bytes()))


SAN_OID_DER = bytes.fromhex("0603551d11")
KEY_USAGE_OID_DER = bytes.fromhex("0603551d0f")


def public_key_der(signer: LocalSigner) -> bytes:
    return signer.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
