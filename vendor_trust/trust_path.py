"""Building and checking certification paths of IDevID chains (RFC 5280 §6.1).

Why not cryptography's x509.verification: its policy is the CA/Browser Forum
profile with some extension checks made configurable. What it cannot be told
(cryptography 50): a v1 certificate anywhere in the path is refused, the
trust anchor included ("certificate must be an X509v3 certificate"), yet some
vendors still ship v1 self-signed roots; a critical directoryName name
constraint is a fatal error, and name constraints are only applied to SANs,
never to the subject DN, while a vendor PKI scopes its CAs by subject DN and
IDevIDs often carry no SAN at all; its algorithm policy is fixed, so the SHA-1
IDevIDs of older devices cannot be admitted even deliberately; and its errors
are strings, so "expired" cannot be told from "untrusted" without parsing
messages. So path building and the
802.1AR profile are done here, with cryptography for every signature check.

This module knows nothing of storage or revocation: anchors.py supplies the
anchors and checks CRLs on the path it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from vendor_trust.trust_errors import CertificateExpired, CertificateNotYetValid, NotACaCertificate, UntrustedChain
from vendor_trust.trust_names import check_name_constraints, describe, is_self_issued

# Extensions whose semantics this validator applies, so that they may be critical.
# certificatePolicies may be: with initial-policy-set anyPolicy and no explicit
# policy required (RFC 5280 §6.1.1(c),(f)), its contents cannot fail the path;
# policyConstraints, policyMappings and inhibitAnyPolicy could, and are not
# processed, so critical ones are refused like any unknown critical extension.
UNDERSTOOD_EXTENSIONS = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.NAME_CONSTRAINTS,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.CERTIFICATE_POLICIES,
})

T = TypeVar("T")

MAX_INTERMEDIATES = 8
MAX_CHAIN_LENGTH = 16
# Bounds the work an adversarial pile of same-named intermediates can cause.
SIGNATURE_BUDGET = 64

# Parse failures cryptography raises lazily, when extensions or names are read.
MALFORMED = (
    ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType, x509.InvalidVersion, UnsupportedAlgorithm,
)


@dataclass(frozen=True)
class Anchor:
    vendor: str
    fingerprint: str
    certificate: x509.Certificate


def fingerprint(certificate: x509.Certificate) -> str:
    return sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


def candidate_paths(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Mapping[x509.Name, Sequence[Anchor]],
) -> Iterator[tuple[tuple[x509.Certificate, ...], Anchor]]:
    """Every signature-linked path from leaf to an anchor, likeliest first.

    A path is (leaf, intermediate, ...) plus the anchor that signed its last
    certificate; intermediates may come in any order, unused ones are ignored.
    """
    pool: dict[str, x509.Certificate] = {}
    for certificate in intermediates:
        pool.setdefault(fingerprint(certificate), certificate)
    pool.pop(fingerprint(leaf), None)
    for print_, certificate in list(pool.items()):
        # Devices often send the root too; the anchor ends the path there anyway.
        if any(a.fingerprint == print_ for a in anchors.get(certificate.subject, ())):
            del pool[print_]
    by_subject: dict[x509.Name, list[x509.Certificate]] = {}
    for certificate in pool.values():
        by_subject.setdefault(certificate.subject, []).append(certificate)
    budget = [SIGNATURE_BUDGET]
    verified: dict[tuple[int, int], bool] = {}

    def signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
        key = (id(child), id(parent))
        if key not in verified:
            if budget[0] <= 0:
                raise UntrustedChain("too many candidate issuers in the chain")
            budget[0] -= 1
            verified[key] = _verify_signature(child, parent)
        return verified[key]

    def extend(path: tuple[x509.Certificate, ...]) -> Iterator[tuple[tuple[x509.Certificate, ...], Anchor]]:
        working = path[-1]
        for anchor in _likeliest(working, anchors.get(working.issuer, ()), lambda a: a.certificate):
            if signed_by(working, anchor.certificate):
                yield path, anchor
        if len(path) > MAX_INTERMEDIATES:
            return
        for parent in _likeliest(working, by_subject.get(working.issuer, ()), lambda c: c):
            if any(parent is member for member in path):
                continue
            if signed_by(working, parent):
                yield from extend((*path, parent))

    return extend((leaf,))


def check_structure(path: Sequence[x509.Certificate], anchor: Anchor) -> None:
    """Every check of the 802.1AR-aware profile except validity and revocation."""
    for certificate in path:
        _check_critical_extensions(certificate)
    _check_leaf(path[0])
    for certificate in path[1:]:
        _check_ca(certificate)
    _check_path_length(path, anchor.certificate)
    check_name_constraints(path, anchor.certificate)


def check_validity(path: Sequence[x509.Certificate], at: datetime) -> None:
    """RFC 5280 §6.1.3(a)(2). The anchor's own validity is not part of the path
    (§6.1.1(d)): it stays trusted until the admin removes it."""
    for certificate in path:
        # IEEE 802.1AR §8.5 and RFC 5280 §4.1.2.5: an IDevID with no
        # well-defined expiry carries 99991231235959Z, which compares as the
        # latest representable time and so is simply never passed.
        if at < certificate.not_valid_before_utc:
            raise CertificateNotYetValid(
                f"{describe(certificate)} is not valid before {certificate.not_valid_before_utc.isoformat()}"
            )
        if at > certificate.not_valid_after_utc:
            raise CertificateExpired(
                f"{describe(certificate)} expired at {certificate.not_valid_after_utc.isoformat()}"
            )


def _verify_signature(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return _verify_sha1_signature(child, parent)
    return True


def _verify_sha1_signature(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """cryptography 50 no longer verifies SHA-1 certificate signatures, yet
    IDevIDs of the 2000s carry them (Cisco's first SUDI CA signed with
    SHA-1). Verify them here so that check_algorithms decides, with a
    clear message, instead of the path silently not existing."""
    if child.issuer != parent.subject:
        return False
    algorithm = child.signature_algorithm_oid
    public_key = parent.public_key()
    try:
        if algorithm == SignatureAlgorithmOID.RSA_WITH_SHA1 and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA1())
        elif algorithm == SignatureAlgorithmOID.ECDSA_WITH_SHA1 and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(hashes.SHA1()))
        else:
            return False
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


def _likeliest(
    child: x509.Certificate, candidates: Sequence[T], cert_of: Callable[[T], x509.Certificate]
) -> list[T]:
    """Candidates whose subjectKeyIdentifier matches the child's AKI first."""
    wanted = _authority_key_id(child)
    if wanted is None or len(candidates) < 2:
        return list(candidates)
    return sorted(candidates, key=lambda c: 0 if _subject_key_id(cert_of(c)) == wanted else 1)


