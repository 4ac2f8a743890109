"""The few DER operations needed to sign through the token.

pyca/cryptography builds TBSCertificate, TBSCertList and ResponseData fast
(~0.1 ms, ../shared/LIMITS.md §3) but can only sign with an in-process key.
We let it sign with a throw-away EC key, take the to-be-signed bytes, put the
real signature AlgorithmIdentifier in, have the token sign, and wrap the
result in the outer SEQUENCE ourselves. Building the same structures with
asn1crypto costs ten times more, so only the glue is done by hand here.
"""

from __future__ import annotations

from functools import lru_cache

from asn1crypto import algos

from hsm import SignAlgorithm


class DerError(ValueError):
    """The bytes are not the DER structure this module expects."""


def encode_length(length: int) -> bytes:
    """DER definite length octets (X.690 §8.1.3)."""
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(content)) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def bit_string(content: bytes) -> bytes:
    return tlv(0x03, b"\x00" + content)


def read_header(data: bytes, offset: int) -> tuple[int, int, int]:
    """Return (tag, content start, content end) of the TLV at offset."""
    if offset + 2 > len(data):
        raise DerError("truncated DER header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tags are not used in these structures")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise DerError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise DerError("DER element runs past the end")
    return tag, pos, end


def split_sequence(data: bytes) -> list[bytes]:
    """The encoded elements of a SEQUENCE, each as its full TLV."""
    tag, start, end = read_header(data, 0)
    if tag != 0x30 or end != len(data):
        raise DerError("expected exactly one SEQUENCE")
    elements = []
    pos = start
    while pos < end:
        _, _, element_end = read_header(data, pos)
        elements.append(data[pos:element_end])
        pos = element_end
    return elements


@lru_cache(maxsize=None)
def signature_algorithm_der(algorithm: SignAlgorithm) -> bytes:
    """AlgorithmIdentifier for the signature (RFC 5758 ECDSA, RFC 4055 RSA)."""
    if algorithm in (SignAlgorithm.RSA_PSS_SHA256, SignAlgorithm.RSA_PSS_SHA384):
        hash_name = "sha256" if algorithm is SignAlgorithm.RSA_PSS_SHA256 else "sha384"
        params = algos.RSASSAPSSParams(
            {
                "hash_algorithm": {"algorithm": hash_name},
                "mask_gen_algorithm": {
                    "algorithm": "mgf1",
                    "parameters": {"algorithm": hash_name},
                },
                "salt_length": 32 if hash_name == "sha256" else 48,
            }
        )
        value = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": params})
        return bytes(value.dump())
    names = {
        SignAlgorithm.ECDSA_SHA256: "sha256_ecdsa",
        SignAlgorithm.ECDSA_SHA384: "sha384_ecdsa",
        SignAlgorithm.RSA_PKCS1_SHA256: "sha256_rsa",
        SignAlgorithm.RSA_PKCS1_SHA384: "sha384_rsa",
    }
    # RFC 5758 §3.2: ECDSA AlgorithmIdentifiers omit the parameters field;
    # RFC 4055 §5: PKCS#1 v1.5 ones carry NULL. asn1crypto knows both rules.
    return bytes(algos.SignedDigestAlgorithm({"algorithm": names[algorithm]}).dump())


def replace_element(encoded_sequence: bytes, index: int, new_element: bytes) -> bytes:
    elements = split_sequence(encoded_sequence)
    if index >= len(elements):
        raise DerError("SEQUENCE has too few elements")
    elements[index] = new_element
    return sequence(*elements)


def tbs_certificate_with_algorithm(tbs: bytes, algorithm: SignAlgorithm) -> bytes:
    """TBSCertificate with its `signature` field (RFC 5280 §4.1.2.3) set."""
    # version [0], serialNumber, signature: the AlgorithmIdentifier is third.
    return replace_element(tbs, 2, signature_algorithm_der(algorithm))


def tbs_crl_with_algorithm(tbs: bytes, algorithm: SignAlgorithm) -> bytes:
    """TBSCertList with its `signature` field (RFC 5280 §5.1.2.2) set."""
    elements = split_sequence(tbs)
    index = 1 if elements and elements[0][0] == 0x02 else 0
    elements[index] = signature_algorithm_der(algorithm)
    return sequence(*elements)


def signed_structure(tbs: bytes, algorithm: SignAlgorithm, signature: bytes) -> bytes:
    """SEQUENCE { tbs, signatureAlgorithm, signatureValue } (Certificate, CertificateList)."""
    return sequence(tbs, signature_algorithm_der(algorithm), bit_string(signature))
