"""Verify and create PKIMessage protection (RFC 4210 §5.1.3, RFC 9481 §3 and §6).

The protected bytes are always PkiMessage.protected_part, sliced from the
received message (codec.py), never a re-encoding. Shared-secret MACs are
compared in constant time; signatures are checked by cryptography.
"""

from __future__ import annotations

import hmac
from dataclasses import replace
from typing import Protocol, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_alt_modules import rfc4055, rfc5280

from protocols.cmp import codec, macs
from protocols.cmp.bodies import FailInfo
from protocols.cmp.header import AlgorithmId, PkiHeader, encode_header

MacAlgorithm = Union[macs.PasswordBasedMac, macs.Pbmac1]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_HASH_BY_OID = {
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}

# Signature protection algorithms (RFC 9481 §3.1–3.3). SHA-1 signatures are
# not accepted: RFC 9481 lists none and no current client needs them.
_ECDSA = {
    "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
}
_RSA_PKCS1 = {
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
}
ID_RSASSA_PSS = "1.2.840.113549.1.1.10"
ID_MGF1 = "1.2.840.113549.1.1.8"
ID_ED25519 = "1.3.101.112"
ID_ED448 = "1.3.101.113"

# hsm.SignAlgorithm values (a str enum; protocols never import hsm, STYLE.md)
# → protectionAlg OID (RFC 9481 §3.1–3.2).
_SIGN_ALGORITHM_OIDS = {
    "ecdsa-sha256": "1.2.840.10045.4.3.2",
    "ecdsa-sha384": "1.2.840.10045.4.3.3",
    "rsa-pkcs1-sha256": "1.2.840.113549.1.1.11",
    "rsa-pkcs1-sha384": "1.2.840.113549.1.1.12",
    "rsa-pss-sha256": ID_RSASSA_PSS,
    "rsa-pss-sha384": ID_RSASSA_PSS,
}


class ProtectionError(Exception):
    """Protection missing, unsupported or wrong; fail_info names the PKIFailureInfo bit."""

    def __init__(self, reason: str, fail_info: FailInfo = FailInfo.BAD_MESSAGE_CHECK) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fail_info = fail_info


