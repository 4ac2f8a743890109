"""EnrolmentRequest ⇄ bytes, for requests that wait in the store for approval.

An approved request is re-run exactly as it arrived, possibly by another
worker on another node, so everything the core looks at is kept: JSON for
the plain fields, DER (base64) for every X.509 part — certificates, the
public key as SubjectPublicKeyInfo, the subject as a Name, each SAN as a
GeneralName, each extension as OID + critical + extnValue — so nothing is
lost to a text rendering.

Secrets are not kept. The core checks a one-time PIN or an HTTP Basic
password before it stores a pending request (and the PIN is used up then),
so the stored request says only that it was verified; the decoded request
carries VerifiedOneTimePin / VerifiedHttpBasic in their place.

cryptography can write a Name, a GeneralName or an extension value as DER
but can only read them inside a certificate, CSR or CRL, so the decoder
wraps them in an unsigned carrier CSR (the signature is never checked; only
the parsed fields are used).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, cast

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ca.der import DerError, bit_string, sequence, split_sequence, tlv
from ra.requests import (
    CurrentCertificate,
    EnrolmentRequest,
    Evidence,
    HttpBasic,
    OneTimePin,
    Operation,
    Protocol,
    SharedSecretReference,
    TlsClientCertificate,
    TrustedRa,
    VendorCertificate,
    VerifiedHttpBasic,
    VerifiedOneTimePin,
)

FORMAT = 1


class SerializationError(ValueError):
    """The bytes are not a stored request this version can read."""


# -- encoding ------------------------------------------------------------------


def encode_request(request: EnrolmentRequest) -> bytes:
    """The request as canonical JSON (sorted keys): equal requests give equal bytes."""
    document: dict[str, Any] = {
        "format": FORMAT,
        "protocol": request.protocol.value,
        "operation": request.operation.value,
        "public_key": _b64(_spki(request.public_key)) if request.public_key is not None else None,
        "pop_verified": request.pop_verified,
        "subject": _b64(request.subject.public_bytes()),
        "sans": [_b64(der) for der in _general_names_der(request.sans)],
        "extensions": [_encode_extension(ext) for ext in request.extensions],
        "evidence": [_encode_evidence(item) for item in request.evidence],
        "ca": request.ca,
        "profile": request.profile,
        "transaction_id": request.transaction_id,
        "claimed_device": request.claimed_device,
        "revoke_serial": request.revoke_serial,
        "revoke_reason": request.revoke_reason,
        "revoke_issuer": _b64(request.revoke_issuer) if request.revoke_issuer is not None else None,
        "server_generated_key": request.server_generated_key,
        "peer": request.peer,
        "received_at": request.received_at.isoformat() if request.received_at is not None else None,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _certificates(chain: tuple[x509.Certificate, ...]) -> list[str]:
    return [_b64(c.public_bytes(serialization.Encoding.DER)) for c in chain]


def _general_names_der(names: tuple[x509.GeneralName, ...]) -> list[bytes]:
    if not names:
        return []
    # GeneralNames is a SEQUENCE OF GeneralName: its elements are the names.
    return split_sequence(x509.SubjectAlternativeName(list(names)).public_bytes())


def _encode_extension(ext: x509.Extension[x509.ExtensionType]) -> dict[str, Any]:
    try:
        value = ext.value.public_bytes()
    except NotImplementedError:
        raise SerializationError(f"cannot encode extension {ext.oid.dotted_string}") from None
    return {"oid": ext.oid.dotted_string, "critical": ext.critical, "value": _b64(value)}


def _encode_evidence(item: object) -> dict[str, Any]:
    if isinstance(item, VendorCertificate):
        return {"type": "vendor_certificate", "chain": _certificates(item.chain)}
    if isinstance(item, TlsClientCertificate):
        binding = _b64(item.channel_binding) if item.channel_binding is not None else None
        return {"type": "tls_client_certificate", "chain": _certificates(item.chain), "channel_binding": binding}
    if isinstance(item, SharedSecretReference):
        return {"type": "shared_secret_reference", "reference": item.reference}
    if isinstance(item, CurrentCertificate):
        return {
            "type": "current_certificate",
            "certificate": _certificates((item.certificate,))[0],
            "chain": _certificates(item.chain),
        }
    if isinstance(item, TrustedRa):
        return {"type": "trusted_ra", "certificate": _certificates((item.certificate,))[0]}
    # The secret stays out of the store; its check happened before storing.
    if isinstance(item, (OneTimePin, VerifiedOneTimePin)):
        return {"type": "one_time_pin", "verified": True}
    if isinstance(item, (HttpBasic, VerifiedHttpBasic)):
        return {"type": "http_basic", "username": item.username, "verified": True}
    raise SerializationError(f"unknown evidence type {type(item).__name__}")


# -- decoding ------------------------------------------------------------------


def decode_request(data: bytes) -> EnrolmentRequest:
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise SerializationError("not a stored enrolment request (format 1)")
        return _decode(document)
    except SerializationError:
        raise
    except (ValueError, KeyError, TypeError, DerError) as exc:
        raise SerializationError(f"bad stored request: {exc!r}") from None


def _decode(d: dict[str, Any]) -> EnrolmentRequest:
    received_at = d["received_at"]
    revoke_serial = d["revoke_serial"]
    if revoke_serial is not None and not isinstance(revoke_serial, int):
        raise SerializationError("revoke_serial is not an integer")
    return EnrolmentRequest(
        protocol=Protocol(d["protocol"]),
        operation=Operation(d["operation"]),
        public_key=_load_public_key(_unb64(d["public_key"])) if d["public_key"] is not None else None,
        pop_verified=_bool(d["pop_verified"]),
        subject=_carrier(name=_unb64(d["subject"])).subject,
        sans=_decode_sans([_unb64(s) for s in d["sans"]]),
        extensions=tuple(_decode_extension(e) for e in d["extensions"]),
        evidence=tuple(_decode_evidence(e) for e in d["evidence"]),
        ca=_optional_str(d["ca"]),
        profile=_optional_str(d["profile"]),
        transaction_id=_optional_str(d["transaction_id"]),
        claimed_device=_optional_str(d["claimed_device"]),
        revoke_serial=revoke_serial,
        revoke_reason=_optional_str(d["revoke_reason"]),
        # Absent in requests stored before the field existed.
        revoke_issuer=_unb64(d["revoke_issuer"]) if d.get("revoke_issuer") is not None else None,
        server_generated_key=_bool(d.get("server_generated_key", False)),
        peer=_optional_str(d["peer"]),
        received_at=datetime.fromisoformat(received_at) if received_at is not None else None,
    )


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise SerializationError("expected base64 text")
    return base64.b64decode(text, validate=True)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise SerializationError("expected true or false")
    return value


def _optional_str(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SerializationError("expected a string or null")
    return value


_PUBLIC_KEY_TYPES = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    dsa.DSAPublicKey,
    x25519.X25519PublicKey,
    x448.X448PublicKey,
)


def _load_public_key(der: bytes) -> CertificatePublicKeyTypes:
    key = serialization.load_der_public_key(der)
    if not isinstance(key, _PUBLIC_KEY_TYPES):
        raise SerializationError(f"{type(key).__name__} cannot be a certificate key")
    return key


def _load_certificates(items: list[str]) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_der_x509_certificate(_unb64(item)) for item in items)


def _decode_sans(names: list[bytes]) -> tuple[x509.GeneralName, ...]:
    if not names:
        return ()
    san = x509.SubjectAlternativeName.oid.dotted_string
    value = _carrier_extension(san, False, sequence(*names)).value
    return tuple(cast(x509.SubjectAlternativeName, value))


def _decode_extension(item: dict[str, Any]) -> x509.Extension[x509.ExtensionType]:
    return _carrier_extension(str(item["oid"]), _bool(item["critical"]), _unb64(item["value"]))


def _decode_evidence(item: dict[str, Any]) -> Evidence:
    kind = item["type"]
    if kind == "vendor_certificate":
        return VendorCertificate(chain=_load_certificates(item["chain"]))
    if kind == "tls_client_certificate":
        binding = item["channel_binding"]
        return TlsClientCertificate(
            chain=_load_certificates(item["chain"]),
            channel_binding=_unb64(binding) if binding is not None else None,
        )
    if kind == "shared_secret_reference":
        return SharedSecretReference(reference=str(item["reference"]))
    if kind == "current_certificate":
        return CurrentCertificate(
            certificate=_load_certificates([item["certificate"]])[0],
            chain=_load_certificates(item["chain"]),
        )
    if kind == "trusted_ra":
        return TrustedRa(certificate=_load_certificates([item["certificate"]])[0])
    # Not members of ra.requests.Evidence (yet): the core meets them only
    # when it re-runs an approved request, which it does not re-authenticate.
    if kind == "one_time_pin" and item.get("verified") is True:
        return VerifiedOneTimePin()
    if kind == "http_basic" and item.get("verified") is True:
        return VerifiedHttpBasic(username=str(item["username"]))
    raise SerializationError(f"unknown evidence {kind!r}")


# -- the carrier CSR -------------------------------------------------------------------

# RFC 8410 Ed25519: an AlgorithmIdentifier without parameters. Any valid
# key and algorithm would do; the carrier's signature is never verified.
_ED25519 = sequence(core.ObjectIdentifier("1.3.101.112").dump())
_CARRIER_SPKI = sequence(_ED25519, bit_string(bytes(32)))
_EXTENSION_REQUEST = core.ObjectIdentifier("1.2.840.113549.1.9.14").dump()  # PKCS #9


def _carrier(*, name: bytes = sequence(), extension: bytes | None = None) -> x509.CertificateSigningRequest:
    """An unsigned PKCS #10 request (RFC 2986 §4) holding a subject Name
    and at most one extension in its extensionRequest attribute."""
    attributes = b""
    if extension is not None:
        attributes = sequence(_EXTENSION_REQUEST, tlv(0x31, sequence(extension)))
    info = sequence(b"\x02\x01\x00", name, _CARRIER_SPKI, tlv(0xA0, attributes))
    return x509.load_der_x509_csr(sequence(info, _ED25519, bit_string(bytes(64))))


def _carrier_extension(oid: str, critical: bool, value: bytes) -> x509.Extension[x509.ExtensionType]:
    parts = [core.ObjectIdentifier(oid).dump()]
    if critical:
        # DER leaves a DEFAULT FALSE out (X.690 §11.5).
        parts.append(core.Boolean(True).dump())
    parts.append(core.OctetString(value).dump())
    extensions: list[x509.Extension[x509.ExtensionType]] = list(_carrier(extension=sequence(*parts)).extensions)
    if len(extensions) != 1:
        raise SerializationError(f"extension {oid} did not decode")
    return extensions[0]
