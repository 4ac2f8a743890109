"""A real instance (SoftHSM2 token, SQLite store, CA hierarchy) for the core
tests, with a trusted vendor PKI and cheap scrypt costs for PINs and passwords."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ra.requests import EnrolmentRequest, Evidence, Operation, Protocol
from vendor_trust.credentials import Credentials
from vendor_trust.hashing import ScryptCost
from vendor_trust.pins import Pins
from ztpki.instance import Instance
from ztpki.setup_instance import init_instance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vendor_trust"))
import trustfixtures  # noqa: E402

CHEAP = ScryptCost(log_n=4, r=1, p=1)


@dataclass
class World:
    instance: Instance
    vendor: "trustfixtures.VendorPki"
    stranger: "trustfixtures.VendorPki"  # a vendor PKI nobody trusts

    def device(self, profile: str | None = "enb", **fields: str) -> str:
        serial = f"DEV-{uuid.uuid4().hex[:10].upper()}"
        self.instance.registry.register(serial=serial, vendor="acme", profile=profile, **fields)
        return serial

    def idevid(self, serial: str, pki: "trustfixtures.VendorPki | None" = None, **options: object) -> tuple[x509.Certificate, ...]:
        pki = pki or self.vendor
        issued = pki.device(serial, **options)  # type: ignore[arg-type]
        return tuple(pki.chain(issued))


def make_world(home: Path) -> World:
    instance = init_instance(home)
    engine = instance.engine
    instance.__dict__["pins"] = Pins(engine, cost=CHEAP)
    instance.__dict__["credentials"] = Credentials(engine, instance.secret_sealer)
    vendor = trustfixtures.vendor_pki("Acme Devices")
    stranger = trustfixtures.vendor_pki("Acme Devices", key_offset=10)  # same names, other keys
    instance.trust.add_vendor("acme")
    instance.trust.add_anchor("acme", vendor.root.certificate)
    return World(instance=instance, vendor=vendor, stranger=stranger)


def enrolment(
    *evidence: Evidence,
    operation: Operation = Operation.INITIAL,
    claimed: str | None = None,
    sans: tuple[x509.GeneralName, ...] = (),
    extensions: tuple[x509.Extension[x509.ExtensionType], ...] = (),
    pop: bool = True,
    transaction: str | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    protocol: Protocol = Protocol.CMP,
    revoke_serial: int | None = None,
) -> EnrolmentRequest:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return EnrolmentRequest(
        protocol=protocol,
        operation=operation,
        public_key=key.public_key(),
        pop_verified=pop,
        subject=x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "whatever-the-device-asks")]),
        sans=sans,
        extensions=extensions,
        evidence=evidence,
        transaction_id=transaction,
        claimed_device=claimed,
        revoke_serial=revoke_serial,
        revoke_reason="superseded" if revoke_serial else None,
    )