class Signer(Protocol):
    """What signs replies: hsm.KeySigner, or an in-process key in tests."""

    @property
    def algorithm(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


def is_mac_protected(message: codec.PkiMessage) -> bool:
    """True when protectionAlg is a shared-secret MAC (RFC 4210 §5.1.3.1, RFC 9481 §6.1)."""
    alg = message.header.protection_alg
    return alg is not None and alg.oid in (macs.ID_PASSWORD_BASED_MAC, macs.ID_PBMAC1)


def _require_protection(message: codec.PkiMessage) -> tuple[AlgorithmId, bytes]:
    alg = message.header.protection_alg
    if alg is None or message.protection is None:
        raise ProtectionError("message is not protected (RFC 9483 §3.2 requires protection)")
    return alg, message.protection


def mac_readings(alg: AlgorithmId, max_iterations: int = macs.MAX_ITERATIONS) -> tuple[MacAlgorithm, ...]:
    """The MAC parameters of a protectionAlg (RFC 4210 §5.1.3.1; RFC 9481 §6.1.2)."""
    try:
        if alg.oid == macs.ID_PASSWORD_BASED_MAC:
            return (macs.parse_password_based_mac(alg.parameters, max_iterations),)
        if alg.oid == macs.ID_PBMAC1:
            return macs.pbmac1_candidates(alg.parameters, max_iterations)
    except macs.MacParameterError as exc:
        raise ProtectionError(str(exc), FailInfo.BAD_ALG) from None
    raise ProtectionError("protectionAlg %s is not a MAC" % alg.oid, FailInfo.BAD_ALG)


def verify_mac_protection(
    message: codec.PkiMessage, secret: bytes, max_iterations: int = macs.MAX_ITERATIONS
) -> MacAlgorithm:
    """Check a PasswordBasedMac or PBMAC1 protection (RFC 4210 §5.1.3.1, RFC 9481 §6.1).

    Returns the parameters that matched, for protect_with_mac to answer in kind.
    """
    alg, protection = _require_protection(message)
    for reading in mac_readings(alg, max_iterations):
        if hmac.compare_digest(reading.compute(secret, message.protected_part), protection):
            return reading
    raise ProtectionError("MAC does not verify")


def _pss_hash(parameters: bytes | None) -> str:
    # RSASSA-PSS-params (RFC 4055 §3.1) as RFC 9481 §3.2 profiles them: the
    # same SHA-2 hash for the message and MGF1, salt as long as the hash.
    if parameters is None:
        raise ProtectionError("RSASSA-PSS without parameters", FailInfo.BAD_ALG)
    try:
        params, rest = decoder.decode(parameters, asn1Spec=rfc4055.RSASSA_PSS_params())
        name = _HASH_BY_OID.get(str(params["hashAlgorithm"]["algorithm"]))
        mgf = params["maskGenAlgorithm"]
        mgf_hash = None
        if str(mgf["algorithm"]) == ID_MGF1 and mgf["parameters"].isValue:
            inner, _ = decoder.decode(bytes(mgf["parameters"]), asn1Spec=rfc5280.AlgorithmIdentifier())
            mgf_hash = _HASH_BY_OID.get(str(inner["algorithm"]))
        salt_length = int(params["saltLength"])
    except (PyAsn1Error, ValueError, TypeError):
        raise ProtectionError("RSASSA-PSS parameters do not decode", FailInfo.BAD_ALG) from None
    if rest or name is None or mgf_hash != name:
        raise ProtectionError("unsupported RSASSA-PSS parameters", FailInfo.BAD_ALG)
    if salt_length != _HASHES[name]().digest_size:
        raise ProtectionError("RSASSA-PSS salt length differs from the hash length", FailInfo.BAD_ALG)
    return name


def verify_signature(alg: AlgorithmId, public_key: object, signature: bytes, data: bytes) -> None:
    """Verify a signature under a protectionAlg (RFC 9481 §3) or raise ProtectionError."""
    try:
        if alg.oid in _ECDSA and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(_HASHES[_ECDSA[alg.oid]]()))
        elif alg.oid in _RSA_PKCS1 and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), _HASHES[_RSA_PKCS1[alg.oid]]())
        elif alg.oid == ID_RSASSA_PSS and isinstance(public_key, rsa.RSAPublicKey):
            algorithm = _HASHES[_pss_hash(alg.parameters)]()
            pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
            public_key.verify(signature, data, pss, algorithm)
        elif alg.oid == ID_ED25519 and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif alg.oid == ID_ED448 and isinstance(public_key, ed448.Ed448PublicKey):
            public_key.verify(signature, data)
        else:
            raise ProtectionError(
                "protectionAlg %s does not fit the signer's %s key" % (alg.oid, type(public_key).__name__),
                FailInfo.BAD_ALG,
            )
    except (InvalidSignature, UnsupportedAlgorithm):
        raise ProtectionError("signature does not verify") from None


def verify_signature_protection(message: codec.PkiMessage, signer: x509.Certificate | None = None) -> x509.Certificate:
    """Check a signature protection (RFC 4210 §5.1.3.3; RFC 9483 §3.2).

    The signer is the given certificate or else extraCerts[0], which RFC 9483
    §3.3 requires to be the protection certificate. Returns the certificate
    whose key verified; trusting it is the caller's business.
    """
    alg, protection = _require_protection(message)
    if signer is None:
        try:
            certs = message.extra_certs
        except codec.CmpDecodeError as exc:
            raise ProtectionError(exc.reason, exc.fail_info) from None
        if not certs:
            raise ProtectionError("signature protection without a certificate in extraCerts")
        signer = certs[0]
    try:
        public_key = signer.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise ProtectionError("the signer certificate's key cannot be read", FailInfo.BAD_ALG) from None
    verify_signature(alg, public_key, protection, message.protected_part)
    return signer


