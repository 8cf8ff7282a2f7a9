"""The HTTP side against a real daemon: 3.7 shapes, error bodies, the gate's rules, the Unix
socket, event streams, metrics, and a worker or core killed with kill -9 while HTTP keeps
answering."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import threading
import time
import uuid

import psutil
import pytest

from pdcore.ops import CATALOGUE


def uid(prefix: str = "h") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over daemon.sock."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def http_master(daemon) -> psutil.Process:
    """The gunicorn master: the workers.server process whose parent is not one."""
    procs = daemon.children("workers.server")
    masters = [p for p in procs if "workers.server" not in " ".join(p.parent().cmdline())]
    assert len(masters) == 1, procs
    return masters[0]


def test_claim_and_services_keep_the_37_shapes(daemon):
    ident = f"{uid()}:api:main"
    status, body = daemon.http("POST", "/claim", {"id": ident})
    assert status == 200
    assert body["success"] is True and body["id"] == ident and body["existing"] is False
    assert isinstance(body["port"], int) and isinstance(body["message"], str)
    status, again = daemon.http("POST", "/claim", {"id": ident})
    assert (again["port"], again["existing"]) == (body["port"], True)
    status, listing = daemon.http("GET", f"/services?pattern={ident.split(':')[0]}:*&status=&port=")
    assert status == 200 and listing["success"] is True
    assert listing["count"] == 1 and [s["id"] for s in listing["services"]] == [ident]
    status, released = daemon.http("DELETE", "/release", {"id": ident})
    assert status == 200 and released["released"] == 1 and released["releasedPorts"] == [body["port"]]


def test_failures_have_one_json_shape_and_store_nothing(daemon):
    project = uid()
    cases = [
        ("POST", "/claim", {"id": f"{project} bad"}, 400, "invalid_identity", "id"),
        ("POST", "/claim", {}, 400, "missing_field", "id"),
        ("POST", "/claim", "{not json", 400, "invalid_json", "body"),
        ("POST", "/claim", "[1]", 400, "invalid_json", "body"),
        ("GET", f"/services/{project}:nope", None, 404, "not_found", None),
        ("GET", "/services?port=abc", None, 400, "invalid_argument", "port"),
        ("GET", "/no/such/route", None, 404, "not_found", None),
        ("PATCH", "/claim", None, 405, "method_not_allowed", None),
    ]
    for method, path, body, want_status, code, field in cases:
        status, reply = daemon.http(method, path, body)
        assert status == want_status, (method, path, reply)
        assert reply["success"] is False and reply["reason"] == code, reply
        assert isinstance(reply["error"], str) and reply["error"]
        if field:
            assert reply["field"] == field, reply
    _, listing = daemon.http("GET", f"/services?pattern={project}*")
    assert listing["count"] == 0


def test_health_version_status_and_openapi(daemon):
    status, health = daemon.http("GET", "/health")
    assert status == 200 and health["success"] is True and health["status"] == "ok"
    assert health["version"] and isinstance(health["uptime"], int)
    assert daemon.http("GET", "/version")[1]["version"] == health["version"]
    status, spec = daemon.http("GET", "/openapi.json")
    assert status == 200 and "post" in spec["paths"]["/claim"]
    routes = {(r.method.lower(), r.path) for op in CATALOGUE.values() for r in op.routes}
    assert {(m, p) for p, item in spec["paths"].items() for m in item} >= routes


def test_prometheus_metrics(daemon):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        conn.request("GET", "/metrics?format=prometheus", headers={"Authorization": f"Bearer {daemon.token}"})
        resp = conn.getresponse()
        text = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    assert "# TYPE pd_uptime_ms gauge" in text and "_total " in text
    status, body = daemon.http("GET", "/metrics")
    assert status == 200 and isinstance(body["counters"], dict)


def test_foreign_host_cross_origin_write_and_big_body_are_refused(daemon):
    status, body = daemon.http("GET", "/health", headers={"Host": "attacker.example:9876"})
    assert (status, body["code"]) == (403, "bad_host")
    ident = f"{uid()}:api"
    status, body = daemon.http("POST", "/claim", {"id": ident}, headers={"Origin": "http://attacker.example"})
    assert (status, body["code"]) == (403, "bad_origin")
    status, body = daemon.http("POST", "/claim", {"id": ident, "cmd": "x" * (daemon.config.http_max_body + 10)})
    assert (status, body["code"]) == (413, "too_large")
    assert daemon.http("GET", f"/services/{ident}")[0] == 404  # none of them claimed
    assert daemon.http("GET", "/health", headers={"Host": "localhost"})[0] == 200
    assert daemon.http("POST", "/claim", {"id": ident}, headers={"Origin": "http://localhost:3000"})[0] == 200


def test_http_over_the_unix_socket_is_0600_and_not_host_checked(daemon):
    path = str(daemon.config.sock)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", "/health", headers={"Host": "anything.example"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200 and body["status"] == "ok"


@pytest.mark.skipif("msg.publish" not in CATALOGUE, reason="pub/sub ops not in the catalogue yet")
def test_sse_stream_receives_a_published_message_on_a_channel_with_colon_and_slash(daemon):
    channel = f"{uid()}:build/ci"
    encoded = channel.replace("/", "%2F")
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        conn.request("GET", f"/msg/{encoded}/subscribe", headers={"Authorization": f"Bearer {daemon.token}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
        assert resp.readline().startswith(b"retry:")

        def publish() -> None:
            time.sleep(0.2)
            daemon.http("POST", f"/msg/{encoded}", {"payload": {"n": 1}, "sender": "tester"})

        threading.Thread(target=publish).start()
        lines: list[bytes] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(line.startswith(b"data:") for line in lines):
            lines.append(resp.readline())
    finally:
        conn.close()
    data = json.loads(next(line for line in lines if line.startswith(b"data:"))[5:])
    assert data["channel"] == channel and data["message"] == {"n": 1} and data["sender"] == "tester"
    assert b"event: message\n" in lines


def test_a_worker_killed_with_kill_9_is_replaced_and_http_keeps_answering(fresh_daemon):
    master = http_master(fresh_daemon)
    deadline = time.monotonic() + 10
    while len(master.children()) < fresh_daemon.config.http_workers and time.monotonic() < deadline:
        time.sleep(0.02)  # the daemon answers as soon as the first worker is up
    workers = master.children()
    assert len(workers) == fresh_daemon.config.http_workers
    victim = workers[0].pid
    os.kill(victim, signal.SIGKILL)
    failures = 0
    deadline = time.monotonic() + 10
    replaced = False
    while time.monotonic() < deadline:
        status, _ = fresh_daemon.http("GET", "/health", timeout=5)
        failures += status != 200
        pids = {p.pid for p in master.children()}
        if victim not in pids and len(pids) == len(workers):
            replaced = True
            break
        time.sleep(0.02)
    assert replaced, "the gunicorn master did not replace the killed worker"
    assert failures == 0
    ident = f"{uid()}:api"
    for _ in range(20):  # both workers, old and new, serve
        assert fresh_daemon.http("POST", "/claim", {"id": ident})[0] == 200


def test_http_answers_again_right_after_the_core_is_killed(fresh_daemon):
    ident = f"{uid()}:api"
    status, first = fresh_daemon.http("POST", "/claim", {"id": ident})
    assert status == 200
    for _ in range(10):  # warm every worker thread's core connection
        fresh_daemon.http("GET", "/health")
    fresh_daemon.kill_core()
    for _ in range(10):
        status, body = fresh_daemon.http("GET", f"/services/{ident}")
        assert status == 200, body
        assert body["service"]["port"] == first["port"]


def test_the_http_master_killed_with_kill_9_comes_back_and_nothing_acknowledged_is_lost(fresh_daemon):
    """kill -9 of gunicorn's master mid-load: its workers go too, the supervisor starts a new
    server, and every claim answered 200 before the kill is still held, on the same port."""
    d = fresh_daemon
    old_master = http_master(d)
    old = [old_master, *old_master.children()]
    acknowledged: dict[str, int] = {}
    for n in range(50):
        ident = f"{uid()}:ack{n}"
        status, body = d.http("POST", "/claim", {"id": ident})
        assert status == 200, body
        acknowledged[ident] = body["port"]
    os.kill(old_master.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(old, timeout=15)  # its workers notice their parent is gone
    assert not alive, [p.pid for p in alive]
    deadline = time.monotonic() + 20
    while True:
        try:
            if d.http("GET", "/health", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "HTTP did not come back after its master was killed"
        time.sleep(0.05)
    assert http_master(d).pid != old_master.pid
    for ident, port in acknowledged.items():
        status, body = d.http("GET", f"/services/{ident}")
        assert status == 200 and body["service"]["port"] == port, body
