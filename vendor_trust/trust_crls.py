"""Vendor CRLs: parsing what the admin loads, and revocation checks on a path.

A CRL is stored under its issuer key id (the AKI keyIdentifier in hex, else
the SHA-256 of the issuer name) and its signature is checked when it is used,
against the certificate of the path that issued the checked certificate
(RFC 5280 §6.3.3(f)-(g)).

A stored CRL whose signature does not verify against that issuer is ignored
with a warning rather than failing the path. Its contents are unauthenticated
(§6.3.3 forbids using them), so treating it as absent gives the same answer as
having no CRL, which is how every path without a loaded CRL is validated. The
alternative, failing closed, would let one wrongly loaded file refuse every
device of a vendor. Forgeries are kept out where possible at load time
instead: a CRL whose issuer is an anchor, or whose issuer certificate the
admin supplies, must verify before it is stored.

A CRL past its nextUpdate still revokes: a revoked certificate stays revoked
(§5.3.1 leaves no way back except certificateHold); the staleness is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import Any, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID
from sqlalchemy import Engine, select

from storage import db
from vendor_trust.schema import vendor_crls
from vendor_trust.trust_errors import CertificateRevoked, CrlRefused
from vendor_trust.trust_names import describe

log = logging.getLogger(__name__)

# RFC 5280 §5.2: a CRL with a critical extension we cannot process MUST NOT
# be used. Delta CRLs (§5.2.4) and indirect CRLs (§5.2.5, §5.3.3) are not
# handled: they are refused at load, whatever their criticality.
_UNDERSTOOD_CRL_EXTENSIONS = frozenset({
    ExtensionOID.CRL_NUMBER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.ISSUER_ALTERNATIVE_NAME,
    ExtensionOID.ISSUING_DISTRIBUTION_POINT,
    ExtensionOID.FRESHEST_CRL,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
})
_MAX_CACHED = 4096
_UNDERSTOOD_ENTRY_EXTENSIONS = frozenset({CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.INVALIDITY_DATE})


@dataclass(frozen=True)
class ParsedCrl:
    crl: x509.CertificateRevocationList
    der: bytes
    issuer_key_id: str
    crl_number: int | None
    this_update: datetime
    next_update: datetime | None


def parse_crl(data: bytes) -> ParsedCrl:
    """A full, direct CRL in PEM or DER; CrlRefused otherwise."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        return _parsed(crl)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType, UnsupportedAlgorithm) as exc:
        raise CrlRefused(f"not a usable CRL: {exc}") from None


def _parsed(crl: x509.CertificateRevocationList) -> ParsedCrl:
    extensions = crl.extensions
    for extension in extensions:
        if extension.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            raise CrlRefused("delta CRLs are not supported: load the full CRL")
        if extension.critical and extension.oid not in _UNDERSTOOD_CRL_EXTENSIONS:
            raise CrlRefused(f"the CRL carries the unsupported critical extension {extension.oid.dotted_string}")
        if isinstance(extension.value, x509.IssuingDistributionPoint) and extension.value.indirect_crl:
            raise CrlRefused("indirect CRLs are not supported")
    for entry in crl:
        for entry_extension in entry.extensions:
            if entry_extension.oid == CRLEntryExtensionOID.CERTIFICATE_ISSUER:
                raise CrlRefused("indirect CRLs (certificateIssuer entries) are not supported")
            if entry_extension.critical and entry_extension.oid not in _UNDERSTOOD_ENTRY_EXTENSIONS:
                raise CrlRefused(
                    f"a CRL entry carries the unsupported critical extension {entry_extension.oid.dotted_string}"
                )
    number: int | None
    try:
        number = extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return ParsedCrl(
        crl=crl,
        der=crl.public_bytes(Encoding.DER),
        issuer_key_id=crl_issuer_key_id(crl),
        crl_number=number,
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
    )


def crl_issuer_key_id(crl: x509.CertificateRevocationList) -> str:
    try:
        key_id = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        key_id = None
    if key_id:
        return key_id.hex()
    return sha256(crl.issuer.public_bytes()).hexdigest()


def issuer_lookup_keys(issuer: x509.Certificate) -> set[str]:
    """Every issuer key id under which a CRL of this CA may have been stored."""
    keys = {sha256(issuer.subject.public_bytes()).hexdigest()}
    try:
        keys.add(issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex())
    except x509.ExtensionNotFound:
        pass
    try:
        # RFC 5280 §4.2.1.2 method (1): the AKI a CRL carries is usually this
        # SHA-1 even when the CA certificate has no SKI of its own.
        keys.add(x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest.hex())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        pass
    return keys


