"""The frame codec alone: round trips, continuation, limits and violations."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdcore import protocol as P


def decode_all(data: bytes, chunk: int = 7, max_message: int = 1 << 24) -> list:
    dec = P.FrameDecoder(max_message)
    out = []
    for i in range(0, len(data), chunk):
        out.extend(dec.feed(data[i:i + chunk]))
    return out


def test_header_is_seven_bytes_big_endian():
    frame = P.encode(P.REQUEST, 0x01020304, {"action": "x"})
    assert frame[:5] == bytes([0x10, 1, 2, 3, 4])
    assert int.from_bytes(frame[5:7], "big") == len(frame) - 7


def test_round_trip_in_small_pieces():
    frames = P.encode(P.REQUEST, 1, {"action": "a"}) + P.encode(P.INFORM, 0, {"action": "b", "n": 2})
    out = decode_all(frames, chunk=3)
    assert [(t, c, msgpack.unpackb(b)) for t, c, b in out] == [
        (P.REQUEST, 1, {"action": "a"}), (P.INFORM, 0, {"action": "b", "n": 2})]


def test_large_message_uses_continuation_frames_and_is_never_truncated():
    payload = {"action": "big", "data": "x" * 300_000}
    frame = P.encode(P.REQUEST, 9, payload)
    types = []
    pos = 0
    while pos < len(frame):
        t, _c, n = P.HEADER.unpack_from(frame, pos)
        types.append(t)
        pos += 7 + n
    assert types[:-1] == [P.CONTINUATION] * (len(types) - 1) and types[-1] == P.REQUEST
    (t, c, body), = decode_all(frame, chunk=65536)
    assert (t, c) == (P.REQUEST, 9) and msgpack.unpackb(body) == payload


def test_message_over_maximum_is_reported_once_and_stream_stays_in_sync():
    big = P.encode(P.REQUEST, 4, {"data": "y" * 200_000})
    after = P.encode(P.REQUEST, 5, {"action": "next"})
    out = decode_all(big + after, chunk=10_000, max_message=100_000)
    assert isinstance(out[0], P.ProtocolError) and out[0].code == "too_large" and out[0].conv_id == 4
    assert len(out) == 2 and out[1][1] == 5


def test_unknown_type_and_empty_payload_are_violations_without_losing_sync():
    bad = P.HEADER.pack(0x7E, 1, 2) + b"\x80\x80" + P.HEADER.pack(P.REQUEST, 2, 0)
    good = P.encode(P.REQUEST, 3, {"action": "ok"})
    out = decode_all(bad + good)
    assert [getattr(o, "code", None) for o in out[:2]] == ["unknown_type", "empty_payload"]
    assert out[2][1] == 3


def test_interrupted_continuation_is_a_violation():
    part = P.HEADER.pack(P.CONTINUATION, 1, 3) + b"abc"
    other = P.encode(P.REQUEST, 2, {"action": "x"})
    out = decode_all(part + other)
    assert isinstance(out[0], P.ProtocolError) and out[0].code == "interleaved"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=64))
def test_decoder_never_raises_on_garbage(data, chunk):
    dec = P.FrameDecoder(1 << 16)
    for i in range(0, len(data), chunk):
        for item in dec.feed(data[i:i + chunk]):
            assert isinstance(item, (tuple, P.ProtocolError))
    assert dec.buffered <= len(data)


@pytest.mark.parametrize("body", [b"\xc1", b"\x91\x01", b"\xa3abc"])
def test_unpack_payload_refuses_non_maps(body):
    with pytest.raises(P.ProtocolError):
        P.unpack_payload(body)
