"""Errors of vendor trust: what validation refuses, and what the admin got wrong.

Each validation error names the RejectReason value the enrolment core answers
with (`reason`), as a plain string so that vendor_trust does not import ra/.
"""

from __future__ import annotations


class VendorTrustError(Exception):
    """Base of every error vendor_trust raises; nothing else escapes validate()."""

    reason = "bad_request"


class UntrustedChain(VendorTrustError):
    """No acceptable path from the device certificate to a stored vendor anchor."""

    reason = "untrusted_certificate"


class CertificateExpired(VendorTrustError):
    """A certificate of the path is outside its validity period (RFC 5280 §6.1.3(a)(2))."""

    reason = "certificate_expired"


class CertificateNotYetValid(CertificateExpired):
    """notBefore lies after the validation time; the core answers as for expiry."""


class CertificateRevoked(VendorTrustError):
    """A loaded vendor CRL lists a certificate of the path."""

    reason = "certificate_revoked"


class BadIdentity(VendorTrustError):
    """The device certificate names no usable device serial."""

    reason = "bad_request"


class TrustConfigError(VendorTrustError):
    """An admin operation on vendors, anchors or CRLs was refused."""


class UnknownVendor(TrustConfigError):
    pass


class DuplicateVendor(TrustConfigError):
    pass


class UnknownAnchor(TrustConfigError):
    pass


class DuplicateAnchor(TrustConfigError):
    pass


class NotACaCertificate(TrustConfigError):
    """Only CA certificates may become trust anchors."""


class CrlRefused(TrustConfigError):
    """The CRL cannot be parsed, is unusable, or is older than the stored one."""