def refusal_to_replace(new: ParsedCrl, old: ParsedCrl) -> str | None:
    """Why `new` may not replace the stored `old` (RFC 5280 §5.2.3: crlNumber only grows)."""
    if new.crl_number is not None and old.crl_number is not None:
        if new.crl_number < old.crl_number:
            return f"its crlNumber {new.crl_number} is older than the stored CRL's {old.crl_number}"
        if new.crl_number == old.crl_number:
            return f"the stored CRL has the same crlNumber {old.crl_number} with different contents"
        return None
    if new.this_update < old.this_update:
        return f"its thisUpdate {new.this_update.isoformat()} is older than the stored CRL's"
    if new.this_update == old.this_update:
        return "the stored CRL has the same thisUpdate with different contents"
    return None


def signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    if crl.issuer != issuer.subject:
        return False
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def revocation_entry(crl: x509.CertificateRevocationList, certificate: x509.Certificate) -> x509.RevokedCertificate | None:
    entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
    if entry is None:
        return None
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return entry
    # §5.3.1: removeFromCRL belongs in delta CRLs; in a full CRL it un-lists.
    return None if reason == x509.ReasonFlags.remove_from_crl else entry


class RevocationChecker:
    """Reads the CRL rows of a path's issuers on every check, so a newly
    loaded CRL applies to the next request; parsed CRLs and signature results
    are kept in memory keyed by the row's version."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._parsed: dict[int, tuple[tuple[Any, ...], ParsedCrl]] = {}
        self._signatures: dict[tuple[int, tuple[Any, ...], bytes], bool] = {}

    def check(self, path: Sequence[x509.Certificate], anchor: x509.Certificate, at: datetime) -> None:
        issuers = (*path[1:], anchor)
        keys = [issuer_lookup_keys(issuer) for issuer in issuers]
        crls = self._crls(set().union(*keys))
        if not crls:
            return
        for certificate, issuer, issuer_keys in zip(path, issuers, keys):
            for row_id, version, parsed in crls:
                if parsed.issuer_key_id not in issuer_keys or parsed.crl.issuer != issuer.subject:
                    continue
                if not self._verified(row_id, version, parsed, issuer):
                    log.warning(
                        "vendor CRL of %s (key id %s) does not verify against the issuing certificate; ignored",
                        describe(issuer), parsed.issuer_key_id,
                    )
                    continue
                if parsed.next_update is not None and parsed.next_update < at:
                    log.warning(
                        "vendor CRL of %s is past its nextUpdate %s; still applied",
                        describe(issuer), parsed.next_update.isoformat(),
                    )
                entry = revocation_entry(parsed.crl, certificate)
                if entry is not None:
                    raise CertificateRevoked(
                        f"{describe(certificate)} was revoked by {describe(issuer)} "
                        f"on {entry.revocation_date_utc.isoformat()}{_reason(entry)}"
                    )

    def _crls(self, keys: set[str]) -> list[tuple[int, tuple[Any, ...], ParsedCrl]]:
        columns = (vendor_crls.c.id, vendor_crls.c.crl_number, vendor_crls.c.this_update, vendor_crls.c.loaded_at)
        with db.connect(self.engine) as conn:
            rows = conn.execute(select(*columns).where(vendor_crls.c.issuer_key_id.in_(sorted(keys)))).all()
            if len(self._parsed) >= _MAX_CACHED:
                self._parsed.clear()
            versions = {row.id: (row.crl_number, row.this_update, row.loaded_at) for row in rows}
            stale = [i for i, v in versions.items() if i not in self._parsed or self._parsed[i][0] != v]
            if stale:
                for row in conn.execute(select(vendor_crls.c.id, vendor_crls.c.der).where(vendor_crls.c.id.in_(stale))):
                    try:
                        self._parsed[row.id] = (versions[row.id], parse_crl(bytes(row.der)))
                    except CrlRefused as exc:
                        log.error("stored vendor CRL %d cannot be used: %s", row.id, exc)
        return [(i, v, self._parsed[i][1]) for i, v in versions.items() if i in self._parsed and self._parsed[i][0] == v]

    def _verified(self, row_id: int, version: tuple[Any, ...], parsed: ParsedCrl, issuer: x509.Certificate) -> bool:
        key = (row_id, version, issuer.fingerprint(hashes.SHA256()))
        if key not in self._signatures:
            if len(self._signatures) >= _MAX_CACHED:
                self._signatures.clear()
            self._signatures[key] = signed_by(parsed.crl, issuer)
        return self._signatures[key]


def _reason(entry: x509.RevokedCertificate) -> str:
    try:
        return f" ({entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value})"
    except x509.ExtensionNotFound:
        return ""