def _authority_key_id(certificate: x509.Certificate) -> bytes | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _subject_key_id(certificate: x509.Certificate) -> bytes | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _check_critical_extensions(certificate: x509.Certificate) -> None:
    # RFC 5280 §4.2: a certificate with a critical extension we do not process
    # MUST be rejected.
    for extension in certificate.extensions:
        if extension.critical and extension.oid not in UNDERSTOOD_EXTENSIONS:
            raise UntrustedChain(
                f"{describe(certificate)} carries the unsupported critical extension "
                f"{extension.oid.dotted_string}"
            )


def _basic_constraints(certificate: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _key_usage(certificate: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _check_leaf(leaf: x509.Certificate) -> None:
    constraints = _basic_constraints(leaf)
    if constraints is not None and constraints.ca:
        raise UntrustedChain(f"the device certificate {describe(leaf)} is a CA certificate")
    usage = _key_usage(leaf)
    if usage is not None:
        # The device proves possession by signing (CMP protection, TLS client
        # authentication): RFC 5280 §4.2.1.3 digitalSignature.
        if not usage.digital_signature:
            raise UntrustedChain(f"the device certificate {describe(leaf)} does not allow digitalSignature")
        if usage.key_cert_sign:
            raise UntrustedChain(f"the device certificate {describe(leaf)} may sign certificates")


def _check_ca(certificate: x509.Certificate) -> None:
    # RFC 5280 §6.1.4(k): an intermediate must say cA=TRUE; treating a v1
    # intermediate as a CA is left to local policy, and ours refuses it.
    constraints = _basic_constraints(certificate)
    if constraints is None or not constraints.ca:
        raise UntrustedChain(f"{describe(certificate)} issues certificates but is not a CA (basicConstraints)")
    usage = _key_usage(certificate)
    # RFC 5280 §6.1.4(n).
    if usage is not None and not usage.key_cert_sign:
        raise UntrustedChain(f"{describe(certificate)} issues certificates but its keyUsage lacks keyCertSign")


def _check_path_length(path: Sequence[x509.Certificate], anchor: x509.Certificate) -> None:
    """RFC 5280 §6.1.4(l)-(m), starting from the anchor's own pathLenConstraint (RFC 5937 §3)."""
    anchor_constraints = _basic_constraints(anchor)
    remaining = anchor_constraints.path_length if anchor_constraints is not None else None
    for certificate in reversed(path[1:]):
        if not is_self_issued(certificate):
            if remaining is not None:
                if remaining <= 0:
                    raise UntrustedChain(f"{describe(certificate)} exceeds a CA's pathLenConstraint")
                remaining -= 1
        constraints = _basic_constraints(certificate)
        if constraints is not None and constraints.path_length is not None:
            if remaining is None or constraints.path_length < remaining:
                remaining = constraints.path_length


MIN_RSA_BITS = 2048


def check_algorithms(path: Sequence[x509.Certificate], *, allow_sha1: bool) -> None:
    """MD5 is never accepted, SHA-1 only where the admin allowed it (collisions);
    RSA keys below 2048 bits never (IEEE 802.1AR's suites start at RSA-2048)."""
    for certificate in path:
        algorithm = certificate.signature_hash_algorithm
        if isinstance(algorithm, hashes.MD5) or (isinstance(algorithm, hashes.SHA1) and not allow_sha1):
            raise UntrustedChain(f"{describe(certificate)} is signed with {algorithm.name}, which is refused")
        public_key = certificate.public_key()
        if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < MIN_RSA_BITS:
            raise UntrustedChain(f"{describe(certificate)} has a {public_key.key_size}-bit RSA key, below {MIN_RSA_BITS}")


def check_anchor_certificate(certificate: x509.Certificate) -> None:
    """A trust anchor must be a CA: cA=TRUE, or a v1 self-signed root (RFC 5280 §6.1.1(d)
    needs only a name and a key, and some vendors still ship v1 roots)."""
    try:
        if certificate.version == x509.Version.v1:
            if certificate.subject != certificate.issuer:
                raise NotACaCertificate(f"{describe(certificate)} is a v1 certificate but not a self-signed root")
            if not _verify_signature(certificate, certificate):
                raise NotACaCertificate(f"{describe(certificate)} is a v1 certificate whose self-signature does not verify")
            return
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise NotACaCertificate(f"{describe(certificate)} is not a CA certificate (basicConstraints cA is not TRUE)")
        try:
            usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            return
        if not usage.key_cert_sign:
            raise NotACaCertificate(f"{describe(certificate)} is a CA certificate whose keyUsage lacks keyCertSign")
    except MALFORMED as exc:
        raise NotACaCertificate(f"malformed certificate: {exc}") from None
