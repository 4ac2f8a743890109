"""RFC 5280 linting with pkilint, run on the TBSCertificate before the token signs."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


class LintError(ValueError):
    """The certificate about to be signed breaks RFC 5280."""

    def __init__(self, findings: list[str]) -> None:
        super().__init__("certificate fails RFC 5280 lint: " + "; ".join(findings))
        self.findings = findings


@lru_cache(maxsize=1)
def _validator() -> Any:
    # pkilint is imported lazily: it takes ~0.5 s to load and profiles may
    # switch linting off.
    from pkilint.pkix import certificate, extension, name

    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def lint_findings(certificate_der: bytes) -> list[str]:
    """Findings of severity ERROR or FATAL, as 'CODE: message' strings."""
    from pkilint import loader
    from pkilint.validation import ValidationFindingSeverity

    document = loader.RFC5280CertificateDocumentLoader().load_der_document(
        certificate_der, "certificate"
    )
    findings = []
    for result in _validator().validate(document.root):
        for description in result.finding_descriptions:
            if description.finding.severity <= ValidationFindingSeverity.ERROR:
                message = f": {description.message}" if description.message else ""
                findings.append(f"{description.finding.code}{message}")
    return findings


def check(certificate_der: bytes) -> None:
    findings = lint_findings(certificate_der)
    if findings:
        raise LintError(findings)
