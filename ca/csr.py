"""PKCS#10 requests (RFC 2986) → issuance orders, checked against a profile.

The CSR only proposes: its subject and SANs are filtered by the profile, and
extensions it requests beyond what the profile grants are refused.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID

from ca.profiles import KEY_USAGES, PolicyViolation, Profile
from ca.template import IssuanceOrder

MAX_CSR_BYTES = 64 * 1024


class BadRequest(ValueError):
    """The request is not a well-formed, correctly signed PKCS#10 CSR."""


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR and check its self-signature (RFC 2986 §3)."""
    if len(data) > MAX_CSR_BYTES:
        raise BadRequest(f"CSR larger than {MAX_CSR_BYTES} bytes")
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise BadRequest(f"not a PKCS#10 certificate request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise BadRequest(f"cannot check the CSR signature: {exc}") from None
    if not valid:
        raise BadRequest("the CSR signature does not verify (no proof of possession)")
    return csr


def requested_extensions(csr: x509.CertificateSigningRequest) -> x509.Extensions:
    try:
        return csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise BadRequest(f"the CSR's extension request does not parse: {exc}") from None


def check_requested_extensions(extensions: x509.Extensions, profile: Profile) -> None:
    """Refuse a CSR asking for more than the profile grants."""
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints) and value.ca and not profile.is_ca:
            raise PolicyViolation(
                f"the request asks for CA:TRUE; profile {profile.name!r} issues end-entity certificates"
            )
        if isinstance(value, x509.KeyUsage):
            asked = {usage for usage in KEY_USAGES if getattr(value, usage)}
            if value.key_cert_sign or value.crl_sign:
                asked.add("key_cert_sign" if value.key_cert_sign else "crl_sign")
            extra = asked - set(profile.key_usage)
            if extra:
                raise PolicyViolation(
                    f"the request asks for key usage {', '.join(sorted(extra))}, "
                    f"which profile {profile.name!r} does not allow"
                )
        if isinstance(value, x509.ExtendedKeyUsage):
            extra_ekus = [oid.dotted_string for oid in value if oid not in profile.extended_key_usage]
            if extra_ekus:
                raise PolicyViolation(
                    f"the request asks for extended key usage {', '.join(extra_ekus)}, "
                    f"which profile {profile.name!r} does not allow"
                )


def order_from_csr(
    csr: x509.CertificateSigningRequest,
    profile: Profile,
    *,
    ca: str,
    device_id: str | None = None,
    validity_days: int | None = None,
) -> IssuanceOrder:
    extensions = requested_extensions(csr)
    check_requested_extensions(extensions, profile)
    sans: tuple[x509.GeneralName, ...] = ()
    try:
        san = extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        sans = tuple(san)  # type: ignore[arg-type]
    except x509.ExtensionNotFound:
        pass
    try:
        public_key = csr.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise BadRequest(f"unsupported public key in the CSR: {exc}") from None
    profile.check_public_key(public_key)
    return IssuanceOrder(
        ca=ca,
        profile=profile.name,
        subject=csr.subject,
        public_key=public_key,
        sans=sans,
        device_id=device_id,
        validity_days=validity_days,
    )
