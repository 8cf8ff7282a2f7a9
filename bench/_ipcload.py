"""A cheap IPC load generator: many connections, one process, uvloop, asyncio.Protocol.

The client must not be the bottleneck on a 2-core machine, so it does as little as it can:
request frames are built before the clock starts, replies are counted by reading only their
7-byte headers (payloads are never decoded, except the first non-INFORM_DONE one, kept for
the error report), and each connection refills its window with one write per batch of
replies. Shared by every bench/*.py script.

    frame = request_frame("port.claim", id="bench:x")
    result = run(ipc_path, conns=32, window=64, feeders=lambda i: Repeat(frame),
                 warmup_s=1, duration_s=3)
    result.ops_per_s, result.p50_us, result.errors
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from pdcore import protocol as P

_pack = msgpack.Packer(use_bin_type=True).pack


def request_frame(action: str, conv_id: int = 1, **args: Any) -> bytes:
    """One REQUEST frame (conv_id 0 makes it fire-and-forget)."""
    return P.encode(P.REQUEST, conv_id, {"action": action, **args})


class Repeat:
    """Feeds the same frame forever (e.g. a claim of an existing identity)."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame

    def take(self, n: int) -> tuple[bytes, int]:
        return self.frame * n, n


class Frames:
    """Feeds a prebuilt list of frames once, in order (e.g. claims of distinct identities)."""

    def __init__(self, frames: Sequence[bytes]) -> None:
        self.frames = frames
        self.pos = 0

    def take(self, n: int) -> tuple[bytes, int]:
        start = self.pos
        chunk = self.frames[start:start + n]
        self.pos = start + len(chunk)
        return b"".join(chunk), len(chunk)


@dataclass
class Result:
    ops: int = 0
    seconds: float = 0.0
    errors: int = 0
    first_error: str | None = None
    latencies_ns: list[int] = field(default_factory=list)
    commits: int | None = None  # filled by callers that read the core's counters

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def percentile_us(self, q: float) -> float | None:
        return percentile_us(self.latencies_ns, q)

    @property
    def p50_us(self) -> float | None:
        return self.percentile_us(50)

    @property
    def p99_us(self) -> float | None:
        return self.percentile_us(99)


