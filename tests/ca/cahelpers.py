"""Helpers shared by the ca/ tests."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca.template import IssuanceOrder


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
