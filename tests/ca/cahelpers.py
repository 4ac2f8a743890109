"""Helpers shared by the ca/ tests."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca import hierarchy
from ca.issuer import CertificateAuthorities, UrlScheme
from ca.profiles import default_profiles
from ca.store import Store
from ca.template import IssuanceOrder
from hsm import KeyType, Token

BASE_URL = "http://127.0.0.1:8080"


def client_order(common_name: str = "device-1", profile: str = "client", **kwargs: object) -> tuple[IssuanceOrder, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    order = IssuanceOrder(
        ca="issuing",
        profile=profile,
        subject=x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)]),
        public_key=key.public_key(),
        **kwargs,  # type: ignore[arg-type]
    )
    return order, key


def build_hierarchy(store: Store, token: Token, key_type: KeyType = KeyType.EC_P256) -> CertificateAuthorities:
    cas = CertificateAuthorities(store, token, default_profiles(), UrlScheme(BASE_URL), default_ca="issuing")
    hierarchy.create_root(cas, "root", hierarchy.simple_name("Test Root CA", "ztpki tests"), key_type)
    hierarchy.create_issuing(cas, "issuing", hierarchy.simple_name("Test Issuing CA", "ztpki tests"), key_type, parent="root")
    ocsp_type = KeyType.EC_P256 if key_type.value.startswith("ec") else KeyType.RSA_2048
    hierarchy.create_ocsp_signer(cas, "issuing", ocsp_type)
    return cas
