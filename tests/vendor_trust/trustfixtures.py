"""Minting vendor PKIs for the vendor_trust tests: root → intermediate → IDevID.

Real certificates signed with cryptography; keys are generated once per
process (RSA generation dominates the run time otherwise). The
hardwareModuleName otherName is encoded with asn1crypto, independently of
the pyasn1 decoder identity.py uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence, Union

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine

from storage.db import make_engine
from vendor_trust.anchors import VendorTrust
from vendor_trust.db import migrate

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

NOW = datetime.now(timezone.utc).replace(microsecond=0)
NO_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)  # RFC 5280 §4.1.2.5
HARDWARE_MODULE_NAME = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4")
HW_TYPE = "1.3.6.1.4.1.55555.1.1"


@lru_cache(maxsize=None)
def key(kind: str = "ec", index: int = 0) -> PrivateKey:
    """A key per (kind, index), reused across tests."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(kind)


def name(cn: str | None = None, *, o: str = "Acme Devices", serial: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o)]
    if cn is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    if serial is not None:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attributes)


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: PrivateKey

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(Encoding.PEM)


CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
DEVICE_USAGE = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
Extra = Sequence[tuple[x509.ExtensionType, bool]]


def issue(
    subject: x509.Name,
    subject_key: PrivateKey,
    issuer: Issued | None,
    *,
    ca: bool | None,
    path_length: int | None = None,
    key_usage: x509.KeyUsage | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    san: Sequence[x509.GeneralName] = (),
    extra: Extra = (),
    hash_algorithm: hashes.HashAlgorithm | None = None,
    serial: int | None = None,
    ski: bool = True,
) -> Issued:
    """issuer None: self-signed. ca None: no basicConstraints at all."""
    signer = subject_key if issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.certificate.subject)
        .public_key(subject_key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=30))
        .not_valid_after(not_after or NOW + timedelta(days=365))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=len(subject) == 0)
    if ski:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return Issued(builder.sign(signer, hash_algorithm or hashes.SHA256()), subject_key)


def v1_root(subject: x509.Name, subject_key: PrivateKey) -> Issued:
    """A version 1 self-signed root (no extensions), as some vendors still ship."""
    spki = subject_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    is_ec = isinstance(subject_key, ec.EllipticCurvePrivateKey)
    algorithm = {"algorithm": "sha256_ecdsa" if is_ec else "sha256_rsa"}
    der_name = asn1_x509.Name.load(subject.public_bytes())
    tbs = asn1_x509.TbsCertificate({
        "version": "v1",
        "serial_number": x509.random_serial_number(),
        "signature": algorithm,
        "issuer": der_name,
        "validity": {
            "not_before": asn1_x509.Time({"utc_time": NOW - timedelta(days=30)}),
            "not_after": asn1_x509.Time({"general_time": NO_EXPIRY}),
        },
        "subject": der_name,
        "subject_public_key_info": asn1_x509.PublicKeyInfo.load(spki),
    })
    if isinstance(subject_key, ec.EllipticCurvePrivateKey):
        signature = subject_key.sign(tbs.dump(), ec.ECDSA(hashes.SHA256()))
    else:
        signature = subject_key.sign(tbs.dump(), padding.PKCS1v15(), hashes.SHA256())
    certificate = asn1_x509.Certificate(
        {"tbs_certificate": tbs, "signature_algorithm": algorithm, "signature_value": signature}
    )
    return Issued(x509.load_der_x509_certificate(certificate.dump()), subject_key)


def resign_with_extension_value(
    certificate: x509.Certificate, issuer: Issued, index: int, value: bytes, critical: bool | None = None
) -> x509.Certificate | None:
    """The certificate with extension `index` (mod their number) holding `value`,
    signed again by the genuine issuer: garbage that passes the signature check."""
    extensions = list(certificate.extensions)
    if not extensions:
        return None
    chosen = index % len(extensions)
    builder = (
        x509.CertificateBuilder()
        .subject_name(certificate.subject)
        .issuer_name(certificate.issuer)
        .public_key(certificate.public_key())  # type: ignore[arg-type]
        .serial_number(certificate.serial_number)
        .not_valid_before(certificate.not_valid_before_utc)
        .not_valid_after(certificate.not_valid_after_utc)
    )
    for position, extension in enumerate(extensions):
        if position == chosen:
            # Same OID, arbitrary contents: cryptography encodes it unparsed.
            garbled = x509.UnrecognizedExtension(extension.oid, value)
            builder = builder.add_extension(garbled, extension.critical if critical is None else critical)
        else:
            builder = builder.add_extension(extension.value, extension.critical)
    try:
        return builder.sign(issuer.key, hashes.SHA256())
    except ValueError:
        return None


