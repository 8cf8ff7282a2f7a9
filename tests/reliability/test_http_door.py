"""The HTTP door under many connections: slow clients, the request deadlines, the connection cap,
1,000 concurrent event streams and 500 parked lock waits, on TCP and daemon.sock alike.

Every loop here is bounded in count and time; sockets are raw so that one test thread can
hold hundreds of connections (a selector reads them)."""

from __future__ import annotations

import json
import selectors
import socket
import statistics
import threading
import time
import uuid

import psutil

READ_S = 10.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def connect(d, unix: bool) -> socket.socket:
    if unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(d.home / "daemon.sock"))  # blocking: waits while the listen backlog is full
        sock.settimeout(READ_S)
        return sock
    return socket.create_connection(("127.0.0.1", d.port), timeout=READ_S)


def request_bytes(d, method: str, path: str, body: dict | None = None, unix: bool = False,
                  close: bool = False) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    if not unix:
        head.append(f"Authorization: Bearer {d.token}")
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def read_reply(sock: socket.socket, deadline_s: float = READ_S) -> tuple[int, dict]:
    """(status, JSON body) of one reply with a Content-Length."""
    data = b""
    deadline = time.monotonic() + deadline_s
    while b"\r\n\r\n" not in data:
        assert time.monotonic() < deadline, "no reply headers in time"
        chunk = sock.recv(65536)
        assert chunk, f"closed before a reply: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside a reply"
        body += chunk
    return int(head.split(b" ", 2)[1]), json.loads(body[:length])


def call(d, method: str, path: str, body: dict | None = None, unix: bool = False) -> tuple[int, dict, float]:
    began = time.monotonic()
    with connect(d, unix) as sock:
        sock.sendall(request_bytes(d, method, path, body, unix, close=True))
        status, reply = read_reply(sock)
    return status, reply, time.monotonic() - began


