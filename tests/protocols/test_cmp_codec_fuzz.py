"""Property tests: whatever bytes arrive, decode_message raises CmpDecodeError or
returns a message; no other exception escapes (issue 5, "What bad input gets")."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmphelpers import vector_paths
from pyasn1.codec.der import decoder
from pyasn1.type import univ

from protocols.cmp import asn1, bodies, codec, der
from protocols.cmp.header import (
    NULL_DN_GENERAL_NAME,
    AlgorithmId,
    InfoTypeAndValue,
    PkiHeader,
    _general_name,
    encode_header,
    header_from_der,
    parse_generalized_time,
)

VECTORS = [path.read_bytes() for path in vector_paths()]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_refuse(data: bytes) -> None:
    try:
        message = codec.decode_message(data)
    except codec.CmpDecodeError as exc:
        assert exc.reason
        return
    # What decodes must also re-encode and expose its certificates or refuse them.
    codec.encode_message(message)
    try:
        message.extra_certs
    except codec.CmpDecodeError:
        pass


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_only_raise_cmp_decode_error(data: bytes) -> None:
    _decode_or_refuse(data)


@st.composite
def mutated_vector(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VECTORS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
    return bytes(data)


@FUZZ
@given(mutated_vector())
def test_mutated_vectors_only_raise_cmp_decode_error(data: bytes) -> None:
    _decode_or_refuse(data)


def _nested(tag: int, depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = der.wrap(tag, inner)
    return inner


@settings(max_examples=20, deadline=None)
@given(st.integers(50, 5_000), st.sampled_from([0x30, 0xA0, 0x31, 0xA4]))
def test_deep_nesting_is_refused_quickly(depth: int, tag: int) -> None:
    header = codec.decode_message(VECTORS[0]).header_der
    for body in (_nested(tag, depth), b"\xa0" + _nested(tag, depth)[1:]):
        started = time.perf_counter()
        try:
            codec.decode_message(b"\x30" + der.encode_length(len(header) + len(body)) + header + body)
        except codec.CmpDecodeError:
            pass
        assert time.perf_counter() - started < 0.5


_OIDS = st.sampled_from(["1.3.6.1.5.5.7.4.13", "1.3.6.1.5.5.7.4.21", "2.5.29.17", "1.2.840.113549.1.5.14", "2.999.1234567"])
_OCTETS = st.one_of(st.none(), st.binary(min_size=0, max_size=40))
_GENERAL_NAMES = st.sampled_from(
    [NULL_DN_GENERAL_NAME, der.wrap(0x82, b"ra.example"), der.wrap(0xA4, der.wrap(0x30, b""))]
)


@st.composite
def _headers(draw: st.DrawFn) -> PkiHeader:
    moment = draw(st.one_of(st.none(), st.datetimes(min_value=datetime(1950, 1, 1), max_value=datetime(9999, 1, 1))))
    if moment is not None:
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000, tzinfo=timezone.utc)
    alg = draw(st.one_of(st.none(), st.builds(AlgorithmId, _OIDS, st.sampled_from([None, b"\x05\x00", b"\x30\x00"]))))
    infos = draw(
        st.lists(st.builds(InfoTypeAndValue, _OIDS, st.sampled_from([None, b"\x05\x00", b"\x0c\x02hi"])), max_size=3)
    )
    return PkiHeader(
        pvno=draw(st.sampled_from([2, 3])),
        sender=draw(_GENERAL_NAMES),
        recipient=draw(_GENERAL_NAMES),
        message_time=moment,
        protection_alg=alg,
        sender_kid=draw(_OCTETS),
        recip_kid=draw(_OCTETS),
        transaction_id=draw(_OCTETS),
        sender_nonce=draw(_OCTETS),
        recip_nonce=draw(_OCTETS),
        free_text=tuple(draw(st.lists(st.text(max_size=20), max_size=3))),
        general_info=tuple(infos),
    )


@settings(max_examples=200, deadline=None)
@given(_headers())
def test_any_header_we_write_decodes_to_itself(header: PkiHeader) -> None:
    body = codec.encode_body("pkiconf", bodies.pkiconf_body())
    data = codec.assemble_message(encode_header(header), body, b"\x01" * 8)
    assert codec.decode_message(data).header == header


# -- header_from_der against pyasn1's reading of the same bytes ---------------------------


def _optional_bytes(component: univ.OctetString) -> bytes | None:
    return bytes(component) if component.isValue else None


def header_from_asn1(asn1: univ.Sequence) -> PkiHeader:
    """The reference reading: pyasn1's OpaquePKIHeader (RFC 4210 §5.1.1) as a PkiHeader."""
    message_time = None
    if asn1["messageTime"].isValue:
        message_time = parse_generalized_time(str(asn1["messageTime"]))
    protection_alg = None
    if asn1["protectionAlg"].isValue:
        alg = asn1["protectionAlg"]
        params = bytes(alg["parameters"]) if alg["parameters"].isValue else None
        protection_alg = AlgorithmId(str(alg["algorithm"]), params)
    free_text: tuple[str, ...] = ()
    if asn1["freeText"].isValue:
        free_text = tuple(str(text) for text in asn1["freeText"])
    general_info: tuple[InfoTypeAndValue, ...] = ()
    if asn1["generalInfo"].isValue:
        general_info = tuple(
            InfoTypeAndValue(
                str(info["infoType"]),
                bytes(info["infoValue"]) if info["infoValue"].isValue else None,
            )
            for info in asn1["generalInfo"]
        )
    return PkiHeader(
        pvno=int(asn1["pvno"]),
        sender=_general_name(bytes(asn1["sender"])),
        recipient=_general_name(bytes(asn1["recipient"])),
        message_time=message_time,
        protection_alg=protection_alg,
        sender_kid=_optional_bytes(asn1["senderKID"]),
        recip_kid=_optional_bytes(asn1["recipKID"]),
        transaction_id=_optional_bytes(asn1["transactionID"]),
        sender_nonce=_optional_bytes(asn1["senderNonce"]),
        recip_nonce=_optional_bytes(asn1["recipNonce"]),
        free_text=free_text,
        general_info=general_info,
    )


def _pyasn1_header(header_der: bytes) -> PkiHeader:
    value, rest = decoder.decode(header_der, asn1Spec=asn1.OpaquePKIHeader())
    assert not rest
    return header_from_asn1(value)


def _header_der(message: bytes) -> bytes:
    top = der.read_tlv(message, 0)
    return der.read_tlv(message, top.content).slice(message)


def test_every_golden_vector_header_reads_the_same_both_ways() -> None:
    for vector in VECTORS:
        header_der = _header_der(vector)
        assert header_from_der(header_der) == _pyasn1_header(header_der)


@settings(max_examples=200, deadline=None)
@given(_headers())
def test_der_reading_equals_pyasn1_reading(header: PkiHeader) -> None:
    encoded = encode_header(header)
    assert header_from_der(encoded) == _pyasn1_header(encoded) == header


@FUZZ
@given(st.data())
def test_der_reading_of_mutated_headers_is_never_laxer_than_pyasn1(data: st.DataObject) -> None:
    header_der = _header_der(data.draw(st.sampled_from(VECTORS)))
    mutated = bytearray(header_der)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    try:
        ours = header_from_der(bytes(mutated))
    except (ValueError, UnicodeError):
        return
    # What we accept, pyasn1 accepts, and reads the same.
    assert ours == _pyasn1_header(bytes(mutated))
