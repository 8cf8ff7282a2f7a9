"""Subscription patterns cannot stall the core: indexed (publish costs the same with 10,000) and capped.

One IPC connection holds 10,000 wildcard patterns of several shapes, none matching the measured
channels; another measures `msg.publish` and `tuple.out` round trips. Rounds alternate between
no patterns and 10,000 (subscribed and unsubscribed in one frame each), so load on the machine
falls on both alike; the p99 with patterns must stay within 2x of the p99 without.
"""

from __future__ import annotations

import socket
import time

import msgpack
import pytest

from pdcore import protocol as P

PATTERNS = 10_000
ROUNDS = 6
SAMPLES = 300  # per op, per condition, per round: 1,800 samples each, so p99 is the 18th worst
WARMUP = 200
RATIO_MAX = 2.0
ATTEMPTS = 3  # a whole measurement is repeated (at most this often) only when another process spoiled it


def connect(daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(daemon.config.ipc))
    return s


class Link:
    """One raw IPC connection: send a frame, wait for the answer to its conv_id."""

    def __init__(self, daemon) -> None:
        self.sock = connect(daemon)
        self.decoder = P.FrameDecoder(1 << 26)
        self.conv = 0

    def ask(self, type_: int, payload: dict) -> tuple[int, dict]:
        self.conv += 1
        self.sock.sendall(P.encode(type_, self.conv, payload))
        while True:
            data = self.sock.recv(1 << 20)
            assert data, "the core closed the connection"
            for item in self.decoder.feed(data):
                assert isinstance(item, tuple), item
                frame_type, conv, body = item
                if conv == self.conv:
                    return frame_type, msgpack.unpackb(body, raw=False)

    def call(self, action: str, **args: object) -> dict:
        frame_type, body = self.ask(P.REQUEST, {"action": action, **args})
        assert frame_type == P.INFORM_DONE, body
        return body["result"]

    def close(self) -> None:
        self.sock.close()


def wildcard_patterns(n: int, tag: str = "") -> list[str]:
    """Patterns of the shapes people write, none matching `perf:events` or `tuple:perf:harbor`.

    Some share a literal prefix with the measured channels (`perf:*:N`, `tuple:perf:*:N`), so
    their lookups get past the first level of the index.
    """
    shapes = ("bench{t}:{i}:*", "*:quiet{t}{i}", "perf:*:{t}{i}", "tuple:perf:*:n{t}{i}", "myapp{t}{i}:*:main")
    return [shapes[i % len(shapes)].format(t=tag, i=i) for i in range(n)]


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def measure(pub: Link, sub: Link, patterns: list[str]) -> dict[str, dict[str, float]]:
    """p99 round trips (ms) of publish and tuple.out, without and with the patterns, rounds alternating."""
    ops = {
        "msg.publish": lambda: pub.call("msg.publish", channel="perf:events", payload="x"),
        "tuple.out": lambda: pub.call("tuple.out", fields=["perf", 1], harbor="perf:harbor", ttlMs=60_000),
    }
    samples: dict[str, dict[str, list[float]]] = {cond: {op: [] for op in ops} for cond in ("none", "patterns")}
    deadline = time.monotonic() + 120
    for round_no in range(ROUNDS * 2):
        cond = "patterns" if round_no % 2 else "none"
        kind = P.SUBSCRIBE if cond == "patterns" else P.UNSUBSCRIBE
        answer, body = sub.ask(kind, {"channels": patterns})
        assert answer == P.AGREE and body["count"] == (PATTERNS if cond == "patterns" else 0), body
        for op, run in ops.items():
            for i in range(SAMPLES):
                started = time.perf_counter()
                run()
                samples[cond][op].append((time.perf_counter() - started) * 1000)
                if i % 50 == 0:
                    assert time.monotonic() < deadline, "measurement took over 2 minutes"
    return {cond: {op: p99(values) for op, values in by_op.items()} for cond, by_op in samples.items()}


@pytest.mark.timeout(600)
def test_ten_thousand_patterns_leave_publish_and_tuple_out_p99_within_2x(daemon_factory):
    daemon = daemon_factory(ipc_rate_limit=0)
    pub, sub = Link(daemon), Link(daemon)
    patterns = wildcard_patterns(PATTERNS)
    for _ in range(WARMUP):
        pub.call("msg.publish", channel="perf:events", payload="warm")
        pub.call("tuple.out", fields=["perf", 0], harbor="perf:harbor", ttlMs=60_000)
    attempts = []
    for _ in range(ATTEMPTS):
        figures = measure(pub, sub, patterns)
        ratios = {op: figures["patterns"][op] / figures["none"][op] for op in figures["none"]}
        attempts.append((figures, ratios))
        print(f"\npatterns={PATTERNS} p99 ms: none={figures['none']} patterns={figures['patterns']} "
              f"ratio={ratios}")
        if all(r <= RATIO_MAX for r in ratios.values()):
            break
    assert all(r <= RATIO_MAX for r in attempts[-1][1].values()), attempts
    pub.close()
    sub.close()


def test_past_the_caps_a_subscribe_is_refused_whole_and_closing_frees_it(daemon_factory):
    daemon = daemon_factory(ipc_rate_limit=0, subscribe_patterns_max=15_000)
    first, second, watcher = Link(daemon), Link(daemon), Link(daemon)
    answer, body = first.ask(P.SUBSCRIBE, {"channels": wildcard_patterns(PATTERNS, "a")})
    assert (answer, body["count"]) == (P.AGREE, PATTERNS)

    # One more on the same connection: refused, naming the setting and its value.
    answer, body = first.ask(P.SUBSCRIBE, {"channels": ["late:*", "late:exact"]})
    assert answer == P.REFUSE, body
    assert body["code"] == "too_many_patterns" and body["setting"] == "subscribe_patterns_per_connection"
    assert body["limit"] == 10_000 and "subscribe_patterns_per_connection=10000" in body["error"]

    # Patterns the index cannot decide alone have their own, smaller cap.
    answer, body = watcher.ask(P.SUBSCRIBE, {"channels": [f"*x{i}*" for i in range(33)]})
    assert answer == P.REFUSE and body["setting"] == "subscribe_scanned_patterns_per_connection"

    # The daemon-wide cap counts every connection; a refused SUBSCRIBE applies nothing.
    answer, body = second.ask(P.SUBSCRIBE, {"channels": wildcard_patterns(5_000, "b")})
    assert answer == P.AGREE
    answer, body = second.ask(P.SUBSCRIBE, {"channels": ["over:*", "over:exact"]})
    assert answer == P.REFUSE and body["setting"] == "subscribe_patterns_max" and body["limit"] == 15_000
    watcher.call("msg.publish", channel="over:exact", payload="not for second")
    watcher.call("msg.publish", channel="late:exact", payload="not for first")

    # Closing a connection gives its patterns back: a new connection may take them.
    first.close()
    deadline = time.monotonic() + 10
    while True:
        third = Link(daemon)
        answer, body = third.ask(P.SUBSCRIBE, {"channels": wildcard_patterns(PATTERNS, "c")})
        if answer == P.AGREE or time.monotonic() > deadline:
            break
        third.close()
        time.sleep(0.05)  # the core may not have seen the close yet
    assert answer == P.AGREE, body
    # Nothing of the refused SUBSCRIBEs was applied: `second` got no delivery for over:exact.
    second.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        second.sock.recv(1 << 16)
    for link in (second, third, watcher):
        link.close()