def resign_sha1(issued: Issued, issuer: Issued) -> Issued:
    """The same certificate signed with SHA-1, which cryptography 50 will not do itself."""
    certificate = asn1_x509.Certificate.load(issued.der)
    is_ec = isinstance(issuer.key, ec.EllipticCurvePrivateKey)
    algorithm = {"algorithm": "sha1_ecdsa" if is_ec else "sha1_rsa"}
    tbs = certificate["tbs_certificate"]
    tbs["signature"] = algorithm
    data = tbs.dump(force=True)
    if isinstance(issuer.key, ec.EllipticCurvePrivateKey):
        signature = issuer.key.sign(data, ec.ECDSA(hashes.SHA1()))
    else:
        signature = issuer.key.sign(data, padding.PKCS1v15(), hashes.SHA1())
    resigned = asn1_x509.Certificate({"tbs_certificate": tbs, "signature_algorithm": algorithm, "signature_value": signature})
    return Issued(x509.load_der_x509_certificate(resigned.dump()), issued.key)


class _HardwareModuleName(asn1_core.Sequence):
    _fields = [("hw_type", asn1_core.ObjectIdentifier), ("hw_serial_num", asn1_core.OctetString)]


def hardware_module_name(serial: bytes, hw_type: str = HW_TYPE) -> x509.OtherName:
    """RFC 4108 §5 otherName."""
    value = _HardwareModuleName({"hw_type": hw_type, "hw_serial_num": serial}).dump()
    return x509.OtherName(HARDWARE_MODULE_NAME, value)


@dataclass(frozen=True)
class VendorPki:
    root: Issued
    intermediate: Issued
    kind: str
    org: str
    _counter: list[int] = field(default_factory=lambda: [10], compare=False)

    def device(
        self,
        serial: str = "SN0001",
        *,
        identity: str = "hardwareModuleName",
        issuer: Issued | None = None,
        **options: object,
    ) -> Issued:
        """An IDevID naming `serial` in its hardwareModuleName, subject serialNumber or CN."""
        self._counter[0] += 1
        options.setdefault("ca", False)
        options.setdefault("key_usage", DEVICE_USAGE)
        san: list[x509.GeneralName] = list(options.pop("san", ()))  # type: ignore[call-overload]
        if identity == "hardwareModuleName":
            subject = x509.Name([])  # IEEE 802.1AR §8.10.4: the subject may be empty
            san.append(hardware_module_name(serial.encode()))
        elif identity == "subject-serialNumber":
            subject = name("Acme router", o=self.org, serial=serial)
        else:
            subject = name(serial, o=self.org)
        return issue(
            subject, key(self.kind, self._counter[0]), issuer or self.intermediate, san=san, **options  # type: ignore[arg-type]
        )

    def chain(self, device: Issued) -> list[x509.Certificate]:
        return [device.certificate, self.intermediate.certificate]


def vendor_pki(
    org: str = "Acme Devices",
    kind: str = "ec",
    *,
    key_offset: int = 0,
    root_path_length: int | None = None,
    root_extra: Extra = (),
    intermediate_extra: Extra = (),
) -> VendorPki:
    root = issue(
        name(f"{org} Root CA", o=org), key(kind, 1 + key_offset), None, ca=True,
        path_length=root_path_length, key_usage=CA_USAGE, not_after=NO_EXPIRY, extra=root_extra,
    )
    intermediate = issue(
        name(f"{org} Device CA", o=org), key(kind, 2 + key_offset), root, ca=True,
        key_usage=CA_USAGE, extra=intermediate_extra,
    )
    return VendorPki(root, intermediate, kind, org)


def make_crl(
    issuer: Issued,
    revoked: Sequence[int] = (),
    *,
    number: int | None = 1,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
    signer: PrivateKey | None = None,
    aki: bool = True,
    reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(this_update or NOW - timedelta(hours=1))
        .next_update(next_update or NOW + timedelta(days=7))
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    for serial in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - timedelta(hours=2))
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(signer or issuer.key, hashes.SHA256())


def crl_der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(Encoding.DER)


def sqlite_engine(directory: Path) -> Engine:
    engine = make_engine(f"sqlite:///{directory / 'trust.db'}", sqlite_synchronous="NORMAL")
    migrate(engine)
    return engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sqlite_engine(tmp_path)
    yield engine
    engine.dispose()


@pytest.fixture
def trust(engine: Engine) -> VendorTrust:
    return VendorTrust(engine)


@pytest.fixture(scope="session")
def acme() -> VendorPki:
    return vendor_pki()


@pytest.fixture(scope="session")
def acme_rsa() -> VendorPki:
    return vendor_pki(kind="rsa")


@pytest.fixture
def acme_trusted(trust: VendorTrust, acme: VendorPki) -> VendorPki:
    trust.add_vendor("acme")
    trust.add_anchor("acme", acme.root.certificate)
    return acme
