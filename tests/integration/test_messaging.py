"""Pub/sub, inbox and integration signals against a live daemon: one publish reaches every kind of
reader, `pd watch --exec` runs once per message and survives a restart, a subscriber that stops
reading does not grow the core's memory."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

from pdcore import protocol as P


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class SseReader(threading.Thread):
    """Reads `GET /msg/{channel}/subscribe`, collecting the data of `message` events."""

    def __init__(self, daemon, channel: str) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        self.conn.request("GET", f"/msg/{channel}/subscribe", headers={"Accept": "text/event-stream",
                                                                      "Authorization": f"Bearer {daemon.token}"})
        self.sock = self.conn.sock
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()
        self.subscribed = threading.Event()
        self.messages: list[dict] = []

    def run(self) -> None:
        event = None
        try:
            while True:
                line = self.resp.fp.readline()
                if not line:
                    return
                text = line.decode().rstrip("\n")
                if text.startswith(": subscribed"):
                    self.subscribed.set()
                elif text.startswith("event:"):
                    event = text.split(":", 1)[1].strip()
                elif text.startswith("data:") and event == "message":
                    self.messages.append(json.loads(text.split(":", 1)[1]))
                elif not text:
                    event = None
        except (OSError, ValueError, AttributeError):
            return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # unblocks the reading thread at once
        except OSError:
            pass
        self.conn.close()


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_one_publish_reaches_ipc_subscriber_sse_reader_and_long_poller(daemon):
    channel = unique("fanout")
    client = daemon.client(transport="ipc")
    subscription = client.subscribe(channel)
    sse = SseReader(daemon, channel)
    sse.start()
    sse.subscribed.wait(10)
    polled: dict = {}

    def long_poll() -> None:
        polled["reply"] = daemon.http("GET", f"/msg/{channel}/poll?after=0&timeout=10000")

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.3)  # the poll is parked in the core by now
    assert "reply" not in polled
    try:
        client.msg_publish(channel=channel, payload={"hello": "world"}, sender="tester")  # fire-and-forget
        got = subscription.next_message(timeout=10)
        poller.join(timeout=10)
        wait_until(lambda: sse.messages, what="the SSE event")
    finally:
        subscription.close()
        sse.close()
    assert got["channel"] == channel and got["message"] == {"hello": "world"} and got["sender"] == "tester"
    status, body = polled["reply"]
    assert status == 200 and body["messages"][0]["payload"] == {"hello": "world"}
    assert body["messages"][0]["id"] == got["id"] == sse.messages[0]["id"]
    assert sse.messages[0]["message"] == {"hello": "world"}


def test_pattern_subscription_gets_matching_channels_only(daemon):
    project = unique("proj")
    client = daemon.client(transport="ipc")
    subscription = client.subscribe(f"{project}:*")
    try:
        client.msg_publish(channel=f"other-{project}", payload="no", _reply=True)
        client.msg_publish(channel=f"{project}:events", payload="yes", _reply=True)
        got = subscription.next_message(timeout=10)
        assert (got["channel"], got["message"]) == (f"{project}:events", "yes")
        assert subscription.next_message(timeout=0.3) is None
    finally:
        subscription.close()


def test_history_after_and_limit_over_http(daemon):
    channel = unique("hist")
    ids = []
    for i in range(5):
        status, body = daemon.http("POST", f"/msg/{channel}", {"payload": f"m{i}", "sender": "s"})
        assert status == 200 and body["channel"] == channel
        ids.append(body["id"])
    status, body = daemon.http("GET", f"/msg/{channel}?limit=2")
    assert [m["payload"] for m in body["messages"]] == ["m3", "m4"]
    status, body = daemon.http("GET", f"/msg/{channel}?after={ids[1]}&limit=50")
    assert [m["id"] for m in body["messages"]] == ids[2:]
    status, body = daemon.http("GET", "/channels")
    assert any(c["channel"] == channel and c["count"] == 5 for c in body["channels"])
    status, body = daemon.http("DELETE", f"/msg/{channel}")
    assert status == 200 and body["deleted"] == 5
    assert daemon.http("GET", f"/msg/{channel}")[1]["messages"] == []


def test_poll_that_times_out_answers_empty(daemon):
    channel = unique("quiet")
    began = time.monotonic()
    status, body = daemon.http("GET", f"/msg/{channel}/poll?after=0&timeout=300")
    assert status == 200 and body["messages"] == [] and body["message"] is None
    assert 0.25 < time.monotonic() - began < 5


def test_pd_pub_and_channel_history(daemon):
    channel = unique("clipub")
    out = daemon.pd("pub", channel, "database-ready", "-q")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 0
    out = daemon.pd("pub", channel, '{"n": 1}', "--parse")
    assert out.returncode == 0, out.stderr
    history = json.loads(daemon.pd("channel", "history", channel, "-j").stdout)
    assert [m["payload"] for m in history["messages"]] == ["database-ready", {"n": 1}]


def _start_watch(d, channel: str, out_file: Path, *extra: str) -> subprocess.Popen:
    # One small O_APPEND write per run, so concurrent runs cannot interleave their lines.
    cmd = f'printf "%s|%s\\n" "$PD_MESSAGE" "$(cat)" >> {out_file}'
    return subprocess.Popen([sys.executable, "-m", "cli.main", "watch", channel, "--exec", cmd, *extra],
                            env=d.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _warm_up(d, channel: str, out_file: Path) -> None:
    """Publish until the watcher has run once, so we know it is subscribed."""
    client = d.client()
    deadline = time.monotonic() + 15
    while not _lines(out_file):
        assert time.monotonic() < deadline, "pd watch never ran its command"
        client.msg_publish(channel=channel, payload="warm-up", _reply=True)
        time.sleep(0.2)


def test_pd_watch_exec_runs_once_per_message(daemon, tmp_path):
    channel = unique("watch")
    out_file = tmp_path / "ran.txt"
    proc = _start_watch(daemon, channel, out_file)
    try:
        _warm_up(daemon, channel, out_file)
        time.sleep(0.3)
        before = len(_lines(out_file))
        client = daemon.client()
        for i in range(5):
            client.msg_publish(channel=channel, payload=f"job-{i}", _reply=True)
        wait_until(lambda: len(_lines(out_file)) >= before + 5, what="five runs")
        time.sleep(0.5)  # no extra runs arrive late
        runs = _lines(out_file)[before:]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert sorted(runs) == [f"job-{i}|job-{i}" for i in range(5)]  # env and stdin, once each


def test_pd_watch_once_exits_with_the_command_code(daemon):
    channel = unique("once")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "watch", channel, "--once", "--exec", "exit 7"],
                            env=daemon.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client = daemon.client()
        deadline = time.monotonic() + 15
        while proc.poll() is None:
            assert time.monotonic() < deadline, "pd watch --once did not exit"
            client.msg_publish(channel=channel, payload="go", _reply=True)
            time.sleep(0.2)
        assert proc.returncode == 7
    finally:
        proc.kill()
        proc.wait()


def test_pd_watch_survives_a_daemon_restart(fresh_daemon, tmp_path):
    channel = unique("survive")
    out_file = tmp_path / "ran.txt"
    proc = _start_watch(fresh_daemon, channel, out_file)
    try:
        _warm_up(fresh_daemon, channel, out_file)
        fresh_daemon.kill_core()
        client = fresh_daemon.client()
        deadline = time.monotonic() + 20
        while not any(line.startswith("after-restart") for line in _lines(out_file)):
            assert time.monotonic() < deadline, "pd watch did not come back after the core restarted"
            client.msg_publish(channel=channel, payload="after-restart", _reply=True)
            time.sleep(0.3)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_subscriber_that_stops_reading_does_not_grow_core_memory(fresh_daemon):
    d = fresh_daemon
    channel = unique("flood")
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(str(d.config.ipc))
    stalled.sendall(P.encode(P.SUBSCRIBE, 1, {"channels": [channel]}))  # ...and never read again
    publisher = d.client(transport="ipc")
    publisher.daemon_health()
    core = d.core_pid()
    time.sleep(0.2)
    before = _rss(core)
    payload = "x" * 2048
    total = 0
    for i in range(25_000):  # ~50 MB through a subscriber that reads nothing
        publisher.msg_publish(channel=channel, payload=payload)
        total += len(payload)
        if i % 5000 == 4999:
            publisher.daemon_health()  # let the core keep up (fire-and-forget has no reply)
    publisher.daemon_health()
    grown = _rss(core) - before
    metrics = publisher.daemon_metrics()
    stalled.close()
    assert total > 45_000_000
    assert grown < 24 * 1024 * 1024, f"core grew by {grown / 1e6:.1f} MB for a stalled subscriber"
    assert metrics["counters"].get("delivery_dropped", 0) > 0
    assert publisher.daemon_health()["status"] == "ok"


def test_inbox_over_http_with_read_state(daemon):
    agent = unique("agent")
    status, body = daemon.http("POST", f"/agents/{agent}/inbox", {"content": "review my PR", "from": "alice"})
    assert status == 200 and body["agentId"] == agent
    mid = body["messageId"]
    daemon.http("POST", f"/agents/{agent}/inbox", {"content": {"task": 2}, "type": "request"})
    status, body = daemon.http("GET", f"/agents/{agent}/inbox/stats")
    assert (body["total"], body["unread"]) == (2, 2)
    assert daemon.http("PUT", f"/agents/{agent}/inbox/{mid}/read")[0] == 200
    status, body = daemon.http("GET", f"/agents/{agent}/inbox?unread=true&limit=50")
    assert [m["content"] for m in body["messages"]] == [{"task": 2}]
    assert daemon.http("PUT", f"/agents/{agent}/inbox/read-all")[1]["marked"] == 1
    assert daemon.http("DELETE", f"/agents/{agent}/inbox")[1]["deleted"] == 2


def test_pd_inbox_send_list_read(daemon):
    agent = unique("inboxcli")
    env = {"PORT_DADDY_AGENT": agent}
    out = daemon.pd("inbox", "send", agent, "hello there", "--from", "bob", "-q")
    assert out.returncode == 0, out.stderr
    mid = out.stdout.strip()
    listing = daemon.pd("inbox", "--unread", env=env)
    assert listing.returncode == 0 and "hello there" in listing.stdout and "bob" in listing.stdout
    assert daemon.pd("inbox", "read", mid, env=env).returncode == 0
    stats = json.loads(daemon.pd("inbox", "stats", "-j", env=env).stdout)
    assert (stats["total"], stats["unread"]) == (1, 0)


def test_integration_signals_are_listed_and_published(daemon):
    project = unique("intg")
    subscription = daemon.client(transport="ipc").subscribe(f"pd:integration:{project}")
    try:
        out = daemon.pd("integration", "ready", f"{project}:api", "auth endpoints up")
        assert out.returncode == 0, out.stderr
        got = subscription.next_message(timeout=10)
    finally:
        subscription.close()
    assert got["message"]["identity"] == f"{project}:api" and got["message"]["type"] == "ready"
    status, body = daemon.http("POST", f"/integration/needs/{project}:web", {"message": "needs the auth API"})
    assert status == 200
    status, body = daemon.http("GET", f"/integration?project={project}")
    assert [(s["identity"], s["type"]) for s in body["signals"]] == [(f"{project}:web", "needs"),
                                                                     (f"{project}:api", "ready")]


def _read_frames(sock: socket.socket, decoder: P.FrameDecoder, until, timeout: float = 10.0) -> list[dict]:
    """INFORM payloads read from `sock` until `until(payloads)` holds (bounded by `timeout`)."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        assert time.monotonic() < deadline, f"timed out; read {len(got)} informs"
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        data = sock.recv(262144)
        assert data, "the core closed the subscriber"
        for type_, _conv, body in decoder.feed(data):
            if type_ == P.INFORM:
                got.append(P.unpack_payload(body))
    return got


