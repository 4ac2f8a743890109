"""The CA: signs what it is ordered, records every certificate first.

Issuance cycle (Boulder's "record before sign"):
  template from the profile → lint → store the serial and TBSCertificate as
  'signing' → the token signs → verify the signature with the CA public key →
  store the certificate as 'valid' → return it.
A crash between the steps leaves a 'signing' row: the store always lists
every serial the token may have signed. Reconciliation (ca/reconcile.py)
later revokes such a row as possibly issued, so OCSP and the CRL account for
it too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ca import lint, signing
from storage import db
from ca.profiles import PolicyViolation, Profile
from storage.db import Conflict, NotFound
from ca.store import AuthorityRecord, Store
from ca.template import IssuanceOrder, IssuerFacts, build_template
from hsm import HsmError, SignAlgorithm, Token


class IssuanceError(Exception):
    """The CA could not produce the certificate; nothing was issued."""


class UnknownProfile(IssuanceError, LookupError):
    pass


class UnknownAuthority(IssuanceError, LookupError):
    pass


@dataclass(frozen=True)
class UrlScheme:
    """Where this instance publishes CRLs, OCSP and CA certificates."""

    base_url: str

    def crl_url(self, ca: str) -> str:
        return f"{self.base_url.rstrip('/')}/crl/{ca}.crl"

    def ocsp_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/ocsp"

    def issuers_url(self, ca: str) -> str:
        return f"{self.base_url.rstrip('/')}/ca/{ca}.cer"


@dataclass(frozen=True)
class Authority:
    """A CA as loaded for signing: its record, certificate and chain to the root."""

    record: AuthorityRecord
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # this CA first, the root last

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def algorithm(self) -> SignAlgorithm:
        return SignAlgorithm(self.record.sign_algorithm)

    @property
    def ski(self) -> x509.SubjectKeyIdentifier:
        return self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    der: bytes
    chain: tuple[x509.Certificate, ...]  # the issuing CA up to the root

    @property
    def serial(self) -> int:
        return self.certificate.serial_number


class CertificateAuthorities:
    """All CAs of an instance and issuance under any of them."""

    def __init__(
        self,
        store: Store,
        token: Token,
        profiles: Mapping[str, Profile],
        urls: UrlScheme,
        *,
        default_ca: str | None = None,
    ) -> None:
        self.store = store
        self.token = token
        self.profiles = dict(profiles)
        self.urls = urls
        self.default_ca = default_ca
        self._loaded: dict[str, Authority] = {}
        # token.signer() asks the token for the key's type: once per CA key, not per certificate.
        self._signers: dict[tuple[str, str], signing.Signer] = {}
        self._lock = threading.Lock()

    # -- authorities ---------------------------------------------------------

    def authority(self, name: str | None = None) -> Authority:
        name = name or self.default_ca
        if name is None:
            raise UnknownAuthority("no CA named and no default CA configured")
        with self._lock:
            cached = self._loaded.get(name)
        if cached is not None:
            return cached
        try:
            record = self.store.authority(name)
        except NotFound:
            raise UnknownAuthority(f"no CA named {name!r}") from None
        chain = [x509.load_der_x509_certificate(record.certificate)]
        parent_id = record.parent_id
        while parent_id is not None:
            parent = self.store.authority_by_id(parent_id)
            chain.append(x509.load_der_x509_certificate(parent.certificate))
            parent_id = parent.parent_id
        loaded = Authority(record=record, certificate=chain[0], chain=tuple(chain))
        with self._lock:
            self._loaded[name] = loaded
        return loaded

    def forget(self) -> None:
        """Reload CA records on next use (after a CA was added or changed)."""
        with self._lock:
            self._loaded.clear()
            self._signers.clear()

    def issuer_facts(self, authority: Authority) -> IssuerFacts:
        return IssuerFacts(
            name=authority.certificate.subject,
            ski=authority.ski,
            not_after=authority.certificate.not_valid_after_utc,
            crl_url=self.urls.crl_url(authority.name),
            ocsp_url=self.urls.ocsp_url(),
            issuers_url=self.urls.issuers_url(authority.name),
        )

    def profile(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles))
            raise UnknownProfile(f"no profile named {name!r} (known: {known})") from None

    # -- issuance ------------------------------------------------------------

    def issue(self, order: IssuanceOrder, *, profile: Profile | None = None) -> IssuedCertificate:
        authority = self.authority(order.ca)
        if authority.record.kind != "issuing" and profile is None:
            # Roots sign only CA certificates; end entities come from issuing CAs.
            raise IssuanceError(
                f"CA {authority.name!r} is a {authority.record.kind} CA; issue under an issuing CA"
            )
        profile = profile or self.profile(order.profile)
        return self.sign_order(order, profile, authority, self.issuer_facts(authority))

    def sign_order(
        self,
        order: IssuanceOrder,
        profile: Profile,
        authority: Authority,
        facts: IssuerFacts,
    ) -> IssuedCertificate:
        signer = self._signer(authority)
        if profile.lint:
            # pkilint takes milliseconds: when the request runs in a unit of
            # work, commit what it wrote so far rather than hold SQLite's
            # write lock (and other workers) through the lint.
            db.commit_point(self.store.engine)
        for _attempt in range(3):
            template = build_template(order, profile, facts, serial=x509.random_serial_number())
            tbs = signing.tbs_certificate(template.builder, authority.algorithm)
            if profile.lint:
                lint.check(signing.unsigned_certificate(tbs, authority.algorithm))
            try:
                self.store.reserve_serial(
                    authority_id=authority.record.id,
                    serial=template.serial,
                    tbs=tbs,
                    subject=template.subject.rfc4514_string(),
                    sans=[describe_general_name(n) for n in template.sans],
                    device_id=order.device_id,
                    profile=profile.name,
                    not_before=template.not_before,
                    not_after=template.not_after,
                )
                break
            except Conflict:
                continue  # a 159-bit random serial collided; draw another
        else:
            raise IssuanceError("could not draw a unique serial number")
        return self._sign_reserved(authority, signer, template.serial, tbs)

    def _signer(self, authority: Authority) -> signing.Signer:
        key = (authority.record.key_label, authority.algorithm.value)
        with self._lock:
            cached = self._signers.get(key)
        if cached is not None:
            return cached
        try:
            signer = self.token.signer(authority.record.key_label, authority.algorithm)
        except HsmError as exc:
            raise IssuanceError(f"CA key of {authority.name!r} unavailable: {exc}") from None
        with self._lock:
            self._signers[key] = signer
        return signer

    def _sign_reserved(
        self, authority: Authority, signer: signing.Signer, serial: int, tbs: bytes
    ) -> IssuedCertificate:
        db.crash_point("issue.reserved")
        try:
            certificate_der = signing.sign_tbs(tbs, signer)
            certificate = x509.load_der_x509_certificate(certificate_der)
            certificate.verify_directly_issued_by(authority.certificate)
        except (HsmError, InvalidSignature, ValueError, TypeError) as exc:
            self.store.fail_issuance(authority.record.id, serial)
            raise IssuanceError(f"signing failed: {exc}") from None
        db.crash_point("issue.signed")
        try:
            self.store.complete_issuance(authority.record.id, serial, certificate_der)
        except Conflict:
            # Reconciliation revoked the row as possibly issued while the
            # token took longer than its bound: recorded, never delivered.
            raise IssuanceError(f"serial {serial:x} was revoked while being signed") from None
        return IssuedCertificate(
            certificate=certificate, der=certificate_der, chain=authority.chain
        )


def describe_general_name(name: x509.GeneralName) -> str:
    kinds = {
        x509.DNSName: "dns",
        x509.IPAddress: "ip",
        x509.RFC822Name: "email",
        x509.UniformResourceIdentifier: "uri",
    }
    kind = kinds.get(type(name), type(name).__name__)
    return f"{kind}:{name.value}"


__all__ = [
    "Authority",
    "CertificateAuthorities",
    "IssuanceError",
    "IssuanceOrder",
    "IssuedCertificate",
    "PolicyViolation",
    "UnknownAuthority",
    "UnknownProfile",
    "UrlScheme",
]
