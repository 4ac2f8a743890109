"""Shared-secret MAC algorithms of CMP: PasswordBasedMac and PBMAC1.

RFC 4210 §5.1.3.1 (PasswordBasedMac), RFC 9481 §6.1 (PBMAC1 with PBKDF2,
RFC 8018 §5.2 and §7.1). Parameters come from the attacker, so every one is
checked against a fixed list and the key-derivation work is capped before any
hashing starts.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from dataclasses import dataclass, replace

from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_alt_modules import rfc8018

from protocols.cmp import der
from protocols.cmp.header import AlgorithmId

ID_PASSWORD_BASED_MAC = "1.2.840.113533.7.66.13"  # RFC 4210 §5.1.3.1
ID_PBMAC1 = "1.2.840.113549.1.5.14"  # RFC 8018 §A.5, RFC 9481 §6.1.2
ID_PBKDF2 = "1.2.840.113549.1.5.12"  # RFC 8018 §A.2

# One-way functions for PasswordBasedMac (RFC 9481 §6.1.1 names SHA-256;
# SHA-1 stays because OpenSSL 3.0's `openssl cmp` still offers it via -owf
# and preimage resistance, all PBM needs, is unbroken for SHA-1).
OWF_BY_OID = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}

# HMAC algorithms (RFC 9481 §6.2.1). HMAC-SHA1 is accepted because OpenSSL
# 3.0's `openssl cmp` defaults to it for PBM (-mac hmac-sha1); HMAC does not
# rely on collision resistance, so it remains a sound MAC. Replies use the
# request's own algorithms, so such a client can check them.
HMAC_BY_OID = {
    "1.3.6.1.5.5.8.1.2": "sha1",  # hmac-sha1 (RFC 2404), OpenSSL's NID_hmac_sha1
    "1.2.840.113549.2.7": "sha1",  # hmacWithSHA1 (RFC 8018)
    "1.2.840.113549.2.9": "sha256",
    "1.2.840.113549.2.10": "sha384",
    "1.2.840.113549.2.11": "sha512",
}

# PBKDF2 PRFs accepted in PBMAC1: RFC 9481 §6.1.2 profiles SHA-2 HMACs;
# PBMAC1 clients are new, so there is no legacy reason for SHA-1 here.
PBKDF2_PRF_BY_OID = {oid: name for oid, name in HMAC_BY_OID.items() if name != "sha1"}

# Iteration counts. RFC 4211 §4.4 sets 100 as the minimum and weighs more
# iterations against the server time each message costs; RFC 9481 §6.1 asks
# for a count that makes guessing the secret expensive. Real clients send
# 500 (OpenSSL 3.x `openssl cmp` for PBM) and 10,000 (LightweightCmpRa, for
# PBM and PBMAC1). Every wrong guess costs the server the same derivation as
# the guesser, so the default cap is what those clients need: 10,000 (about
# 5 ms of CPU for PBM in the loop below, 3 ms for one-block PBKDF2).
# Repeated failures are throttled before any derivation (server.py).
MIN_ITERATIONS = 100
MAX_ITERATIONS = 10_000
# PBKDF2 work is iterations × output blocks; this allows the cap above for a
# one-block key and the 16-block key of LightweightCmpRa's PBMAC1 (below) at
# its 10,000 iterations.
MAX_PBKDF2_WORK = 160_000
MIN_SALT = 8  # RFC 4211 §4.4 asks for a random salt; RFC 9481 §6.1 for ≥ 64 bits
MAX_SALT = 128


class MacParameterError(ValueError):
    """The MAC parameters are malformed, unsupported or too costly (badAlg)."""


def _decode(der: bytes | None, spec: univ.Asn1Item) -> univ.Asn1Item:
    if der is None:
        raise MacParameterError("MAC algorithm without parameters")
    try:
        value, rest = decoder.decode(der, asn1Spec=spec)
    except (PyAsn1Error, ValueError, TypeError) as exc:
        raise MacParameterError("MAC parameters do not decode: %s" % type(exc).__name__) from None
    if rest:
        raise MacParameterError("trailing bytes after MAC parameters")
    return value


def _hmac_name(oid: str, table: dict[str, str]) -> str:
    try:
        return table[oid]
    except KeyError:
        raise MacParameterError("unsupported MAC algorithm %s" % oid) from None


def _check_iterations(count: int, maximum: int = MAX_ITERATIONS) -> int:
    if not MIN_ITERATIONS <= count <= maximum:
        raise MacParameterError("iterationCount %d outside %d..%d" % (count, MIN_ITERATIONS, maximum))
    return count


def _check_salt(salt: bytes) -> bytes:
    if not MIN_SALT <= len(salt) <= MAX_SALT:
        raise MacParameterError("salt length %d outside %d..%d" % (len(salt), MIN_SALT, MAX_SALT))
    return salt


# The one-way functions by name, as hashlib's own constructors: calling them
# directly takes about a third off each iteration of the loop below compared
# with hashlib.new(name) (measured, Python 3.11).
_OWF_CONSTRUCTORS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


# A reply is protected with the request's own parameters (protection.py), so
# the key derived to check a request is the key that protects its answer: a
# small per-process cache saves the second derivation, and a request that
# replays a salt costs no derivation at all. Keys stay in process memory for
# as long as the secrets they come from do anyway.
#
# RFC 4210 §5.1.3.1's iterated hash H(...H(secret || salt)) has no C
# implementation in the standard library (hashlib.pbkdf2_hmac is HMAC-based,
# a different function), so it stays a Python loop; the iteration cap and
# the failure throttle bound what it can cost.
@functools.lru_cache(maxsize=512)
def _pbm_key(owf: str, secret: bytes, salt: bytes, iterations: int) -> bytes:
    key = secret + salt
    new = _OWF_CONSTRUCTORS[owf]
    for _ in range(iterations):
        key = new(key).digest()
    return key


@functools.lru_cache(maxsize=512)
def _pbkdf2_key(prf: str, secret: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    return hashlib.pbkdf2_hmac(prf, secret, salt, iterations, length)


@dataclass(frozen=True)
class PasswordBasedMac:
    """PBMParameter (RFC 4210 §5.1.3.1, RFC 4211 §4.4)."""

    salt: bytes
    owf_oid: str
    iterations: int
    mac_oid: str

    def key(self, secret: bytes) -> bytes:
        """RFC 4210 §5.1.3.1: OWF applied iterationCount times to secret || salt."""
        return _pbm_key(OWF_BY_OID[self.owf_oid], secret, self.salt, self.iterations)

    def compute(self, secret: bytes, data: bytes) -> bytes:
        """The protection value: HMAC with the derived key over data (RFC 4210 §5.1.3.1)."""
        return hmac.new(self.key(secret), data, HMAC_BY_OID[self.mac_oid]).digest()

    def algorithm_id(self) -> AlgorithmId:
        # PBMParameter ::= SEQUENCE { salt OCTET STRING, owf AlgorithmIdentifier,
        #   iterationCount INTEGER, mac AlgorithmIdentifier } (RFC 4211 §4.4),
        # written with der.py: on every MAC-protected reply, pyasn1 cost more
        # than the MAC itself.
        params = der.wrap(der.TAG_SEQUENCE, b"".join((
            der.wrap(der.TAG_OCTET_STRING, self.salt),
            der.wrap(der.TAG_SEQUENCE, der.encode_oid(self.owf_oid)),
            der.encode_integer(self.iterations),
            der.wrap(der.TAG_SEQUENCE, der.encode_oid(self.mac_oid)),
        )))
        return AlgorithmId(ID_PASSWORD_BASED_MAC, params)

    def with_fresh_salt(self) -> PasswordBasedMac:
        return replace(self, salt=os.urandom(max(16, len(self.salt))))


def parse_password_based_mac(parameters: bytes | None, max_iterations: int = MAX_ITERATIONS) -> PasswordBasedMac:
    """Read and bound PBMParameter (RFC 4210 §5.1.3.1); max_iterations is the
    operator's cap ([cmp] max_mac_iterations)."""
    salt, owf, iterations, mac = _read_pbm_parameter(parameters)
    if owf not in OWF_BY_OID:
        raise MacParameterError("unsupported PBM one-way function %s" % owf)
    _hmac_name(mac, HMAC_BY_OID)
    return PasswordBasedMac(
        salt=_check_salt(salt),
        owf_oid=owf,
        iterations=_check_iterations(iterations, max_iterations),
        mac_oid=mac,
    )