def percentile_us(samples_ns: list[int], q: float) -> float | None:
    """The q-th percentile (nearest rank) of nanosecond samples, in microseconds."""
    if not samples_ns:
        return None
    ordered = sorted(samples_ns)
    rank = min(len(ordered) - 1, max(0, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[rank] / 1000.0


class _Run:
    """State shared by the connections of one run (single-threaded: plain attributes)."""

    def __init__(self, window: int, track_latency: bool) -> None:
        self.window = window
        self.track_latency = track_latency
        self.sending = True
        self.recording = False
        self.replies = 0
        self.errors = 0
        self.first_error: str | None = None
        self.latencies: list[int] = []
        self.inflight_total = 0
        self.drained = asyncio.get_running_loop().create_future()

    def conn_idle(self) -> None:
        if self.inflight_total == 0 and not self.drained.done():
            self.drained.set_result(None)


class _LoadConn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.inflight = 0
        self.feeder: Any = None
        self.run: _Run | None = None
        self.sent_at = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        run = self.run
        if run is not None and self.inflight:
            run.inflight_total -= self.inflight
            self.inflight = 0
            run.conn_idle()

    def begin(self, run: _Run, feeder: Any) -> None:
        self.run = run
        self.feeder = feeder
        self._send(run.window)

    def _send(self, n: int) -> None:
        data, k = self.feeder.take(n)
        if k:
            self.inflight += k
            self.run.inflight_total += k  # type: ignore[union-attr]
            if self.run.track_latency:  # type: ignore[union-attr]
                self.sent_at = time.perf_counter_ns()
            self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = len(buf)
        pos = 0
        n = 0
        run = self.run
        while end - pos >= 7:
            nxt = pos + 7 + ((buf[pos + 5] << 8) | buf[pos + 6])
            if nxt > end:
                break
            if buf[pos] != P.INFORM_DONE and run is not None:
                run.errors += 1
                if run.first_error is None:
                    try:
                        run.first_error = f"{P.NAMES.get(buf[pos], buf[pos])}: {P.unpack_payload(bytes(buf[pos + 7:nxt]))}"
                    except P.ProtocolError:
                        run.first_error = P.NAMES.get(buf[pos], str(buf[pos]))
            pos = nxt
            n += 1
        if pos:
            del buf[:pos]
        if not n or run is None:
            return
        self.inflight -= n
        run.inflight_total -= n
        if run.recording:
            run.replies += n
            if run.track_latency:
                run.latencies.append(time.perf_counter_ns() - self.sent_at)
        if run.sending:
            self._send(n)
        if self.inflight == 0:
            run.conn_idle()


async def _connect(path: str, conns: int) -> list[_LoadConn]:
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(conns):
        _, proto = await loop.create_unix_connection(_LoadConn, path)
        out.append(proto)
    return out


async def _timed(path: str, conns: int, window: int, feeders: Callable[[int], Any], warmup_s: float,
                 duration_s: float) -> Result:
    protos = await _connect(path, conns)
    run = _Run(window, track_latency=(window == 1))
    loop = asyncio.get_running_loop()
    try:
        for i, proto in enumerate(protos):
            proto.begin(run, feeders(i))
        await asyncio.sleep(warmup_s)
        run.recording = True
        t0 = loop.time()
        await asyncio.sleep(duration_s)
        run.recording = False
        elapsed = loop.time() - t0
        run.sending = False
        await asyncio.wait_for(asyncio.shield(run.drained), timeout=30)
    finally:
        for proto in protos:
            proto.transport.close()  # type: ignore[union-attr]
    return Result(ops=run.replies, seconds=elapsed, errors=run.errors, first_error=run.first_error,
                  latencies_ns=run.latencies)


async def _counted(path: str, conns: int, window: int, frames: list[list[bytes]]) -> Result:
    """Send every frame of `frames[i]` on connection i; time from first send to last reply."""
    protos = await _connect(path, conns)
    run = _Run(window, track_latency=False)
    run.recording = True
    t0 = time.perf_counter()
    try:
        for proto, mine in zip(protos, frames, strict=True):
            proto.begin(run, Frames(mine))
        if run.inflight_total:
            await asyncio.wait_for(asyncio.shield(run.drained), timeout=120)
        elapsed = time.perf_counter() - t0
    finally:
        for proto in protos:
            proto.transport.close()  # type: ignore[union-attr]
    return Result(ops=run.replies, seconds=elapsed, errors=run.errors, first_error=run.first_error)


def _go(coro_fn: Callable[[], Any]) -> Any:
    import uvloop

    return uvloop.run(coro_fn())


def run(path: str, conns: int, window: int, feeders: Callable[[int], Any], warmup_s: float = 1.0,
        duration_s: float = 3.0) -> Result:
    """Keep `window` requests in flight on each of `conns` connections for warm-up + duration.

    Only replies arriving during the `duration_s` after warm-up are counted. With window 1,
    each connection is strictly request -> response and latencies are recorded.
    """
    return _go(lambda: _timed(path, conns, window, feeders, warmup_s, duration_s))


def run_frames(path: str, window: int, frames: list[list[bytes]]) -> Result:
    """Send a fixed set of frames (one list per connection), pipelined; time the whole batch."""
    return _go(lambda: _counted(path, len(frames), window, frames))


def blast(path: str, frame_block: bytes, blocks: int, conns: int = 1) -> float:
    """Write `frame_block` `blocks` times over blocking sockets (fire-and-forget); return seconds taken."""
    socks = []
    for _ in range(conns):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        socks.append(s)
    t0 = time.perf_counter()
    try:
        for i in range(blocks):
            socks[i % conns].sendall(frame_block)
        return time.perf_counter() - t0
    finally:
        for s in socks:
            s.close()


class RoundTrip:
    """One blocking connection for precise single request -> response timings."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)

    def call_ns(self, frame: bytes) -> tuple[int, int]:
        """Send one request; return (nanoseconds until its whole reply arrived, reply type)."""
        sock = self.sock
        t0 = time.perf_counter_ns()
        sock.sendall(frame)
        buf = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            buf += chunk
            if len(buf) >= 7 and len(buf) >= 7 + ((buf[5] << 8) | buf[6]):
                return time.perf_counter_ns() - t0, buf[0]

    def call(self, frame: bytes) -> tuple[int, dict]:
        """Send one request; return (reply type, decoded payload)."""
        sock = self.sock
        sock.sendall(frame)
        buf = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            buf += chunk
            if len(buf) >= 7 and len(buf) >= 7 + ((buf[5] << 8) | buf[6]):
                return buf[0], P.unpack_payload(buf[7:7 + ((buf[5] << 8) | buf[6])])

    def close(self) -> None:
        self.sock.close()
