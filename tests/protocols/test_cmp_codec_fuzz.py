"""Property tests: whatever bytes arrive, decode_message raises CmpDecodeError or
returns a message; no other exception escapes (issue 5, "What bad input gets")."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmphelpers import vector_paths
from protocols.cmp import bodies, codec, der
from protocols.cmp.header import NULL_DN_GENERAL_NAME, AlgorithmId, InfoTypeAndValue, PkiHeader, encode_header

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
