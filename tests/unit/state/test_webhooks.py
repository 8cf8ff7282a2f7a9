import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pdcore.errors import OpError
from pdcore.state.webhooks import TargetRefused, address_refusal, host_refusal, post_webhook, sign


class FakeTransport:
    """Records every POST; answers with the statuses it is given, then 200."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, url, body, headers, timeout, allow):
        self.calls.append({"url": url, "body": body, "headers": headers})
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, BaseException):
            raise answer
        return answer, "ok"


def setup(h, *answers, **kw):
    transport = FakeTransport(*answers)
    h.state.webhooks.transport = transport
    kw.setdefault("url", "https://hooks.example.com/pd")
    hook = h.state.webhooks.register(h.ctx(), **kw)
    return hook, transport


def deliveries(h, hook_id):
    return h.state.webhooks.deliveries(h.ctx(), id=hook_id, limit=50)["deliveries"]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/x", "http://localhost/x", "http://api.localhost/x", "http://10.1.2.3/x",
    "http://192.168.1.1/x", "http://172.16.0.1/x", "http://169.254.169.254/latest/meta-data",
    "http://[::1]/x", "http://[fe80::1]/x", "http://0.0.0.0/x", "http://metadata.google.internal/x",
    "http://100.100.100.200/x", "http://[::ffff:127.0.0.1]/x",
])
def test_private_loopback_link_local_and_metadata_targets_are_refused(harness, url):
    with pytest.raises(OpError) as err:
        harness.state.webhooks.register(harness.ctx(), url=url)
    assert err.value.code == "webhook_target_refused" and err.value.field == "url"


def test_allowed_host_may_be_local(make_harness):
    h = make_harness(webhook_allow_hosts=["127.0.0.1"])
    assert h.state.webhooks.register(h.ctx(), url="http://127.0.0.1:9/hook")["id"]


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com", "http://user:pw@example.com/", "http://:80/"])
def test_bad_urls_are_refused(harness, url):
    with pytest.raises(OpError) as err:
        harness.state.webhooks.register(harness.ctx(), url=url)
    assert err.value.code == "invalid_argument"


def test_bad_event_names_are_refused(harness):
    with pytest.raises(OpError):
        harness.state.webhooks.register(harness.ctx(), url="https://example.com/", events=["Lock Acquire"])


def test_address_refusal_classifies_addresses():
    assert address_refusal("8.8.8.8") is None
    assert address_refusal("2606:4700:4700::1111") is None
    assert "loopback" in address_refusal("127.0.0.5")
    assert "private" in address_refusal("10.0.0.1")
    assert "metadata" in address_refusal("169.254.169.254")
    assert "link-local" in address_refusal("169.254.1.1")
    assert address_refusal("100.64.0.1") is not None  # shared address space
    assert host_refusal("example.com") is None


def test_event_is_delivered_signed_off_the_handler(harness):
    hook, transport = setup(harness, secret="s3cret", events=["lock.acquire"])
    assert harness.state.webhooks.on_event(harness.ctx(), "lock.acquire", {"owner": "a"}, target="db") == 1
    assert transport.calls == []  # queued, not sent inside the caller's operation
    harness.advance(0)
    (call,) = transport.calls
    body = call["body"]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert call["headers"]["X-PortDaddy-Signature"] == expected
    assert call["headers"]["X-PortDaddy-Event"] == "lock.acquire"
    sent = json.loads(body)
    assert (sent["event"], sent["target"], sent["data"]) == ("lock.acquire", "db", {"owner": "a"})
    (d,) = deliveries(harness, hook["id"])
    assert (d["status"], d["attempts"], d["responseStatus"]) == ("delivered", 1, 200)
    assert harness.state.webhooks.get(harness.ctx(), id=hook["id"])["webhook"]["successCount"] == 1


def test_no_secret_no_signature(harness):
    _, transport = setup(harness)
    harness.state.webhooks.on_event(harness.ctx(), "service.claim", {})
    harness.advance(0)
    assert "X-PortDaddy-Signature" not in transport.calls[0]["headers"]


def test_post_runs_through_offload(harness):
    _, transport = setup(harness)
    offloaded = []
    harness.state.offload = lambda fn, then: offloaded.append((fn, then))
    harness.state.webhooks.on_event(harness.ctx(), "service.claim", {})
    harness.advance(0)
    assert len(offloaded) == 1 and transport.calls == []
    fn, then = offloaded[0]
    then(fn(), None)
    assert len(transport.calls) == 1


def test_failed_delivery_is_retried_with_backoff(make_harness):
    h = make_harness(webhook_retry_base_ms=1000, webhook_max_attempts=4)
    hook, transport = setup(h, 500, 503)
    h.state.webhooks.on_event(h.ctx(), "lock.release", {})
    h.advance(0)
    (d,) = deliveries(h, hook["id"])
    assert (d["status"], d["responseStatus"], d["nextAttemptAt"]) == ("retrying", 500, h.clock.now + 1000)
    h.advance(999)
    assert len(transport.calls) == 1
    h.advance(1)
    assert len(transport.calls) == 2
    h.advance(1999)
    assert len(transport.calls) == 2  # second delay is 2000
    h.advance(1)
    (d,) = deliveries(h, hook["id"])
    assert (d["status"], d["attempts"]) == ("delivered", 3)
    assert [c["headers"]["X-PortDaddy-Delivery"] for c in transport.calls] == [d["id"]] * 3


def test_delivery_fails_after_max_attempts(make_harness):
    h = make_harness(webhook_retry_base_ms=10, webhook_max_attempts=3)
    hook, transport = setup(h, 500, OSError("connection refused"), 500, 200)
    h.state.webhooks.on_event(h.ctx(), "lock.release", {})
    for _ in range(5):
        h.advance(100)
    (d,) = deliveries(h, hook["id"])
    assert (d["status"], d["attempts"]) == ("failed", 3)
    assert len(transport.calls) == 3
    assert h.state.webhooks.get(h.ctx(), id=hook["id"])["webhook"]["failureCount"] == 1
    assert h.state.webhooks.pending == {}


def test_target_refused_after_dns_is_not_retried(harness):
    hook, transport = setup(harness, TargetRefused("resolves to 10.0.0.1"))
    harness.state.webhooks.on_event(harness.ctx(), "lock.release", {})
    harness.advance(0)
    harness.advance(600_000)
    (d,) = deliveries(harness, hook["id"])
    assert d["status"] == "refused" and "10.0.0.1" in d["error"]
    assert len(transport.calls) == 1


def test_pending_deliveries_survive_restart(make_harness):
    h = make_harness(webhook_retry_base_ms=1000)
    hook, _ = setup(h, 500)
    h.state.webhooks.on_event(h.ctx(), "lock.release", {})
    h.advance(0)
    h.reopen()
    transport = FakeTransport(200)
    h.state.webhooks.transport = transport
    h.advance(1000)
    assert len(transport.calls) == 1
    assert deliveries(h, hook["id"])[0]["status"] == "delivered"


def test_events_filter_and_wildcards(harness):
    _, transport = setup(harness, events=["lock.*"], filterPattern="db:*")
    wh = harness.state.webhooks
    assert not wh.wants("service.claim") and wh.wants("lock.acquire")
    assert wh.on_event(harness.ctx(), "service.claim", {}, target="db:main") == 0
    assert wh.on_event(harness.ctx(), "lock.acquire", {}, target="cache") == 0
    assert wh.on_event(harness.ctx(), "lock.acquire", {}, target="db:main") == 1


def test_inactive_webhook_gets_nothing(harness):
    hook, _ = setup(harness)
    harness.state.webhooks.update(harness.ctx(), id=hook["id"], active=False)
    assert harness.state.webhooks.on_event(harness.ctx(), "lock.acquire", {}) == 0


def test_publish_triggers_message_publish_webhooks(harness):
    _, transport = setup(harness, events=["message.publish"])
    harness.state.channels.publish(harness.ctx(), channel="app:events", payload="built")
    harness.advance(0)
    sent = json.loads(transport.calls[0]["body"])
    assert sent["event"] == "message.publish" and sent["data"]["message"] == "built"


def test_test_op_reports_the_endpoint_answer(harness):
    hook, transport = setup(harness, 418, secret="k")
    out = harness.state.webhooks.test(harness.ctx(), id=hook["id"])
    assert out["delivered"] is False and out["status"] == 418
    assert json.loads(transport.calls[0]["body"])["event"] == "webhook.test"
    assert transport.calls[0]["headers"]["X-PortDaddy-Signature"] == sign(transport.calls[0]["body"], "k")


def test_update_checks_the_new_url_and_can_drop_the_secret(harness):
    hook, _ = setup(harness, secret="k")
    with pytest.raises(OpError):
        harness.state.webhooks.update(harness.ctx(), id=hook["id"], url="http://10.0.0.1/")
    out = harness.state.webhooks.update(harness.ctx(), id=hook["id"], secret="", events=["agent.dead"])
    assert out["webhook"]["hasSecret"] is False and out["webhook"]["events"] == ["agent.dead"]


def test_delete_cancels_pending_and_forgets_log(make_harness):
    h = make_harness(webhook_retry_base_ms=1000)
    hook, transport = setup(h, 500)
    h.state.webhooks.on_event(h.ctx(), "lock.release", {})
    h.advance(0)
    h.state.webhooks.delete(h.ctx(), id=hook["id"])
    h.advance(5000)
    assert len(transport.calls) == 1
    with pytest.raises(OpError) as err:
        h.state.webhooks.get(h.ctx(), id=hook["id"])
    assert err.value.code == "not_found"


def test_delivery_log_is_bounded(make_harness):
    h = make_harness(webhook_delivery_log_max=20)
    hook, _ = setup(h)
    for _ in range(100):
        h.state.webhooks.on_event(h.ctx(), "lock.release", {})
        h.advance(0)
    count = h.store.read_one("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ?", (hook["id"],))[0]
    assert count <= 20 + 10


def test_webhooks_and_limit(make_harness):
    h = make_harness(webhook_max=2)
    h.state.webhooks.register(h.ctx(), url="https://a.example.com/")
    h.state.webhooks.register(h.ctx(), url="https://b.example.com/")
    with pytest.raises(OpError) as err:
        h.state.webhooks.register(h.ctx(), url="https://c.example.com/")
    assert err.value.code == "webhook_limit"
    assert h.state.webhooks.list(h.ctx())["count"] == 2


def test_registrations_are_durable(harness):
    hook, _ = setup(harness, events=["lock.acquire"], secret="k")
    harness.reopen()
    got = harness.state.webhooks.get(harness.ctx(), id=hook["id"])["webhook"]
    assert got["events"] == ["lock.acquire"] and got["hasSecret"] is True
    assert harness.state.webhooks.wants("lock.acquire")


# -- the real transport, against a local receiver --------------------------------------------

class _Receiver(BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.got.append((self.path, dict(self.headers), body))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Receiver.got = []
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_real_post_reaches_an_allowed_local_receiver(receiver):
    status, text = post_webhook(f"http://127.0.0.1:{receiver}/hook", b'{"a":1}',
                                {"Content-Type": "application/json"}, 5.0, frozenset({"127.0.0.1"}))
    assert (status, text) == (200, "ok")
    assert _Receiver.got[0][0] == "/hook" and _Receiver.got[0][2] == b'{"a":1}'


def test_real_post_does_not_follow_redirects(receiver):
    status, _ = post_webhook(f"http://127.0.0.1:{receiver}/redirect", b"{}", {}, 5.0, frozenset({"127.0.0.1"}))
    assert status == 302


def test_real_post_refuses_a_name_resolving_to_loopback(receiver):
    with pytest.raises(TargetRefused):
        post_webhook(f"http://localhost:{receiver}/hook", b"{}", {}, 5.0, frozenset())
    assert _Receiver.got == []


def test_activity_records_are_events(harness):
    _, transport = setup(harness, events=["lock.acquire"])
    harness.state.locks.acquire(harness.ctx(), name="db", owner="me")
    harness.advance(0)
    sent = json.loads(transport.calls[0]["body"])
    assert (sent["event"], sent["target"], sent["data"]["owner"]) == ("lock.acquire", "db", "me")


@pytest.mark.parametrize(("url", "dotted"), [
    ("http://127.1/x", "127.0.0.1"), ("http://2130706433/x", "127.0.0.1"), ("http://0x7f000001/x", "127.0.0.1"),
    ("http://0177.0.0.1:8080/x", "127.0.0.1"), ("http://127.1./x", "127.0.0.1"), ("http://0X7F.1/x", "127.0.0.1"),
    ("http://10.1/x", "10.0.0.1"), ("http://3232235777/x", "192.168.1.1"), ("http://2852039166/x", "169.254.169.254"),
    ("http://0/x", "0.0.0.0"),
])
def test_numeric_ipv4_forms_are_judged_as_the_address_they_are(harness, url, dotted):
    """getaddrinfo reads 127.1, 2130706433 and 0x7f000001 as 127.0.0.1: so must registration."""
    with pytest.raises(OpError) as err:
        harness.state.webhooks.register(harness.ctx(), url=url)
    assert err.value.code == "webhook_target_refused" and err.value.field == "url" and dotted in err.value.message
    hook = harness.state.webhooks.register(harness.ctx(), url="https://example.com/hook")["id"]
    with pytest.raises(OpError) as err:
        harness.state.webhooks.update(harness.ctx(), id=hook, url=url)
    assert err.value.code == "webhook_target_refused"


def test_public_numeric_ipv4_forms_pass_and_names_are_not_resolved(harness, monkeypatch):
    import socket

    def no_dns(*args, **kwargs):
        raise AssertionError("registration must not resolve DNS names")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(socket, "gethostbyname", no_dns)
    for url in ("http://134744072/hook", "http://8.8.8.8/hook", "http://8.8.2056/hook", "https://dead.beef.example/x",
                "https://0x.example.com/x", "https://1e100.net/x"):
        assert harness.state.webhooks.register(harness.ctx(), url=url)["id"]
