"""The CMP protection identity of a CA: a key in the token and a certificate
for it, issued by that CA, that signs CMP replies (RFC 9483 §3.2; RFC 9481 §3).

The CA side owns both: the protocol gets a signer and the certificates, and
never opens the token. The key is labelled ``cmp-protection-<ca>`` (EC P-256)
and made on first use. Its certificate (digitalSignature, id-kp-cmcRA) is
recorded in the store by the ordinary issuance cycle, and the store is where
the current one is looked up: the latest valid certificate of profile
``cmp-protection`` issued by that CA whose public key is the token key's.
So several workers and nodes sharing one database and one token agree on it.
It is renewed ``RENEW_BEFORE`` its expiry; the old one stays valid until then.

Two processes on one host making the first certificate at once are kept
apart by an exclusive file lock (``lock_dir``). Nodes on separate hosts may
each issue one in a race; both are valid and all agree on the latest after.
"""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from ca.issuer import Authority, CertificateAuthorities
from ca.profiles import Profile
from ca.store import Store
from ca.template import IssuanceOrder
from hsm import KeyExists, KeyType, Token

log = logging.getLogger("ztpki.ca.protection")

# RFC 6402 §2.10 id-kp-cmcRA: the certificate of an RA that protects CMP replies.
ID_KP_CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")
PROFILE_NAME = "cmp-protection"
RENEW_BEFORE = timedelta(days=30)

# Built in, not read from profiles.toml: an operator's edit of the "server"
# profile must not add keyEncipherment or serverAuth to the CMP signer.
PROTECTION_PROFILE = Profile(
    name=PROFILE_NAME,
    description="CMP reply protection (RFC 9483 §3.2)",
    validity_days=397,
    key_types=("ec-p256",),
    key_usage=frozenset({"digital_signature"}),
    extended_key_usage=(ID_KP_CMC_RA,),
    subject_attributes=("CN",),
    require_cn=True,
    san_types=frozenset(),
)


class ProtectionIdentity(NamedTuple):
    """What signs CMP replies for one CA."""

    key_label: str  # the key in the token
    certificate: x509.Certificate  # the CMP protection certificate
    chain: tuple[x509.Certificate, ...]  # its issuing CA up to the root


def key_label(ca_name: str) -> str:
    return f"cmp-protection-{ca_name}"


def subject_for(ca_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ztpki CMP {ca_name}")])


def due_for_renewal(certificate: x509.Certificate, now: datetime, renew_before: timedelta = RENEW_BEFORE) -> bool:
    return certificate.not_valid_after_utc - now < renew_before


def current_protection_certificate(
    cas: CertificateAuthorities,
    store: Store,
    token: Token,
    ca_name: str | None,
    *,
    lock_dir: Path | None = None,
    pem_dir: Path | None = None,
    now: datetime | None = None,
    renew_before: timedelta = RENEW_BEFORE,
) -> ProtectionIdentity:
    """The CMP protection key and certificate of CA ``ca_name`` (the default
    CA when None): the current one from the store, or a new one when there is
    none for the token key or it expires within ``renew_before``.

    lock_dir: where the lock file lives (the instance home), so that two
    processes on this host do not both issue; None when only one process
    can be asking (tests, the CLI). pem_dir: where to keep a copy of the
    certificate, <key label>.pem, for clients to pin (openssl cmp -srvcert);
    the store stays the truth."""
    authority = cas.authority(ca_name)
    label = key_label(authority.name)
    moment = now or datetime.now(timezone.utc)
    found = _lookup(store, token, authority, label, moment)
    if found is None or _should_renew(found, authority, moment, renew_before):
        with _exclusive(lock_dir, label):
            # Another process may have made it while we waited for the lock.
            found = _lookup(store, token, authority, label, moment)
            if found is None or _should_renew(found, authority, moment, renew_before):
                found = _issue(cas, token, authority, label)
    if pem_dir is not None:
        _write_if_changed(pem_dir / f"{label}.pem", found.public_bytes(serialization.Encoding.PEM))
    return ProtectionIdentity(label, found, authority.chain)


def protection_certificates(store: Store, authority: str) -> list[x509.Certificate]:
    """Every valid CMP protection certificate of the CA in the store, oldest first."""
    records = store.certificates(
        authority=authority, status="valid", subject=subject_for(authority).rfc4514_string(), profile=PROFILE_NAME
    )
    return [x509.load_der_x509_certificate(record.der) for record in records if record.der is not None]


def _lookup(
    store: Store, token: Token, authority: Authority, label: str, now: datetime
) -> x509.Certificate | None:
    if not token.has_key(label):
        return None
    public_key: PublicKeyTypes = token.public_key(label)
    current = None
    for certificate in protection_certificates(store, authority.name):
        if (
            certificate.public_key() == public_key
            and certificate.issuer == authority.certificate.subject
            and certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc
        ):
            current = certificate  # the latest issued wins
    return current


def _should_renew(certificate: x509.Certificate, authority: Authority, now: datetime, renew_before: timedelta) -> bool:
    # A certificate already lasting as long as its CA cannot be bettered:
    # renewing it would issue a new one on every call until the CA is renewed.
    return (
        due_for_renewal(certificate, now, renew_before)
        and certificate.not_valid_after_utc < authority.certificate.not_valid_after_utc
    )


def _issue(cas: CertificateAuthorities, token: Token, authority: Authority, label: str) -> x509.Certificate:
    if not token.has_key(label):
        try:
            token.generate_key(label, KeyType.EC_P256)
        except KeyExists:
            pass  # another node on the same token made it meanwhile
    order = IssuanceOrder(
        ca=authority.name,
        profile=PROFILE_NAME,
        subject=subject_for(authority.name),
        public_key=token.public_key(label),  # type: ignore[arg-type]
    )
    certificate = cas.issue(order, profile=PROTECTION_PROFILE).certificate
    log.info("CMP protection certificate %x issued under %s", certificate.serial_number, authority.name)
    return certificate


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, path)  # a reader sees the old file or the new, never half


@contextmanager
def _exclusive(lock_dir: Path | None, label: str) -> Iterator[None]:
    if lock_dir is None:
        yield
        return
    with (lock_dir / f".{label}.lock").open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


__all__ = [
    "ID_KP_CMC_RA",
    "PROFILE_NAME",
    "PROTECTION_PROFILE",
    "RENEW_BEFORE",
    "ProtectionIdentity",
    "current_protection_certificate",
    "due_for_renewal",
    "key_label",
    "protection_certificates",
    "subject_for",
]