def _read_pbm_parameter(data: bytes | None) -> tuple[bytes, str, int, str]:
    """(salt, owf OID, iterationCount, mac OID) of a DER PBMParameter (RFC 4211 §4.4).

    Read with der.py (every MAC-protected request has one); the algorithm
    parameters of owf and mac, which RFC 9481 §6.1.1 leaves absent or NULL,
    are not looked at.
    """
    if data is None:
        raise MacParameterError("MAC algorithm without parameters")
    try:
        parts = der.read_sequence(data, "PBMParameter")
        if len(parts) != 4:
            raise der.DerError("PBMParameter needs four fields")
        salt, owf, count, mac = parts
        if salt.tag != der.TAG_OCTET_STRING or count.tag != der.TAG_INTEGER:
            raise der.DerError("PBMParameter salt or iterationCount of the wrong type")
        iterations = der.decode_integer(count.value(data))
        if iterations < 0:
            raise der.DerError("negative iterationCount")
        return salt.value(data), der.oid_and_value(owf.slice(data))[0], iterations, der.oid_and_value(mac.slice(data))[0]
    except der.DerError as exc:
        raise MacParameterError("MAC parameters do not decode: %s" % exc) from None




@dataclass(frozen=True)
class Pbmac1:
    """PBMAC1-params with PBKDF2 (RFC 8018 §7.1, §A.2; RFC 9481 §6.1.2).

    key_length is the value of the PBKDF2 keyLength field as sent (None if
    absent); derived_length is how many octets were actually derived, which
    differs for the BouncyCastle reading described at parse_pbmac1.
    """

    salt: bytes
    iterations: int
    key_length: int | None
    derived_length: int
    prf_oid: str
    mac_oid: str

    def key(self, secret: bytes) -> bytes:
        """PBKDF2 (RFC 8018 §5.2) with the HMAC PRF."""
        prf = PBKDF2_PRF_BY_OID[self.prf_oid]
        return _pbkdf2_key(prf, secret, self.salt, self.iterations, self.derived_length)

    def compute(self, secret: bytes, data: bytes) -> bytes:
        """The protection value: HMAC with the PBKDF2 key over data (RFC 8018 §7.1.1)."""
        return hmac.new(self.key(secret), data, PBKDF2_PRF_BY_OID[self.mac_oid]).digest()

    def algorithm_id(self) -> AlgorithmId:
        kdf = rfc8018.PBKDF2_params()
        kdf["salt"]["specified"] = self.salt
        kdf["iterationCount"] = self.iterations
        if self.key_length is not None:
            kdf["keyLength"] = self.key_length
        kdf["prf"]["algorithm"] = univ.ObjectIdentifier(self.prf_oid)
        kdf["prf"]["parameters"] = univ.Any(b"\x05\x00")
        params = rfc8018.PBMAC1_params()
        params["keyDerivationFunc"]["algorithm"] = univ.ObjectIdentifier(ID_PBKDF2)
        params["keyDerivationFunc"]["parameters"] = univ.Any(bytes(encoder.encode(kdf)))
        params["messageAuthScheme"]["algorithm"] = univ.ObjectIdentifier(self.mac_oid)
        return AlgorithmId(ID_PBMAC1, bytes(encoder.encode(params)))

    def with_fresh_salt(self) -> Pbmac1:
        return replace(self, salt=os.urandom(max(16, len(self.salt))))


