"""Checks on certificates named inside CMP messages: certConf's certHash
(RFC 4210 §5.3.18, RFC 9480 §2.10) and kur's oldCertId (RFC 9483 §4.1.3)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from protocols.cmp import der
from protocols.cmp.bodies import FailInfo
from protocols.cmp.header import InfoTypeAndValue
from protocols.cmp.refusals import CmpRefusal
from ra.requests import CurrentCertificate, Evidence

# certHash algorithms (RFC 9480 §2.10 hashAlg; RFC 9481 §2).
_HASH_OIDS: dict[str, type[hashes.HashAlgorithm]] = {
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}


ID_REG_CTRL_OLD_CERT_ID = "1.3.6.1.5.5.7.5.1.5"  # RFC 4211 §6.5


def check_old_cert_id(controls: tuple[InfoTypeAndValue, ...], evidence: tuple[Evidence, ...]) -> None:
    """RFC 4210 §5.3.5, RFC 9483 §4.1.3: oldCertId, when sent, names the
    certificate that protects the kur (its serial number; the issuer is the
    CA's business when it authenticates that certificate)."""
    current = next((e.certificate for e in evidence if isinstance(e, CurrentCertificate)), None)
    for control in controls:
        if control.info_type != ID_REG_CTRL_OLD_CERT_ID or control.value is None or current is None:
            continue
        value = control.value
        try:
            parts = der.children(value, der.read_tlv(value, 0))
            serial_part = parts[1] if len(parts) == 2 else None
            if serial_part is None or serial_part.tag != der.TAG_INTEGER:
                raise der.DerError("CertId is not issuer and serialNumber")
            serial = int.from_bytes(serial_part.value(value), "big", signed=True)
        except der.DerError as exc:
            raise CmpRefusal(FailInfo.BAD_DATA_FORMAT, "oldCertId does not parse: %s" % exc) from None
        if serial != current.serial_number:
            raise CmpRefusal(FailInfo.BAD_CERT_ID, "oldCertId names another certificate than the one protecting the kur")


def cert_hash(certificate_der: bytes, hash_oid: str | None) -> bytes | None:
    """certHash (RFC 4210 §5.3.18; RFC 9480 §2.10): hashAlg if given, else the
    hash of the certificate's signature algorithm (SHA-512 for Ed25519)."""
    if hash_oid is not None:
        algorithm = _HASH_OIDS.get(hash_oid)
        if algorithm is None:
            return None
        chosen: hashes.HashAlgorithm = algorithm()
    else:
        certificate = x509.load_der_x509_certificate(certificate_der)
        chosen = certificate.signature_hash_algorithm or hashes.SHA512()
    digest = hashes.Hash(chosen)
    digest.update(certificate_der)
    return digest.finalize()
