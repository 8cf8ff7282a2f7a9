"""Webhooks against a live daemon: a local receiver (explicitly allowed in the test config) gets
signed deliveries, a 500 is retried, and the default config refuses SSRF targets."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Receiver:
    """A local HTTP endpoint recording every POST; answers with queued statuses, then 200."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    # header names are case-insensitive; keep them lower-cased
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append({"path": self.path, "headers": headers, "body": body})
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"got {len(self.requests)} of {count} deliveries"
            time.sleep(0.02)
        return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def allowing_daemon():
    from tests.conftest import Daemon

    d = Daemon(ipc_rate_limit=0, webhook_allow_hosts="127.0.0.1", webhook_retry_base_ms=200).start()
    yield d
    d.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register(d, **body) -> dict:
    status, reply = d.http("POST", "/webhooks", body)
    assert status == 200, reply
    return reply


def verify(request: dict, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(request["headers"].get("x-portdaddy-signature", ""), expected)


def test_published_event_is_delivered_with_a_valid_signature(allowing_daemon, receiver):
    d = allowing_daemon
    channel = unique("hooked")
    hook = register(d, url=receiver.url(), events=["message.publish"], secret="s3cret", filterPattern=f"{channel}*")
    d.http("POST", f"/msg/{channel}", {"payload": "deployed", "sender": "ci"})
    (req,) = receiver.wait_for(1)
    assert verify(req, "s3cret")
    assert not verify(req, "wrong")
    body = json.loads(req["body"])
    assert body["event"] == "message.publish" and body["data"]["message"] == "deployed"
    assert req["headers"]["x-portdaddy-event"] == "message.publish"
    deadline = time.monotonic() + 5
    while True:
        status, got = d.http("GET", f"/webhooks/{hook['id']}/deliveries")
        if got["deliveries"] and got["deliveries"][0]["status"] == "delivered" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got["deliveries"][0]["status"] == "delivered" and got["deliveries"][0]["responseStatus"] == 200


def test_delivery_is_retried_after_a_500(allowing_daemon, receiver):
    d = allowing_daemon
    channel = unique("retry")
    hook = register(d, url=receiver.url(), events=["message.publish"], filterPattern=channel)
    receiver.statuses = [500]
    d.http("POST", f"/msg/{channel}", {"payload": "again"})
    first, second = receiver.wait_for(2)
    assert first["body"] == second["body"]
    assert first["headers"]["x-portdaddy-delivery"] == second["headers"]["x-portdaddy-delivery"]
    assert (first["headers"]["x-portdaddy-attempt"], second["headers"]["x-portdaddy-attempt"]) == ("1", "2")
    deadline = time.monotonic() + 5
    while True:
        got = d.http("GET", f"/webhooks/{hook['id']}/deliveries")[1]["deliveries"][0]
        if got["status"] == "delivered" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (got["status"], got["attempts"]) == ("delivered", 2)


def test_webhook_test_reports_the_endpoint_answer(allowing_daemon, receiver):
    d = allowing_daemon
    hook = register(d, url=receiver.url("/t"), secret="k", events=["daemon.stop"])  # only the test delivery
    receiver.statuses = [418]
    status, out = d.http("POST", f"/webhooks/{hook['id']}/test")
    assert status == 200 and out["delivered"] is False and out["status"] == 418
    (req,) = receiver.wait_for(1)
    assert json.loads(req["body"])["event"] == "webhook.test" and verify(req, "k")
    status, out = d.http("POST", f"/webhooks/{hook['id']}/test")
    assert out["delivered"] is True and out["status"] == 200


def test_lock_events_reach_webhooks(allowing_daemon, receiver):
    """Needs the core to pass activity records to `webhooks.on_event` (wired by the lead)."""
    d = allowing_daemon
    name = unique("hooklock")
    register(d, url=receiver.url(), events=["lock.acquire"], filterPattern=name)
    d.client().lock_acquire(name=name, owner="me", ttl=5000)
    (req,) = receiver.wait_for(1)
    body = json.loads(req["body"])
    assert body["event"] == "lock.acquire" and body["target"] == name


def test_webhook_crud_and_events(allowing_daemon, receiver):
    d = allowing_daemon
    hook = register(d, url=receiver.url(), events=["lock.*"])
    status, got = d.http("GET", f"/webhooks/{hook['id']}")
    assert status == 200 and got["webhook"]["events"] == ["lock.*"] and got["webhook"]["hasSecret"] is False
    status, got = d.http("PUT", f"/webhooks/{hook['id']}", {"active": False, "secret": "new"})
    assert got["webhook"]["active"] is False and got["webhook"]["hasSecret"] is True
    status, got = d.http("GET", "/webhooks/events")
    assert "lock.acquire" in got["events"]
    assert d.http("DELETE", f"/webhooks/{hook['id']}")[1]["deleted"] is True
    status, got = d.http("GET", f"/webhooks/{hook['id']}")
    assert status == 404 and got["code"] == "not_found"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/x", "http://localhost:9/x", "http://10.0.0.5/x", "http://192.168.0.10/x",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/x", "http://metadata.google.internal/x",
    # numeric IPv4 forms the resolver reads as 127.0.0.1 without DNS: judged as that address
    "http://127.1:9/x", "http://2130706433:9/x", "http://0x7f000001:9/x",
])
def test_default_config_refuses_ssrf_targets(daemon, url):
    status, body = daemon.http("POST", "/webhooks", {"url": url})
    assert status == 400 and body["code"] == "webhook_target_refused" and body["field"] == "url"


def _names_resolving_locally() -> list[str]:
    """Host names that pass the no-DNS check but resolve to a non-public address."""
    names = []  # (127.1, inet_aton shorthand for 127.0.0.1, is refused at registration now)
    host = socket.gethostname()
    try:
        if socket.getaddrinfo(host, 80)[0][4][0].startswith(("127.", "10.", "172.", "192.168.")):
            names.append(host)
    except OSError:
        pass
    return names


def test_default_config_refuses_a_name_that_resolves_to_loopback(daemon, receiver):
    names = _names_resolving_locally()
    if not names:
        pytest.skip("this machine's host name does not resolve to a local address")
    for host in names:
        hook = register(daemon, url=f"http://{host}:{receiver.port}/hook", events=["daemon.stop"])
        status, out = daemon.http("POST", f"/webhooks/{hook['id']}/test")
        assert status == 200 and out["delivered"] is False
        assert "resolves to" in out["error"], out
        deliveries = daemon.http("GET", f"/webhooks/{hook['id']}/deliveries")[1]["deliveries"]
        assert deliveries[0]["status"] == "refused"
    assert receiver.requests == []


def test_pd_webhook_commands(allowing_daemon, receiver):
    d = allowing_daemon
    out = d.pd("webhook", "add", receiver.url(), "--event", "lock.release", "--secret", "k", "-q")
    assert out.returncode == 0, out.stderr
    hook_id = out.stdout.strip()
    assert hook_id in d.pd("webhooks", "list").stdout
    test = d.pd("webhook", "test", hook_id)
    assert test.returncode == 0 and "delivered" in test.stdout
    assert d.pd("webhook", "rm", hook_id).returncode == 0
