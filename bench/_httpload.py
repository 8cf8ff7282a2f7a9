"""HTTP load: `wrk` when installed, else a small uvloop keep-alive load generator.

Both POST a body built per request (e.g. a distinct identity per claim) on `conns`
keep-alive connections, each strictly request -> response, and report requests/s, non-200
replies and p50/p99 latency. Shared by every bench/*.py script. A daemon's TCP port wants its
home's token: `run_wrk(token=...)` hands it to the Lua scripts (PORT_DADDY_TOKEN), and
`post_json(token=...)` puts it in the request.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


@dataclass
class HttpResult:
    tool: str
    requests: int
    seconds: float
    non200: int
    socket_errors: int
    p50_ms: float | None
    p99_ms: float | None

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(port: int, script: str, conns: int, duration_s: float, threads: int = 2,
            script_args: tuple[str, ...] = (), token: str | None = None) -> HttpResult:
    """Run wrk with a Lua script whose done() prints a `WRKJSON {...}` line (see claim_distinct.lua)."""
    cmd = [wrk_path() or "wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
           "-s", str(BENCH_DIR / script), f"http://127.0.0.1:{port}", "--", *script_args]
    env = {k: v for k, v in os.environ.items() if k != "PORT_DADDY_TOKEN"}
    if token:
        env["PORT_DADDY_TOKEN"] = token
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, env=env)
    m = re.search(r"^WRKJSON (\{.*\})$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no summary (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    d = json.loads(m.group(1))
    return HttpResult("wrk", d["requests"], d["duration_us"] / 1e6, d["non200"], d["socket_errors"],
                      d["p50_us"] / 1000.0, d["p99_us"] / 1000.0)


class _HttpConn(asyncio.Protocol):
    def __init__(self, load: _HttpLoad, index: int) -> None:
        self.load = load
        self.index = index
        self.n = 0
        self.buf = b""
        self.sent_at = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.load.sending:
            self.load.socket_errors += 1
        self.load.closed += 1
        if self.load.closed == len(self.load.conns) and not self.load.done.done():
            self.load.done.set_result(None)

    def send_next(self) -> None:
        self.n += 1
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.load.make_request(self.index, self.n))  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end]
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            total = head_end + 4 + length
            if len(self.buf) < total:
                return
            status = int(head[9:12])
            self.buf = self.buf[total:]
            load = self.load
            if load.recording:
                load.requests += 1
                load.latencies.append(time.perf_counter_ns() - self.sent_at)
                if status != 200:
                    load.non200 += 1
            if load.sending:
                self.send_next()
            else:
                self.transport.close()  # type: ignore[union-attr]


class _HttpLoad:
    def __init__(self, make_request: Callable[[int, int], bytes]) -> None:
        self.make_request = make_request
        self.sending = True
        self.recording = False
        self.requests = 0
        self.non200 = 0
        self.socket_errors = 0
        self.closed = 0
        self.latencies: list[int] = []
        self.conns: list[_HttpConn] = []
        self.done = asyncio.get_running_loop().create_future()


async def _python_load(port: int, make_request: Callable[[int, int], bytes], conns: int, warmup_s: float,
                       duration_s: float) -> HttpResult:
    loop = asyncio.get_running_loop()
    load = _HttpLoad(make_request)
    for i in range(conns):
        _, proto = await loop.create_connection(lambda i=i: _HttpConn(load, i), "127.0.0.1", port)
        load.conns.append(proto)
    for proto in load.conns:
        proto.send_next()
    await asyncio.sleep(warmup_s)
    load.recording = True
    t0 = loop.time()
    await asyncio.sleep(duration_s)
    load.recording = False
    elapsed = loop.time() - t0
    load.sending = False
    try:
        await asyncio.wait_for(load.done, timeout=15)
    except TimeoutError:
        for proto in load.conns:
            proto.transport.close()  # type: ignore[union-attr]
    from bench._ipcload import percentile_us

    p50 = percentile_us(load.latencies, 50)
    p99 = percentile_us(load.latencies, 99)
    return HttpResult("python", load.requests, elapsed, load.non200, load.socket_errors,
                      None if p50 is None else p50 / 1000.0, None if p99 is None else p99 / 1000.0)


def run_python(port: int, make_request: Callable[[int, int], bytes], conns: int, warmup_s: float,
               duration_s: float) -> HttpResult:
    """The fallback load generator: `make_request(conn_index, n)` returns one full HTTP/1.1 request."""
    import uvloop

    return uvloop.run(_python_load(port, make_request, conns, warmup_s, duration_s))


def auth_line(token: str | None) -> str:
    """The Authorization header line of a raw request ("" without a token)."""
    return f"Authorization: Bearer {token}\r\n" if token else ""


def post_json(path: str, body: dict, token: str | None = None) -> bytes:
    """One keep-alive HTTP/1.1 POST with a JSON body (and the daemon's token when given)."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth_line(token)}"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data
