"""Locks and pub/sub (issue 4): lock acquire+release pairs/s over HTTP and IPC, publish ->
subscriber latency over IPC.

    python bench/bench_locks.py              # about 30 s; table + one JSON line
    python bench/bench_locks.py --no-wrk     # the Python HTTP load generator instead of wrk

Parts (each on a fresh daemon in a temporary home):
  1. HTTP: `POST /locks/<name>` then `DELETE /locks/<name>`, strictly request -> response, on
     `--conns` keep-alive connections, each on a lock of its own (no contention: the cost of
     the operations, not of waiting). Default TTL, so each pair is two durable writes. Target
     >= 4,100 pairs/s (3x the 1.37k pairs/s of Port Daddy 3.7 on the reference machine).
  2. IPC: the same pairs over `--conns` connections, pipelined (frames on one connection are
     handled in order, so each acquire finds its lock free), with a TTL (durable) and without
     (connection-bound, nothing written); and 1 connection strictly request -> response.
  3. Publish -> subscriber latency over IPC: a fire-and-forget `msg.publish` on one
     connection, timed until the delivery arrives on a subscribed connection, one at a time.
The last line printed is `{"bench": "locks", ...}` for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _httpload as H  # noqa: E402
from bench import _ipcload as L  # noqa: E402
from bench._launch import BenchDaemon, CpuMeter  # noqa: E402
from pdcore import protocol as P  # noqa: E402

TARGETS = {"http_lock_pairs_s": (">=", 4_100)}


class Alternate:
    """Feeds acquire, release, acquire, ... forever (an `_ipcload` feeder)."""

    def __init__(self, first: bytes, second: bytes) -> None:
        self.frames = (first, second)
        self.pos = 0

    def take(self, n: int) -> tuple[bytes, int]:
        out = []
        for _ in range(n):
            out.append(self.frames[self.pos])
            self.pos ^= 1
        return b"".join(out), n


def _http_requests(token: str | None):
    """Raw lock acquire/release requests, alternately, carrying the daemon's token."""
    auth = H.auth_line(token)

    def make(i: int, n: int) -> bytes:
        name = f"bench-http-{i}"
        body = json.dumps({"owner": name}).encode()
        method = "POST" if n % 2 == 0 else "DELETE"
        return (f"{method} /locks/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    return make


def part_http(args: argparse.Namespace, out: dict) -> None:
    with BenchDaemon().start() as d:
        if not d.wait_http(20):
            out["http_note"] = "the HTTP server did not answer within 20 s"
            return
        meter = CpuMeter({"core": [d.core_pid() or 0], "http": d.http_pids()})
        if H.wrk_path() and not args.no_wrk:
            H.run_wrk(d.port, "lock_pairs.lua", args.conns, 1, threads=args.conns, script_args=("warm",),
                      token=d.token)
            r = H.run_wrk(d.port, "lock_pairs.lua", args.conns, args.duration, threads=args.conns,
                          script_args=("bench",), token=d.token)
        else:
            r = H.run_python(d.port, _http_requests(d.token), args.conns, args.warmup, args.duration)
        cpu = meter.stop()
    out.update(http_lock_pairs_s=round(r.req_per_s / 2), http_lock_p50_ms=round(r.p50_ms or 0, 2),
               http_lock_p99_ms=round(r.p99_ms or 0, 2), http_non200=r.non200, http_socket_errors=r.socket_errors,
               http_tool=r.tool, http_cpu=cpu)


def _ipc_pairs(d: BenchDaemon, conns: int, window: int, ttl: int | None, warmup: float, duration: float) -> L.Result:
    def feeder(i: int) -> Alternate:
        name = f"bench-ipc-{window}-{ttl}-{i}"
        extra = {} if ttl is None else {"ttl": ttl}
        return Alternate(L.request_frame("lock.acquire", name=name, owner=name, **extra),
                         L.request_frame("lock.release", name=name, owner=name))

    return L.run(d.ipc_path, conns, window, feeder, warmup, duration)


def part_ipc(args: argparse.Namespace, out: dict) -> None:
    with BenchDaemon().start(core_only=True) as d:
        for key, conns, window, ttl in (("ipc_lock_pairs_s", args.conns, args.window, 60_000),
                                        ("ipc_connbound_lock_pairs_s", args.conns, args.window, None),
                                        ("ipc_rr1_lock_pairs_s", 1, 1, 60_000)):
            r = _ipc_pairs(d, conns, window, ttl, args.warmup, args.duration)
            out[key] = round(r.ops_per_s / 2)
            if r.errors:
                out[f"{key}_errors"] = r.errors
                out.setdefault("notes", []).append(f"{key}: {r.errors} errors, first {r.first_error}")
            if window == 1:
                out["ipc_rr1_op_p50_us"] = round(r.p50_us or 0, 1)
                out["ipc_rr1_op_p99_us"] = round(r.p99_us or 0, 1)


def part_pubsub(args: argparse.Namespace, out: dict) -> None:
    import socket

    with BenchDaemon().start(core_only=True) as d:
        sub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sub.connect(d.ipc_path)
        sub.sendall(P.encode(P.SUBSCRIBE, 1, {"channels": ["bench:latency"]}))
        decoder = P.FrameDecoder()

        def next_frame() -> tuple:
            while True:
                data = sub.recv(65536)
                if not data:
                    raise ConnectionError("daemon closed the subscription")
                frames = [f for f in decoder.feed(data) if not isinstance(f, P.ProtocolError)]
                if frames:
                    pending.extend(frames[1:])
                    return frames[0]

        pending: list = []
        next_frame()  # AGREE
        pub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        pub.connect(d.ipc_path)
        samples = []
        for i in range(args.warmup_msgs + args.messages):
            frame = L.request_frame("msg.publish", conv_id=0, channel="bench:latency", payload=f"m{i}")
            t0 = time.perf_counter_ns()
            pub.sendall(frame)
            got = pending.pop(0) if pending else next_frame()
            if i >= args.warmup_msgs:
                samples.append(time.perf_counter_ns() - t0)
            assert got[0] == P.INFORM, got
        sub.close()
        pub.close()
    out.update(pubsub_p50_us=round(L.percentile_us(samples, 50) or 0, 1),
               pubsub_p99_us=round(L.percentile_us(samples, 99) or 0, 1), pubsub_samples=len(samples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=16, help="connections for the throughput parts")
    ap.add_argument("--window", type=int, default=64, help="IPC requests in flight per connection")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--messages", type=int, default=5000, help="pub/sub latency samples")
    ap.add_argument("--warmup-msgs", type=int, default=500)
    ap.add_argument("--no-wrk", action="store_true", help="use the Python HTTP load generator even if wrk exists")
    ap.add_argument("--parts", default="1,2,3")
    args = ap.parse_args()
    began = time.monotonic()
    out: dict[str, Any] = {"bench": "locks"}
    parts = set(args.parts.split(","))
    if "1" in parts:
        part_http(args, out)
    if "2" in parts:
        part_ipc(args, out)
    if "3" in parts:
        part_pubsub(args, out)
    out["targets"] = {k: {"target": f"{op} {v}", "value": out.get(k),
                          "met": out.get(k) is not None and (out[k] >= v if op == ">=" else out[k] <= v)}
                      for k, (op, v) in TARGETS.items()}
    out["runtime_s"] = round(time.monotonic() - began, 1)
    for key, value in out.items():
        if key not in ("bench", "targets", "http_cpu", "notes"):
            print(f"{key:32} {value}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
