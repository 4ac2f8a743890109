"""pyasn1 specifications for CMP with certificates kept as opaque DER.

The structures are RFC 9480 §2 / Appendix A (pyasn1_alt_modules.rfc9480)
except that every certificate a reply carries — CertOrEncCert.certificate and
CertRepMessage.caPubs (RFC 4210 §5.3.4) — is an ASN.1 ANY: pyasn1 keeps its
DER untouched and cryptography loads it when someone asks. extraCerts never
reach pyasn1 at all (codec.py splits them off with der.py). Decoding a
certificate with pyasn1 costs ~1.7 ms; with these specs a reply decodes ~2.5×
faster and still re-encodes byte for byte (LIMITS.md §4).
"""

from __future__ import annotations

from pyasn1.type import constraint, namedtype, tag, univ
from pyasn1_alt_modules import rfc9480

# CMPCertificate ::= CHOICE { x509v3PKCert Certificate, ... } (RFC 4210 §5.1):
# an untagged ANY accepts the Certificate SEQUENCE as it came.
OpaqueCertificate = univ.Any


class OpaqueCertOrEncCert(univ.Choice):  # type: ignore[misc]  # pyasn1 has no type hints
    """RFC 4210 §5.3.4 CertOrEncCert with the certificate as opaque DER."""

    componentType = namedtype.NamedTypes(
        # An explicitly tagged ANY: pyasn1 strips [0] and keeps the inner
        # Certificate DER as the value.
        namedtype.NamedType(
            "certificate",
            univ.Any().subtype(explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, 0)),
        ),
        namedtype.NamedType(
            "encryptedCert",
            rfc9480.EncryptedKey().subtype(explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatSimple, 1)),
        ),
    )


class OpaqueCertifiedKeyPair(univ.Sequence):  # type: ignore[misc]  # pyasn1 has no type hints
    """RFC 4210 §5.3.4 CertifiedKeyPair."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("certOrEncCert", OpaqueCertOrEncCert()),
        namedtype.OptionalNamedType(
            "privateKey",
            rfc9480.EncryptedKey().subtype(explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatSimple, 0)),
        ),
        namedtype.OptionalNamedType(
            "publicationInfo",
            rfc9480.PKIPublicationInfo().subtype(explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatSimple, 1)),
        ),
    )


class OpaqueCertResponse(univ.Sequence):  # type: ignore[misc]  # pyasn1 has no type hints
    """RFC 4210 §5.3.4 CertResponse."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("certReqId", univ.Integer()),
        namedtype.NamedType("status", rfc9480.PKIStatusInfo()),
        namedtype.OptionalNamedType("certifiedKeyPair", OpaqueCertifiedKeyPair()),
        namedtype.OptionalNamedType("rspInfo", univ.OctetString()),
    )


class OpaqueCertRepMessage(univ.Sequence):  # type: ignore[misc]  # pyasn1 has no type hints
    """RFC 4210 §5.3.4 CertRepMessage; caPubs as opaque certificates."""

    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType(
            "caPubs",
            univ.SequenceOf(componentType=OpaqueCertificate()).subtype(
                sizeSpec=constraint.ValueSizeConstraint(1, float("inf")),
                explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, 1),
            ),
        ),
        namedtype.NamedType("response", univ.SequenceOf(componentType=OpaqueCertResponse())),
    )


# RFC 4210 §5.1.2 PKIBody tags of the CertRepMessage alternatives.
_CERT_REP_BODIES = {"ip": 1, "cp": 3, "kup": 8, "ccp": 14}


def _opaque_body_types() -> namedtype.NamedTypes:
    types = []
    for named in rfc9480.PKIBody.componentType.namedTypes:
        number = _CERT_REP_BODIES.get(named.name)
        if number is None:
            types.append(named)
        else:
            spec = OpaqueCertRepMessage().subtype(
                explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, number)
            )
            types.append(namedtype.NamedType(named.name, spec))
    return namedtype.NamedTypes(*types)


class OpaquePKIBody(univ.Choice):  # type: ignore[misc]  # pyasn1 has no type hints
    """RFC 4210 §5.1.2 / RFC 9480 PKIBody with opaque reply certificates."""

    componentType = _opaque_body_types()


def _opaque_header_types() -> namedtype.NamedTypes:
    # sender and recipient as untagged ANY: pyasn1's GeneralName spec (with
    # ORAddress and friends) costs more than the rest of the header together.
    types = []
    for named in rfc9480.PKIHeader.componentType.namedTypes:
        if named.name in ("sender", "recipient"):
            types.append(namedtype.NamedType(named.name, univ.Any()))
        else:
            types.append(named)
    return namedtype.NamedTypes(*types)


class OpaquePKIHeader(univ.Sequence):  # type: ignore[misc]  # pyasn1 has no type hints
    """RFC 4210 §5.1.1 PKIHeader with sender and recipient as GeneralName DER."""

    componentType = _opaque_header_types()


PKIStatusInfo = rfc9480.PKIStatusInfo
PKIFailureInfo = rfc9480.PKIFailureInfo
PKIFreeText = rfc9480.PKIFreeText
