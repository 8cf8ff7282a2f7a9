"""The ceiling of the HTTP front door's design on this machine, apart from Port Daddy's own code.

    python bench/http_ceiling.py                 # about 1 minute; table + one JSON line
    python bench/http_ceiling.py --rounds 5 --duration 4

`bench_foundation` part 4 measures `POST /claim` through the real daemon. This script asks a
different question: how fast can *any* app be in the shape ARCHITECTURE.md prescribes (gunicorn
gthread workers running a Falcon WSGI app, each request one blocking round trip over a Unix
socket), on this machine, with the same load (wrk, 32 keep-alive connections, the POST /claim bodies of claim_distinct.lua)?
It runs, side by side and alternately (so noise falls on all alike):

  gthread-hello   Falcon WSGI under gunicorn gthread (the daemon's workers x threads); the
                  responder reads the body and answers a constant. No round trip.
  gthread-echo    The same, plus one blocking round trip per request to an echo server (uvloop,
                  one `asyncio.Protocol`, a Unix socket), one socket per worker thread: exactly
                  the daemon's corelink pattern, with a "core" that does no work at all.
  asgi-echo       Falcon ASGI under gunicorn's asyncio worker (uvloop), the same round trip over
                  one pipelined connection per worker (conv ids, futures), for comparison.

The echo server stands in for the core at zero cost, so `gthread-echo` is an upper bound for
the real front door: what the daemon reaches with real work must be below it. The HTTP parser
gunicorn used (`gunicorn_h1c` when installed, else its Python parser) is printed, because
gunicorn's asyncio worker depends on it far more than gthread does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import _httpload as H  # noqa: E402
from pdcore.config import Config  # noqa: E402
from pdcore.testing import free_port  # noqa: E402

ECHO_ENV = "PD_CEILING_ECHO"  # where the apps find the echo server's socket
REPLY = b'{"success":true,"port":4242}'
REQUEST = b"x" * 48  # about the size of a claim frame


# -- the echo server (the zero-cost "core") -------------------------------------------------------
class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def serve_echo(path: str) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_unix_server(_Echo, path)
        await server.serve_forever()

    uvloop.run(main())


# -- the WSGI apps (gthread) ----------------------------------------------------------------------
def _wsgi_apps():  # built lazily: gunicorn imports this module in its workers
    import falcon

    local = threading.local()

    def link() -> socket.socket:
        s = getattr(local, "sock", None)
        if s is None:
            s = local.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(os.environ[ECHO_ENV])
        return s

    class Hello:
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            req.bounded_stream.read()
            resp.content_type = falcon.MEDIA_JSON
            resp.data = REPLY

    class Echo:
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            req.bounded_stream.read()
            s = link()
            s.sendall(REQUEST)
            got = 0
            while got < len(REQUEST):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("echo server went away")
                got += len(chunk)
            resp.content_type = falcon.MEDIA_JSON
            resp.data = REPLY

    hello, echo = falcon.App(), falcon.App()
    hello.add_route("/claim", Hello())
    echo.add_route("/claim", Echo())
    return hello, echo


# -- the ASGI app (gunicorn's asyncio worker) ------------------------------------------------------
class _PipelinedLink(asyncio.Protocol):
    """One connection per worker; requests tagged by position (the echo keeps order)."""

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future] = []
        self.buf = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += len(data)
        while self.buf >= len(REQUEST) and self.waiters:
            self.buf -= len(REQUEST)
            fut = self.waiters.pop(0)
            if not fut.done():
                fut.set_result(None)

    async def call(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.transport.write(REQUEST)  # type: ignore[union-attr]
        await fut


def _asgi_app():
    import falcon.asgi

    state: dict[str, _PipelinedLink] = {}
    lock = asyncio.Lock()

    async def link() -> _PipelinedLink:
        if "link" not in state:
            async with lock:
                if "link" not in state:
                    loop = asyncio.get_running_loop()
                    _, proto = await loop.create_unix_connection(_PipelinedLink, os.environ[ECHO_ENV])
                    state["link"] = proto
        return state["link"]

    class Echo:
        async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            await req.stream.read()
            await (await link()).call()
            resp.content_type = falcon.MEDIA_JSON
            resp.data = REPLY

    app = falcon.asgi.App()
    app.add_route("/claim", Echo())
    return app


def __getattr__(name: str):  # gunicorn loads "bench.http_ceiling:<name>"
    if name in ("wsgi_hello", "wsgi_echo"):
        hello, echo = _wsgi_apps()
        return hello if name == "wsgi_hello" else echo
    if name == "asgi_echo":
        return _asgi_app()
    raise AttributeError(name)


# -- running ---------------------------------------------------------------------------------------
def parser_in_use() -> str:
    try:
        import gunicorn_h1c  # noqa: F401
    except ImportError:
        return "python (gunicorn's own; pip install gunicorn_h1c for its C parser)"
    from importlib.metadata import version

    return f"gunicorn_h1c {version('gunicorn_h1c')}"


class Server:
    def __init__(self, name: str, target: str, worker: str, workers: int, threads: int, env: dict) -> None:
        self.name, self.port = name, free_port()
        cmd = [sys.executable, "-m", "gunicorn", target, "-k", worker, "-w", str(workers),
               "-b", f"127.0.0.1:{self.port}", "--log-level", "warning", "--keep-alive", "5"]
        if worker == "gthread":
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 20.0) -> None:
        import http.client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("POST", "/claim", body=b"{}", headers={"Content-Type": "application/json"})
                if c.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    cfg = Config()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--workers", type=int, default=cfg.http_workers, help="gunicorn workers (default: the daemon's)")
    ap.add_argument("--threads", type=int, default=8, help="gthread threads (the old door's 8)")
    ap.add_argument("--echo", help=argparse.SUPPRESS)  # internal: run the echo server on this path
    args = ap.parse_args(argv)
    if args.echo:
        serve_echo(args.echo)
        return
    if not H.wrk_path():
        sys.exit("http_ceiling needs wrk (apt-get install wrk)")

    tmp = tempfile.mkdtemp(prefix="pd-ceiling-")
    echo_path = os.path.join(tmp, "echo.sock")
    env = dict(os.environ, **{ECHO_ENV: echo_path, "PYTHONPATH": str(REPO)})
    echo = subprocess.Popen([sys.executable, "-m", "bench.http_ceiling", "--echo", echo_path], cwd=REPO, env=env,
                            start_new_session=True)
    variants = [("gthread-hello", "bench.http_ceiling:wsgi_hello", "gthread"),
                ("gthread-echo", "bench.http_ceiling:wsgi_echo", "gthread"),
                ("asgi-echo", "bench.http_ceiling:asgi_echo", "asgi")]
    servers: list[Server] = []
    runs: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    print(f"HTTP front-door ceiling: {args.workers} workers x {args.threads} threads (gthread), "
          f"{args.conns} connections, parser {parser_in_use()}", flush=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(echo_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        servers = [Server(name, target, worker, args.workers, args.threads, env) for name, target, worker in variants]
        for s in servers:
            s.wait_ready()
        for s in servers:  # warm-up
            H.run_wrk(s.port, "claim_distinct.lua", args.conns, 1)
        for rnd in range(args.rounds):
            order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
            for s in order:
                r = H.run_wrk(s.port, "claim_distinct.lua", args.conns, args.duration)
                if r.non200 or r.socket_errors:
                    print(f"  !! {s.name}: {r.non200} non-200, {r.socket_errors} socket errors", flush=True)
                runs[s.name].append(r.req_per_s)
                print(f"round {rnd + 1} {s.name:>14}: {r.req_per_s:8.0f} req/s  p50 {r.p50_ms:.1f} ms", flush=True)
    finally:
        for s in servers:
            s.stop()
        os.killpg(echo.pid, signal.SIGTERM)
        echo.wait(10)
    medians = {name: round(statistics.median(v)) for name, v in runs.items() if v}
    print()
    for name, value in medians.items():
        print(f"{name:>14}: median {value:8,} req/s")
    print(json.dumps({"bench": "http_ceiling", "median_req_s": medians, "runs": runs, "conns": args.conns,
                      "workers": args.workers, "threads": args.threads, "parser": parser_in_use(),
                      "machine": {"cpus": os.cpu_count()}}))


if __name__ == "__main__":
    main()
