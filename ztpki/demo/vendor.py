"""A simulated vendor PKI (root → device CA → IDevIDs, IEEE 802.1AR style:
the device serial in the subject serialNumber) and the instance's trust in it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ztpki.demo.files import private_dir, write_key
from ztpki.instance import Instance

VENDOR = "demo-vendor"


class VendorPki:
    """A vendor root and device CA kept in a directory (made on first use)."""

    def __init__(self, directory: Path, organization: str) -> None:
        self.directory = private_dir(directory)
        self.organization = organization
        self.root, self.root_key = self._authority("root", None)
        self.ca, self.ca_key = self._authority("ca", (self.root, self.root_key))

    def _name(self, common_name: str, serial: str | None = None) -> x509.Name:
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization)]
        if serial is not None:
            attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        return x509.Name(attributes)

    def _authority(
        self, stem: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert_path, key_path = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
        key = ec.generate_private_key(ec.SECP256R1())
        name = self._name(f"{self.organization} {'Root CA' if issuer is None else 'Device CA'}")
        certificate = sign(
            name, key, issuer, years=20 if issuer is None else 15,
            constraints=x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0),
            usage=x509.KeyUsage(False, False, False, False, False, True, True, False, False),
        )
        write_key(key_path, key)
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return certificate, key

    def idevid(self, serial: str) -> dict[str, str]:
        """A factory certificate for the device; its file holds the device
        certificate followed by the device CA and the root."""
        devices = private_dir(self.directory / "devices")
        cert_path, key_path = devices / f"{serial}.pem", devices / f"{serial}.key"
        if not (cert_path.exists() and key_path.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            certificate = sign(
                self._name(f"eNB {serial}", serial), key, (self.ca, self.ca_key), years=10,
                constraints=x509.BasicConstraints(ca=False, path_length=None),
                usage=x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            )
            write_key(key_path, key)
            chain = (certificate, self.ca, self.root)
            cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        return {"serial": serial, "cert": str(cert_path), "key": str(key_path)}


def sign(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    years: int,
    constraints: x509.BasicConstraints,
    usage: x509.KeyUsage,
) -> x509.Certificate:
    issuer_name, issuer_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    now = datetime.now(timezone.utc).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365 * years))
        .add_extension(constraints, critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def trust_vendor(instance: Instance, root: x509.Certificate) -> None:
    instance.trust.add_vendor(VENDOR, exist_ok=True)
    if all(anchor.certificate != root for anchor in instance.trust.anchors(VENDOR)):
        instance.trust.add_anchor(VENDOR, root)