def _pbkdf2_work(iterations: int, length: int, prf_oid: str) -> int:
    block = hashlib.new(PBKDF2_PRF_BY_OID[prf_oid]).digest_size
    return iterations * -(-length // block)


def pbmac1_candidates(parameters: bytes | None, max_iterations: int = MAX_ITERATIONS) -> tuple[Pbmac1, ...]:
    """Read and bound PBMAC1-params (RFC 8018 §A.5, RFC 9481 §6.1.2).

    Returns the readings worth trying, standard first. RFC 8018 §A.2 gives
    keyLength in octets; LightweightCmpRa (BouncyCastle) writes it in bits
    (its 2022 flows say 4096 and derive 512 octets), so a keyLength that is
    a multiple of 8 is also tried divided by 8. Readings over the work cap are
    dropped; none left means the parameters are refused.
    """
    params = _decode(parameters, rfc8018.PBMAC1_params())
    if str(params["keyDerivationFunc"]["algorithm"]) != ID_PBKDF2:
        raise MacParameterError("PBMAC1 key derivation is not PBKDF2")
    mac = str(params["messageAuthScheme"]["algorithm"])
    _hmac_name(mac, PBKDF2_PRF_BY_OID)
    kdf_der = params["keyDerivationFunc"]["parameters"]
    kdf = _decode(bytes(kdf_der) if kdf_der.isValue else None, rfc8018.PBKDF2_params())
    if kdf["salt"].getName() != "specified":
        raise MacParameterError("PBKDF2 salt must be specified (RFC 8018 §A.2)")
    salt = _check_salt(bytes(kdf["salt"]["specified"]))
    iterations = _check_iterations(int(kdf["iterationCount"]), max_iterations)
    # A raised iteration cap raises the work cap with it (one-block keys).
    max_work = max(MAX_PBKDF2_WORK, 2 * max_iterations)
    # prf DEFAULT hmacWithSHA1, which PBKDF2_PRF_BY_OID does not accept.
    prf = str(kdf["prf"]["algorithm"]) if kdf["prf"].isValue else "1.2.840.113549.2.7"
    _hmac_name(prf, PBKDF2_PRF_BY_OID)
    mac_size = hashlib.new(PBKDF2_PRF_BY_OID[mac]).digest_size
    key_length = int(kdf["keyLength"]) if kdf["keyLength"].isValue else None
    lengths = [mac_size] if key_length is None else [key_length]
    if key_length is not None and key_length % 8 == 0 and key_length // 8 >= 16:
        lengths.append(key_length // 8)
    readings = tuple(
        Pbmac1(salt, iterations, key_length, length, prf, mac)
        for length in lengths
        if 16 <= length and _pbkdf2_work(iterations, length, prf) <= max_work
    )
    if not readings:
        raise MacParameterError("PBMAC1 key length %s is too costly or too short" % key_length)
    return readings


def new_pbmac1(iterations: int = 10_000, prf_oid: str = "1.2.840.113549.2.9", mac_oid: str = "1.2.840.113549.2.9") -> Pbmac1:
    """Fresh PBMAC1 parameters (RFC 9481 §6.1.2): PBKDF2-HMAC-SHA256, HMAC-SHA256, 32-octet key."""
    size = hashlib.new(PBKDF2_PRF_BY_OID[mac_oid]).digest_size
    return Pbmac1(os.urandom(16), _check_iterations(iterations), size, size, prf_oid, mac_oid)


def new_password_based_mac(
    iterations: int = 10_000, owf_oid: str = "2.16.840.1.101.3.4.2.1", mac_oid: str = "1.2.840.113549.2.9"
) -> PasswordBasedMac:
    """Fresh PBMParameter (RFC 9481 §6.1.1): SHA-256 OWF, HMAC-SHA256."""
    return PasswordBasedMac(os.urandom(16), owf_oid, _check_iterations(iterations), mac_oid)
