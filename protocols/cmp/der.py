"""A minimal DER tag-length-value reader for the outer layers of a PKIMessage.

pyasn1 costs milliseconds a message, most of it in certificates (LIMITS.md §4).
This reader splits a PKIMessage into its four top-level elements without
decoding them, so the ProtectedPart can be sliced from the received bytes
(RFC 4210 §5.1.3) and extraCerts kept as opaque DER for cryptography. It only
accepts DER (X.690 §10.1: definite, minimal lengths), which is what RFC 4210
§5.1 requires of a PKIMessage.
"""

from __future__ import annotations

from dataclasses import dataclass

# X.690 §8.1.2: class bits and the constructed bit of the identifier octet.
CLASS_CONTEXT = 0x80
CONSTRUCTED = 0x20
TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_UTF8_STRING = 0x0C
TAG_GENERALIZED_TIME = 0x18
TAG_SEQUENCE = 0x30

# Deeper than any PKIMessage needs (a certificate in a CertRepMessage sits at
# depth ~12); refusing early keeps a nested-header bomb from reaching pyasn1.
MAX_DEPTH = 48


class DerError(ValueError):
    """The bytes are not the DER this reader expects."""


@dataclass(frozen=True)
class Tlv:
    """One element: identifier octet, and offsets into the buffer it came from."""

    tag: int
    start: int  # first identifier octet
    content: int  # first content octet
    end: int  # one past the last content octet

    @property
    def constructed(self) -> bool:
        return bool(self.tag & CONSTRUCTED)

    def slice(self, data: bytes) -> bytes:
        return data[self.start : self.end]

    def value(self, data: bytes) -> bytes:
        return data[self.content : self.end]


def read_header(data: bytes, offset: int, limit: int | None = None) -> Tlv:
    """Read one DER identifier and length at offset (X.690 §8.1.2–8.1.3, §10.1).

    The returned end is the declared one and may lie beyond the buffer;
    read_tlv checks it. High tag numbers are refused: no CMP structure uses a
    tag number above 30 (X.690 §8.1.2.4).
    """
    end_of_buffer = len(data) if limit is None else limit
    if offset + 2 > end_of_buffer:
        raise DerError("truncated element header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-octet tag numbers are not used by CMP")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > 4:
            raise DerError("length field too long")
        if pos + count > end_of_buffer:
            raise DerError("truncated length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise DerError("non-minimal length is not DER")
        pos += count
    return Tlv(tag, offset, pos, pos + length)


def read_tlv(data: bytes, offset: int, limit: int | None = None) -> Tlv:
    """Read one complete DER element at offset (X.690 §8.1, §10.1)."""
    element = read_header(data, offset, limit)
    if element.end > (len(data) if limit is None else limit):
        raise DerError("element longer than its container")
    return element


def children(data: bytes, parent: Tlv) -> list[Tlv]:
    """The elements directly inside a constructed element, in order."""
    items: list[Tlv] = []
    pos = parent.content
    while pos < parent.end:
        item = read_tlv(data, pos, parent.end)
        items.append(item)
        pos = item.end
    return items


def read_sequence(data: bytes, what: str = "value") -> list[Tlv]:
    """The elements of a SEQUENCE that is the whole of data (X.690 §8.9)."""
    top = read_tlv(data, 0)
    if top.tag != TAG_SEQUENCE or top.end != len(data):
        raise DerError(f"{what} is not one DER SEQUENCE")
    return children(data, top)


def decode_integer(content: bytes, max_octets: int = 8) -> int:
    """INTEGER contents (X.690 §8.3): minimal two's complement, at most max_octets."""
    if not content or (len(content) > 1 and (
        (content[0] == 0 and not content[1] & 0x80) or (content[0] == 0xFF and content[1] & 0x80)
    )):
        raise DerError("INTEGER not minimally encoded")
    if len(content) > max_octets:
        raise DerError("INTEGER too large")
    return int.from_bytes(content, "big", signed=True)


def oid_and_value(data: bytes) -> tuple[str, bytes | None]:
    """SEQUENCE { OBJECT IDENTIFIER, ANY OPTIONAL } as (dotted OID, value DER):
    AlgorithmIdentifier (RFC 5280 §4.1.1.2), InfoTypeAndValue (RFC 4210 §5.3.19)."""
    parts = read_sequence(data, "AlgorithmIdentifier or InfoTypeAndValue")
    if not 1 <= len(parts) <= 2 or parts[0].tag != TAG_OID:
        raise DerError("expected an OBJECT IDENTIFIER and at most one value")
    return decode_oid(parts[0].value(data)), parts[1].slice(data) if len(parts) == 2 else None


def check_depth(data: bytes, element: Tlv, max_depth: int = MAX_DEPTH) -> None:
    """Refuse constructed nesting deeper than max_depth, without recursion.

    Runs before pyasn1 so a 10,000-level bomb costs one linear scan of the
    outer headers, not a decoder stack (issue 5: deeply nested DER).
    """
    stack: list[tuple[int, int]] = [(element.content, element.end)] if element.constructed else []
    while stack:
        pos, end = stack[-1]
        if pos >= end:
            stack.pop()
            continue
        item = read_tlv(data, pos, end)
        stack[-1] = (item.end, end)
        if item.constructed:
            if len(stack) >= max_depth:
                raise DerError("nesting deeper than %d" % max_depth)
            stack.append((item.content, item.end))


def encode_length(length: int) -> bytes:
    """DER length octets (X.690 §8.1.3, §10.1)."""
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def wrap(tag: int, content: bytes) -> bytes:
    """One DER element with the given identifier octet around content."""
    return bytes([tag]) + encode_length(len(content)) + content



def encode_integer(value: int) -> bytes:
    """DER INTEGER (X.690 §8.3): two's complement, minimal octets."""
    length = max(1, (value.bit_length() + 8) // 8)
    return wrap(TAG_INTEGER, value.to_bytes(length, "big", signed=True))


def encode_oid(dotted: str) -> bytes:
    """DER OBJECT IDENTIFIER (X.690 §8.19) from dotted text."""
    arcs = [int(arc) for arc in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or min(arcs) < 0:
        raise ValueError("not an object identifier: %r" % dotted)
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return wrap(TAG_OID, bytes(body))


def decode_oid(content: bytes) -> str:
    """Dotted text of OBJECT IDENTIFIER contents (X.690 §8.19)."""
    if not content or content[-1] & 0x80:
        raise DerError("truncated object identifier")
    arcs: list[int] = []
    value = 0
    for octet in content:
        if value == 0 and octet == 0x80:
            raise DerError("non-minimal object identifier arc")
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])
