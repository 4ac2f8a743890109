"""Property tests: whatever bytes arrive, decode_message raises CmpDecodeError or
returns a message; no other exception escapes (issue 5, "What bad input gets")."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmphelpers import vector_paths
from protocols.cmp import codec, der

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