def test_a_subscriber_that_fell_behind_is_told_what_it_missed_before_its_next_delivery(daemon_factory):
    d = daemon_factory(subscriber_queue_max=65536, ipc_rate_limit=0)
    channel = unique("behind")
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(str(d.config.ipc))
    decoder = P.FrameDecoder(1 << 30)
    slow.sendall(P.encode(P.SUBSCRIBE, 1, {"channels": [channel]}))
    slow.settimeout(10)
    assert P.unpack_payload(next(iter(decoder.feed(slow.recv(4096))))[2])["action"] == "subscribe"
    publisher = d.client(transport="ipc")
    flood = 600
    for n in range(flood):  # ~4.8 MB to a reader that reads nothing meanwhile
        publisher.msg_publish(channel=channel, payload={"n": n, "pad": "x" * 8000})
    dropped = publisher.daemon_metrics()["counters"]["delivery_dropped"]
    assert 0 < dropped < flood
    # Drain what was queued: deliveries only, in order, no notice yet (nothing was delivered since).
    queued = _read_frames(slow, decoder, lambda got: len(got) == flood - dropped)
    assert {p["action"] for p in queued} == {"msg.delivery"}
    ns = [p["message"]["n"] for p in queued]
    assert ns == sorted(ns) and ns[0] == 0
    # The next delivery that fits is preceded by the notice.
    publisher.msg_publish(channel=channel, payload={"n": "after"}, _reply=True)
    notice, after = _read_frames(slow, decoder, lambda got: len(got) >= 2)
    assert notice == {"action": "msg.dropped", "count": dropped, "channels": [channel], "channelsComplete": True}
    assert after["action"] == "msg.delivery" and after["message"] == {"n": "after"}
    # Told once: the delivery after that comes alone.
    publisher.msg_publish(channel=channel, payload={"n": "again"}, _reply=True)
    (again,) = _read_frames(slow, decoder, lambda got: len(got) >= 1)
    assert again["action"] == "msg.delivery" and again["message"] == {"n": "again"}
    slow.close()


