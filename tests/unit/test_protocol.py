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


# -- the limits the core relies on ------------------------------------------------------------
def continued(conv: int, chunks: int, size: int = 1000) -> bytes:
    """`chunks` CONTINUATION frames of one message, without its last frame."""
    return (P.HEADER.pack(P.CONTINUATION, conv, size) + b"\x00" * size) * chunks


def test_frames_stops_at_its_limit_and_says_more_are_waiting():
    dec = P.FrameDecoder()
    dec.push(b"".join(P.encode(P.REQUEST, n, {"action": "a"}) for n in range(1, 11)) + b"\x10\x00")
    first = list(dec.frames(4))
    assert [c for _t, c, _b in first] == [1, 2, 3, 4] and dec.more
    rest = list(dec.frames(100))
    assert [c for _t, c, _b in rest] == list(range(5, 11)) and not dec.more  # a partial header is not "more"
    assert dec.buffered == 2


def test_the_budget_is_shared_and_a_message_past_it_is_freed_and_skipped():
    budget = P.PendingBudget(5000)
    a, b = P.FrameDecoder(1 << 20, budget), P.FrameDecoder(1 << 20, budget)
    assert list(a.feed(continued(1, 3))) == [] and budget.held == 3000
    out = list(b.feed(continued(2, 3)))  # the third chunk would make 6000
    assert len(out) == 1 and out[0].code == "too_large" and out[0].conv_id == 2
    assert "ipc_pending_bytes_max (5000 bytes)" in str(out[0])
    assert budget.held == 3000  # b's two held chunks were given back
    tail = P.HEADER.pack(P.REQUEST, 2, 1) + b"\x00"
    assert list(b.feed(continued(2, 2) + tail)) == []  # the rest of b's message is skipped, silently
    assert budget.held == 3000
    last = msgpack.packb({"action": "done"})
    (t, c, body), = a.feed(P.HEADER.pack(P.REQUEST, 1, len(last)) + last)
    assert (t, c) == (P.REQUEST, 1) and len(body) == 3000 + len(last)
    assert budget.held == 0  # a finished message holds nothing


def test_a_closed_connection_gives_its_held_bytes_back():
    budget = P.PendingBudget(1 << 20)
    dec = P.FrameDecoder(1 << 20, budget)
    list(dec.feed(continued(4, 5)))
    assert budget.held == 5000
    dec.release()
    assert budget.held == 0 and dec.buffered == 0


def test_a_message_over_its_own_maximum_gives_its_budget_back():
    budget = P.PendingBudget(1 << 20)
    dec = P.FrameDecoder(2500, budget)
    out = list(dec.feed(continued(3, 3)))
    assert out[0].code == "too_large" and "ipc_max_message" in str(out[0]) and budget.held == 0


@pytest.mark.parametrize("pad", [
    [{}] * 200_000,  # one long list: refused from its header
    [[{}] * 50_000] * 80,  # 4M empty maps in short lists: refused by the count (a plain decode takes ~0.5 s)
    {str(i): i for i in range(60_000)},  # one long map (two values an entry)
    [[[1, 2]] * 500] * 200,
])
def test_a_message_of_too_many_values_is_refused_quickly(pad):
    import time

    body = msgpack.packb({"action": "a", "pad": pad})
    t0 = time.perf_counter()
    with pytest.raises(P.ProtocolError) as err:
        P.unpack_bounded(body, 100_000)
    assert err.value.code == "too_large" and "ipc_max_elements (100000)" in str(err.value)
    assert time.perf_counter() - t0 < 0.25


def test_a_message_within_the_value_limit_decodes_as_usual():
    payload = {"action": "a", "pad": [[1, {"k": "v"}]] * 19_000, "text": "x" * 200_000}  # ~95k values
    assert P.unpack_bounded(msgpack.packb(payload), 100_000) == payload
    with pytest.raises(P.ProtocolError) as err:
        P.unpack_bounded(b"\xc1" * 10, 5)
    assert err.value.code == "bad_payload"