def daemon_rss_mb(d) -> float:
    """Resident memory of the supervisor and every process under it (the core, gunicorn's master
    and workers, the fleet runner), summed: pages the forked workers share count once per process."""
    root = psutil.Process(d.supervisor_pid())
    procs = [root, *root.children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


# -- slow clients ------------------------------------------------------------------------------------

SLOW_CONNECTIONS = 200
SLOW_HOLD_S = 30.0


def test_200_slow_header_clients_held_30_s_leave_health_and_claims_answering(daemon_factory):
    """200 connections (half TCP, half daemon.sock) send their headers a byte a second for 30 s;
    meanwhile GET /health and POST /claim keep answering promptly on both transports."""
    d = daemon_factory(http_header_timeout_s=120)  # hold them the whole time: the door must not need to cut them
    slow = [connect(d, unix=i % 2 == 1) for i in range(SLOW_CONNECTIONS)]
    stop = threading.Event()
    sent_bytes = [0]

    def trickle() -> None:
        for sock in slow:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        while not stop.wait(1.0):
            for sock in slow:
                sock.sendall(b"a")  # raises if the door closed it
                sent_bytes[0] += 1

    errors: list[BaseException] = []
    trickler = threading.Thread(target=lambda: _capture(trickle, errors), daemon=True)
    trickler.start()
    latencies: list[float] = []
    began = time.monotonic()
    n = 0
    try:
        while time.monotonic() - began < SLOW_HOLD_S:
            unix = n % 2 == 1
            status, body, took = call(d, "GET", "/health", unix=unix)
            assert status == 200 and body["success"] is True, body
            latencies.append(took)
            status, body, took = call(d, "POST", "/claim", {"id": f"slowtest:n{n}"}, unix=unix)
            assert status == 200 and body["port"], body
            latencies.append(took)
            n += 1
            time.sleep(0.2)
    finally:
        stop.set()
        trickler.join(10)
        for sock in slow:
            sock.close()
    assert not errors, f"a slow connection was cut: {errors[0]!r}"
    assert sent_bytes[0] >= SLOW_CONNECTIONS * (SLOW_HOLD_S - 5)  # every one was fed a byte each second
    assert n >= 20, n
    assert statistics.median(latencies) < 0.5 and max(latencies) < 3.0, (statistics.median(latencies), max(latencies))


def _capture(fn, errors: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_late_headers_late_bodies_idle_keepalive_and_the_connection_cap(daemon_factory):
    d = daemon_factory(http_workers=1, http_max_connections=8, http_header_timeout_s=1,
                       http_body_timeout_s=1, http_keepalive_s=1)
    # the connection cap: the 9th connection of the worker is refused with 503 naming the setting
    held = [connect(d, unix=False) for _ in range(8)]
    time.sleep(0.3)  # accepted by the worker (each would get its 408 after 1 s)
    with connect(d, unix=True) as extra:
        status, body = read_reply(extra)
    assert status == 503 and body["reason"] == "unavailable" and body["limit"] == "http_max_connections", body
    for sock in held:
        sock.close()
    time.sleep(0.2)
    for unix in (False, True):
        # headers that do not arrive within http_header_timeout_s: 408 JSON, then closed
        with connect(d, unix) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: local")
            began = time.monotonic()
            status, body = read_reply(sock)
            assert status == 408 and body["reason"] == "timeout" and "http_header_timeout_s" in body["error"], body
            assert sock.recv(100) == b"" and time.monotonic() - began < 4
        # a body that does not arrive within http_body_timeout_s of its headers: closed
        with connect(d, unix) as sock:
            sock.sendall(request_bytes(d, "POST", "/claim", {"id": "late:body"}, unix)[:-5])
            began = time.monotonic()
            while sock.recv(65536):
                pass
            assert time.monotonic() - began < 4
        # an idle keep-alive connection: closed after http_keepalive_s
        with connect(d, unix) as sock:
            sock.sendall(request_bytes(d, "GET", "/health", unix=unix))
            assert read_reply(sock)[0] == 200
            began = time.monotonic()
            assert sock.recv(100) == b"" and time.monotonic() - began < 4
    assert d.http("GET", "/health")[0] == 200


# -- many streams, many waiters ----------------------------------------------------------------------

SUBSCRIBERS = 1000
MESSAGES = 20
RSS_BOUND_MB = 400  # the whole daemon (supervisor, core, gunicorn master + 2 workers, fleet runner); ~225 measured


def test_1000_concurrent_event_streams_each_get_every_later_message_in_order(daemon_factory):
    d = daemon_factory(ipc_rate_limit=0)
    channel = unique("many")
    sel = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    rss_before = daemon_rss_mb(d)
    try:
        for i in range(SUBSCRIBERS):
            unix = i % 2 == 1
            sock = connect(d, unix)
            sock.sendall(request_bytes(d, "GET", f"/msg/{channel}/subscribe", unix=unix))
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
            buffers[sock] = b""

        def pump(until, timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while not until() and time.monotonic() < deadline:
                for key, _ in sel.select(0.5):
                    chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    assert chunk, "a stream ended"
                    buffers[key.fileobj] += chunk  # type: ignore[index]

        pump(lambda: all(b": subscribed to" in b for b in buffers.values()), 60)
        subscribed = sum(b": subscribed to" in b for b in buffers.values())
        assert subscribed == SUBSCRIBERS, f"{subscribed} of {SUBSCRIBERS} streams subscribed"
        assert all(b.startswith(b"HTTP/1.1 200") for b in buffers.values())
        rss_streams = daemon_rss_mb(d)
        publisher = d.client(transport="ipc")
        ids = [publisher.call("msg.publish", channel=channel, payload={"n": n})["id"] for n in range(MESSAGES)]
        publisher.close()
        pump(lambda: all(b.count(b"\nevent: message\n") >= MESSAGES for b in buffers.values()), 60)
        for sock, data in buffers.items():
            got = [int(line[4:]) for line in data.decode().split("\n") if line.startswith("id: ")]
            assert got == ids, (sock, got[:5], ids[:5])
    finally:
        for sock in buffers:
            sock.close()
        sel.close()
    print(f"\n1000 streams: daemon RSS {rss_before:.0f} MB before, {rss_streams:.0f} MB with them open")
    assert rss_streams < RSS_BOUND_MB, rss_streams


WAITERS = 500


def test_500_parked_http_lock_waits_are_served_fifo_as_the_lock_is_released(daemon_factory):
    d = daemon_factory(ipc_rate_limit=0)
    name = unique("fifo")
    ipc = d.client(transport="ipc")
    first = ipc.lock_acquire(name=name, owner="holder", ttl=120_000)
    parked_before = ipc.daemon_metrics()["counters"].get("parked", 0)
    waiters: list[socket.socket] = []
    try:
        for i in range(WAITERS):  # each parked in the core before the next is sent: the queue order is known
            unix = i % 2 == 1
            sock = connect(d, unix)
            sock.sendall(request_bytes(d, "POST", f"/locks/{name}", {"owner": f"w{i}", "wait": 120_000,
                                                                     "ttl": 120_000}, unix))
            waiters.append(sock)
            deadline = time.monotonic() + READ_S
            while ipc.daemon_metrics()["counters"].get("parked", 0) < parked_before + i + 1:
                assert time.monotonic() < deadline, f"waiter {i} did not park"
                time.sleep(0.002)
        rss = daemon_rss_mb(d)
        owner, fence = "holder", first["fence"]
        sel = selectors.DefaultSelector()
        for i, sock in enumerate(waiters):
            sel.register(sock, selectors.EVENT_READ, i)
        for expected in range(WAITERS):
            assert ipc.lock_release(name=name, owner=owner, fence=fence)["released"]
            events = sel.select(READ_S)
            assert events, f"nobody got the lock after release {expected}"
            served = events[0][0].data
            assert served == expected, f"waiter {served} got the lock before waiter {expected}"
            sock = waiters[served]
            sock.settimeout(READ_S)
            status, body = read_reply(sock)
            assert status == 200 and body["owner"] == f"w{served}", body
            sel.unregister(sock)
            owner, fence = body["owner"], body["fence"]
        sel.close()
    finally:
        for sock in waiters:
            sock.close()
        ipc.close()
    print(f"\n500 parked lock waits: daemon RSS {rss:.0f} MB")
    assert rss < RSS_BOUND_MB, rss