def test_the_sdk_subscription_counts_what_it_missed(daemon_factory):
    d = daemon_factory(subscriber_queue_max=65536, ipc_rate_limit=0)
    channel = unique("sdk-behind")
    sub = d.client(transport="ipc").subscribe(channel, reconnect=False)
    publisher = d.client(transport="ipc")
    flood = 600
    for n in range(flood):
        publisher.msg_publish(channel=channel, payload={"n": n, "pad": "x" * 8000})
    dropped = publisher.daemon_metrics()["counters"]["delivery_dropped"]
    assert dropped > 0
    got = []
    while len(got) < flood - dropped:
        msg = sub.next_message(timeout=10)
        assert msg is not None, f"got {len(got)} of {flood - dropped} queued deliveries"
        got.append(msg)
    assert sub.dropped == 0  # not told yet: nothing was delivered since the drops
    publisher.msg_publish(channel=channel, payload={"n": "after"}, _reply=True)
    assert sub.next_message(timeout=10)["message"] == {"n": "after"}
    assert sub.dropped == dropped
    sub.close()


def test_pd_inbox_after_pd_begin_needs_no_agent(daemon):
    """The terminal's agent (pd begin) is whose inbox `pd inbox` reads and who `send` is from."""
    env = {**daemon.env, "PD": f"{sys.executable} -m cli.main"}
    env.pop("PORT_DADDY_AGENT", None)
    script = ("$PD begin 'inbox check' -q >/dev/null && "
              "me=$($PD whoami -j | sed -n 's/.*\"agentId\": \"\\(agent-[^\"]*\\)\".*/\\1/p') && "
              "$PD inbox send \"$me\" 'note to self' -q >/dev/null && $PD inbox --unread && $PD inbox stats -j")
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60,
                         start_new_session=True, cwd=str(Path(__file__).resolve().parents[2]))
    assert out.returncode == 0, out.stderr
    assert "note to self" in out.stdout
    stats = json.loads(out.stdout[out.stdout.index("{"):])
    assert stats["unread"] == 1 and stats["agentId"].startswith("agent-")


def test_integration_list_prints_local_times_and_json_keeps_epoch_ms(daemon):
    import re

    project = unique("intgtime")
    assert daemon.pd("integration", "ready", f"{project}:api", "up").returncode == 0
    text = daemon.pd("integration", "list", "--project", project)
    assert text.returncode == 0 and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text.stdout), text.stdout
    assert not re.search(r"\b\d{13}\b", text.stdout), text.stdout
    raw = json.loads(daemon.pd("integration", "list", "--project", project, "--json").stdout)
    assert isinstance(raw["signals"][0]["createdAt"], int) and raw["signals"][0]["createdAt"] > 10**12