def verify_protection(message: codec.PkiMessage, secret: bytes | None = None) -> MacAlgorithm | x509.Certificate:
    """Verify whichever protection the message carries (RFC 4210 §5.1.3).

    MAC protection needs secret (looked up by the caller from senderKID).
    """
    if is_mac_protected(message):
        if secret is None:
            raise ProtectionError("no shared secret for senderKID", FailInfo.SIGNER_NOT_TRUSTED)
        return verify_mac_protection(message, secret)
    return verify_signature_protection(message)


# -- replies ---------------------------------------------------------------------


def protect_with_mac(
    header: PkiHeader, body_der: bytes, secret: bytes, like: MacAlgorithm, extra_certs: tuple[bytes, ...] = ()
) -> bytes:
    """A MAC-protected PKIMessage (RFC 4210 §5.1.3.1; RFC 9483 §3.2): the
    request's algorithm and parameters, keyed by the same secret.

    The salt is the request's own: RFC 4210 leaves its choice to the sender,
    the client already knows the derived key, and reusing it spares a second
    key derivation per exchange (macs.py caches it). Clients that protect
    with a fresh salt per message still get fresh parameters for each reply.
    """
    params = like
    header_der = encode_header(replace(header, protection_alg=params.algorithm_id()))
    mac = params.compute(secret, codec.protected_part(header_der, body_der))
    return codec.assemble_message(header_der, body_der, mac, extra_certs)


def signature_algorithm_id(algorithm: str) -> AlgorithmId:
    """protectionAlg for an hsm.SignAlgorithm value (RFC 9481 §3.1, §3.2, RFC 4055 §3.1)."""
    oid = _SIGN_ALGORITHM_OIDS.get(str(getattr(algorithm, "value", algorithm)))
    if oid is None:
        raise ValueError("no CMP protection algorithm for %r" % (algorithm,))
    if oid in _RSA_PKCS1:
        return AlgorithmId(oid, b"\x05\x00")  # RFC 4055 §5: NULL parameters
    if oid != ID_RSASSA_PSS:
        return AlgorithmId(oid)  # RFC 5758 §3.2: ECDSA parameters absent
    name = "sha384" if str(getattr(algorithm, "value", algorithm)).endswith("384") else "sha256"
    hash_oid = next(o for o, n in _HASH_BY_OID.items() if n == name)
    params = rfc4055.RSASSA_PSS_params()
    params["hashAlgorithm"]["algorithm"] = univ.ObjectIdentifier(hash_oid)
    params["maskGenAlgorithm"]["algorithm"] = univ.ObjectIdentifier(ID_MGF1)
    mgf_hash = rfc5280.AlgorithmIdentifier()
    mgf_hash["algorithm"] = univ.ObjectIdentifier(hash_oid)
    params["maskGenAlgorithm"]["parameters"] = univ.Any(bytes(encoder.encode(mgf_hash)))
    params["saltLength"] = _HASHES[name]().digest_size
    return AlgorithmId(oid, bytes(encoder.encode(params)))


def protect_with_signature(
    header: PkiHeader, body_der: bytes, signer: Signer, extra_certs: tuple[bytes, ...] = ()
) -> bytes:
    """A signature-protected PKIMessage (RFC 4210 §5.1.3.3; RFC 9483 §3.2).

    extra_certs starts with the protection certificate, then its chain
    (RFC 9483 §3.3); the header's senderKID should be that certificate's SKI.
    """
    header_der = encode_header(replace(header, protection_alg=signature_algorithm_id(signer.algorithm)))
    signature = signer.sign(codec.protected_part(header_der, body_der))
    return codec.assemble_message(header_der, body_der, signature, extra_certs)
