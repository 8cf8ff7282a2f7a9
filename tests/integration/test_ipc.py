"""The live core against bad and hostile input: it never crashes or hangs, and the rules hold."""

from __future__ import annotations

import socket
import time

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdcore import protocol as P


def connect(daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(daemon.config.ipc))
    return s


def read_frames(s: socket.socket, want: int, timeout: float = 5.0) -> list:
    dec = P.FrameDecoder()
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        out.extend(dec.feed(data))
    return out


def core_alive(daemon) -> bool:
    return daemon.client().daemon_health()["status"] == "ok"


def test_three_strikes_closes_the_connection(daemon):
    s = connect(daemon)
    for _ in range(3):
        s.sendall(P.HEADER.pack(0x7E, 7, 1) + b"\x00")
    frames = read_frames(s, 3)
    assert [f[0] for f in frames] == [P.NOT_UNDERSTOOD] * 3
    assert s.recv(10) == b""  # closed by the core
    assert core_alive(daemon)


def test_undecodable_payload_is_a_strike_not_a_crash(daemon):
    s = connect(daemon)
    s.sendall(P.encode_body(P.REQUEST, 5, b"\xc1\xc1\xc1"))
    (t, conv, body), = read_frames(s, 1)
    assert (t, conv) == (P.NOT_UNDERSTOOD, 5) and msgpack.unpackb(body)["strikes"] == 1
    s.sendall(P.encode(P.REQUEST, 6, {"action": "daemon.health"}))
    (t, conv, _), = read_frames(s, 1)
    assert (t, conv) == (P.INFORM_DONE, 6)


def test_conv_id_is_echoed_and_fire_and_forget_gets_no_reply(daemon):
    s = connect(daemon)
    s.settimeout(1.0)
    s.sendall(P.encode(P.REQUEST, 0, {"action": "daemon.health"}) +
              P.encode(P.REQUEST, 0x7FFFFFFF, {"action": "daemon.version"}))
    frames = read_frames(s, 2, timeout=1.0)
    assert [(f[0], f[1]) for f in frames] == [(P.INFORM_DONE, 0x7FFFFFFF)]


def test_unknown_action_is_refused_with_code(daemon):
    s = connect(daemon)
    s.sendall(P.encode(P.REQUEST, 3, {"action": "no.such.op"}))
    (t, conv, body), = read_frames(s, 1)
    assert (t, conv) == (P.REFUSE, 3) and msgpack.unpackb(body)["code"] == "unknown_action"


def test_message_larger_than_a_frame_round_trips(daemon):
    s = connect(daemon)
    meta = {f"k{i}": "v" * 900 for i in range(60)}  # ~55 KiB of metadata, plus a long cmd
    s.sendall(P.encode(P.REQUEST, 8, {"action": "port.claim", "id": "big:payload:x", "metadata": meta,
                                       "cmd": "c" * 4000}))
    (t, conv, body), = read_frames(s, 1)
    assert (t, conv) == (P.INFORM_DONE, 8)
    s.sendall(P.encode(P.REQUEST, 9, {"action": "port.list", "pattern": "big:payload:*"}))
    (t, conv, body), = read_frames(s, 1)
    assert t == P.INFORM_DONE and msgpack.unpackb(body)["result"]["services"][0]["metadata"] == meta


def test_message_over_the_configured_maximum_gets_failure(daemon_factory):
    d = daemon_factory(ipc_max_message=100_000)
    s = connect(d)
    s.sendall(P.encode(P.REQUEST, 4, {"action": "port.claim", "id": "a:b", "cmd": "x" * 200_000}))
    s.sendall(P.encode(P.REQUEST, 5, {"action": "daemon.health"}))
    frames = read_frames(s, 2)
    assert (frames[0][0], frames[0][1]) == (P.FAILURE, 4)
    assert msgpack.unpackb(frames[0][2])["code"] == "too_large"
    assert (frames[1][0], frames[1][1]) == (P.INFORM_DONE, 5)


def test_rate_limit_refuses_beyond_budget(daemon_factory):
    d = daemon_factory(ipc_rate_limit=50)
    s = connect(d)
    s.sendall(b"".join(P.encode(P.REQUEST, i, {"action": "daemon.health"}) for i in range(1, 201)))
    frames = read_frames(s, 200)
    kinds = [f[0] for f in frames]
    assert len(frames) == 200
    assert kinds.count(P.INFORM_DONE) <= 60 and kinds.count(P.REFUSE) >= 140
    refused = next(f for f in frames if f[0] == P.REFUSE)
    assert msgpack.unpackb(refused[2])["code"] == "rate_limited"


def test_connection_cap_refuses_the_next_connection(daemon_factory):
    # the daemon's own fleet runner holds a few of them; no slots kept for newcomers here
    d = daemon_factory(ipc_max_connections=8, ipc_reserved_connections=0)
    held, refused = [], None
    for _ in range(9):
        s = connect(d)
        try:
            s.sendall(P.encode(P.REQUEST, 1, {"action": "daemon.health"}))
        except OSError:
            pass  # a refused connection may already be closed; its REFUSE is still readable
        frames = read_frames(s, 1)
        assert frames, "no answer"
        if frames[0][0] == P.REFUSE:
            refused = frames[0]
            break
        held.append(s)
    assert refused is not None and 4 <= len(held) <= 8
    assert msgpack.unpackb(refused[2])["code"] == "too_many_connections"
    for s in held:  # free the slots (the daemon's fleet runner may retake one while it reconnects)
        s.close()
    time.sleep(0.3)
    again = connect(d)
    again.sendall(P.encode(P.REQUEST, 2, {"action": "daemon.health"}))
    assert read_frames(again, 1)[0][0] == P.INFORM_DONE


def test_a_client_that_never_reads_does_not_grow_the_core_without_bound(daemon):
    s = connect(daemon)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    import psutil
    core = psutil.Process(daemon.core_pid())
    before = core.memory_info().rss
    frame = P.encode(P.REQUEST, 1, {"action": "port.list", "limit": 100000})
    s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sent < 20_000:
        try:
            s.send(frame)
            sent += 1
        except BlockingIOError:
            time.sleep(0.01)
    grown = core.memory_info().rss - before
    assert grown < 200 * 1024 * 1024, f"core grew by {grown >> 20} MiB"
    s.close()
    assert core_alive(daemon)


_frame_strategy = st.one_of(
    st.binary(min_size=1, max_size=512),
    st.builds(lambda t, c, body: P.HEADER.pack(t, c, len(body)) + body,
              st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=64)),
    st.builds(lambda action, junk: P.encode(P.REQUEST, 1, {"action": action, "id": junk}),
              st.sampled_from(["port.claim", "port.get", "port.release", "port.list", "x"]),
              st.one_of(st.text(max_size=80), st.integers(-2**63, 2**63 - 1), st.none(), st.lists(st.integers(-2**31, 2**31), max_size=3))),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_frame_strategy, min_size=1, max_size=6))
def test_random_and_mutated_bytes_never_crash_or_hang_the_core(daemon, chunks):
    s = connect(daemon)
    try:
        s.sendall(b"".join(chunks))
    except OSError:
        pass  # the core may close after three strikes
    s.close()
    t0 = time.monotonic()
    assert core_alive(daemon)
    assert time.monotonic() - t0 < 2
