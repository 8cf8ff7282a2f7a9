"""Resuming an event stream (`GET /msg/{channel}/subscribe` with `Last-Event-ID` or `?after=`)
against a live daemon: the missed messages are replayed from the history ring, then the stream
goes live with no duplicate and no hole; a trimmed history is announced with `event: gap`; bad
ids are 400s; patterns do not replay. Also: HEAD answers on GET routes, without a body."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid

import pytest

from pdcore.config import Config
from pdcore.testing import local_client, token_home
from workers import sse
from workers.app import create_app

READ_TIMEOUT_S = 10.0  # every socket read of these tests is bounded by this


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def publish(daemon, channel: str, n: int) -> int:
    status, body = daemon.http("POST", f"/msg/{channel}", {"payload": {"n": n}, "sender": "resume-test"})
    assert status == 200, body
    return body["id"]


class EventStream:
    """One SSE connection, read one event at a time (`retry` and `:` comments are skipped)."""

    def __init__(self, daemon, path: str, headers: dict | None = None, rcvbuf: int | None = None) -> None:
        port = daemon.port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT_S)
        if rcvbuf is not None:  # a small receive window, set before connecting, makes a slow reader
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(READ_TIMEOUT_S)
            sock.connect(("127.0.0.1", port))
            self.conn.sock = sock
        self.conn.request("GET", path, headers={"Accept": "text/event-stream",
                                                "Authorization": f"Bearer {daemon.token}", **(headers or {})})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()
        assert self.resp.getheader("Content-Type") == "text/event-stream"

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self.conn.close()

    def next_event(self, timeout: float = READ_TIMEOUT_S) -> tuple[str, int | None, dict]:
        """(event name, id or None, data) of the next event with data; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        while time.monotonic() < deadline:
            line = self.resp.fp.readline()  # bounded by the socket timeout
            assert line, "the stream ended"
            text = line.decode().rstrip("\n")
            if not text:
                if "data" in fields:
                    event_id = int(fields["id"]) if "id" in fields else None
                    return fields.get("event", "message"), event_id, json.loads(fields["data"])
                fields = {}
            elif not text.startswith(":"):
                name, _, value = text.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
        raise AssertionError(f"no event within {timeout} s")

    def events(self, n: int) -> list[tuple[str, int | None, dict]]:
        return [self.next_event() for _ in range(n)]


def kinds_and_ids(events: list[tuple[str, int | None, dict]]) -> list[tuple[str, int | None]]:
    return [(kind, event_id) for kind, event_id, _ in events]


def test_last_event_id_replays_the_missed_messages_then_goes_live(daemon):
    channel = unique("resume")
    ids = [publish(daemon, channel, n) for n in range(6)]
    with EventStream(daemon, f"/msg/{channel}/subscribe", {"Last-Event-ID": str(ids[1])}) as stream:
        replay = stream.events(4)
        assert kinds_and_ids(replay) == [("message", i) for i in ids[2:]]
        assert [data["message"] for _, _, data in replay] == [{"n": n} for n in range(2, 6)]
        live_id = publish(daemon, channel, 99)
        kind, event_id, live = stream.next_event()  # the very next event: no duplicate, nothing extra
    assert (kind, event_id, live["message"]) == ("message", live_id, {"n": 99})
    assert replay[0][2].keys() == live.keys()  # replayed events have the live shape
    assert replay[0][2]["channel"] == channel and replay[0][2]["sender"] == "resume-test"


def test_after_query_parameter_and_the_header_winning_over_it(daemon):
    channel = unique("resume-q")
    ids = [publish(daemon, channel, n) for n in range(5)]
    with EventStream(daemon, f"/msg/{channel}/subscribe?after={ids[0]}") as stream:
        assert kinds_and_ids(stream.events(4)) == [("message", i) for i in ids[1:]]
        live_id = publish(daemon, channel, 5)
        assert kinds_and_ids([stream.next_event()]) == [("message", live_id)]
    ids.append(live_id)
    # A reconnecting EventSource repeats the original URL with a newer Last-Event-ID: the header wins.
    with EventStream(daemon, f"/msg/{channel}/subscribe?after={ids[0]}",
                     {"Last-Event-ID": str(ids[3])}) as stream:
        assert kinds_and_ids(stream.events(2)) == [("message", ids[4]), ("message", ids[5])]
        live_id = publish(daemon, channel, 6)
        assert kinds_and_ids([stream.next_event()]) == [("message", live_id)]
    # Up to date: nothing replayed, no gap, straight to live.
    with EventStream(daemon, f"/msg/{channel}/subscribe", {"Last-Event-ID": str(live_id)}) as stream:
        newer = publish(daemon, channel, 7)
        assert kinds_and_ids([stream.next_event()]) == [("message", newer)]


def test_messages_published_while_resuming_arrive_once_and_in_order(daemon):
    """A steady stream of fire-and-forget publishes (about one per ms) runs while the stream
    resumes, so messages land between its SUBSCRIBE and its history read: each must come once."""
    channel = unique("resume-race")
    total = 900  # below channel_ring_size (1000): history keeps them all, so there is no gap
    client = daemon.client(transport="ipc")
    failures: list[BaseException] = []

    def publisher() -> None:
        try:
            for n in range(total):
                client.fire("msg.publish", channel=channel, payload={"n": n})
                time.sleep(0.001)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    kept: list[dict] = []
    while len(kept) < 100 and time.monotonic() < deadline:
        kept = daemon.http("GET", f"/msg/{channel}?limit=1000")[1].get("messages") or []
        time.sleep(0.01)
    assert len(kept) >= 100, failures
    resume_from = kept[49]["id"]
    got: list[int] = []
    with EventStream(daemon, f"/msg/{channel}/subscribe", {"Last-Event-ID": str(resume_from)}) as stream:
        last_n = -1
        while time.monotonic() < deadline and last_n != total - 1:  # until the last message published
            kind, event_id, data = stream.next_event()
            assert kind == "message", kind
            got.append(event_id)  # type: ignore[arg-type]
            last_n = data["message"]["n"]
    thread.join(timeout=10)
    assert not failures, failures
    _, history = daemon.http("GET", f"/msg/{channel}?after={resume_from}&limit=1000")
    published = [m["id"] for m in history["messages"]]
    assert len(published) == total - 50
    assert got == published  # every message after the resume point, once, in order


def test_a_trimmed_history_is_announced_with_a_gap_event(daemon_factory):
    d = daemon_factory(channel_ring_size=3, ipc_rate_limit=0)
    channel = unique("resume-gap")
    ids = [publish(d, channel, n) for n in range(6)]  # the ring keeps ids[3:]
    with EventStream(d, f"/msg/{channel}/subscribe", {"Last-Event-ID": str(ids[0])}) as stream:
        kind, event_id, data = stream.next_event()
        assert (kind, event_id) == ("gap", None)  # no id: the client's last event id is unchanged
        assert data == {"channel": channel, "after": ids[0], "firstId": ids[3]}
        assert kinds_and_ids(stream.events(3)) == [("message", i) for i in ids[3:]]
        live_id = publish(d, channel, 6)
        assert kinds_and_ids([stream.next_event()]) == [("message", live_id)]
    ids.append(live_id)
    # The message last seen is still kept: no gap.
    with EventStream(d, f"/msg/{channel}/subscribe", {"Last-Event-ID": str(ids[5])}) as stream:
        assert kinds_and_ids([stream.next_event()]) == [("message", ids[6])]
    # Nothing kept at all (cleared): a gap naming no first id, then live.
    assert d.http("DELETE", f"/msg/{channel}")[0] == 200
    with EventStream(d, f"/msg/{channel}/subscribe", {"Last-Event-ID": str(ids[6])}) as stream:
        assert stream.next_event() == ("gap", None, {"channel": channel, "after": ids[6], "firstId": None})
        live_id = publish(d, channel, 7)
        assert kinds_and_ids([stream.next_event()]) == [("message", live_id)]


def test_a_stream_that_fell_behind_gets_gap_events_then_resumes_without_loss(daemon_factory):
    d = daemon_factory(subscriber_queue_max=65536, ipc_rate_limit=0, channel_ring_size=5000)
    channel = unique("sse-behind")
    with EventStream(d, f"/msg/{channel}/subscribe", rcvbuf=4096) as stream:
        first = publish(d, channel, -1)
        assert kinds_and_ids([stream.next_event()]) == [("message", first)]  # subscribed and live
        publisher = d.client(transport="ipc")
        flood = 600
        for n in range(flood):  # ~4.8 MB while this reader reads nothing
            publisher.msg_publish(channel=channel, payload={"n": n, "pad": "x" * 8000})
        dropped = publisher.daemon_metrics()["counters"]["delivery_dropped"]
        assert dropped > 0
        seen: list[int] = [first]
        gaps: list[dict] = []
        marker = None
        while seen[-1] != marker:
            if marker is None and len(seen) == flood + 1 - dropped:  # drained: now a delivery fits
                marker = publish(d, channel, flood)  # and brings the notice of the last drops
            kind, event_id, data = stream.next_event()
            if kind == "gap":  # one per run of drops, naming the last message sent before it
                assert set(data) == {"channel", "after", "dropped"} and data["channel"] == channel
                assert data["after"] == seen[-1] and data["dropped"] > 0
                gaps.append(data)
            else:
                assert kind == "message" and event_id > seen[-1]
                seen.append(event_id)
    assert gaps and sum(g["dropped"] for g in gaps) == dropped
    assert len(seen) + dropped == flood + 2
    # Resuming from the first gap's id replays everything after it: what was seen and what was not.
    after = gaps[0]["after"]
    with EventStream(d, f"/msg/{channel}/subscribe", {"Last-Event-ID": str(after)}) as resumed:
        replayed = kinds_and_ids(resumed.events(len([i for i in seen if i > after]) + dropped))
    ids = [event_id for _, event_id in replayed]
    assert {kind for kind, _ in replayed} == {"message"} and ids == sorted(ids) and ids[-1] == marker
    assert {i for i in seen if i > after} <= set(ids)


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "12abc", "9" * 25, "²"])
def test_a_malformed_last_event_id_is_a_400_naming_the_header(daemon, value):
    status, body = daemon.http("GET", f"/msg/{unique('resume-bad')}/subscribe", headers={"Last-Event-ID": value},
                               timeout=READ_TIMEOUT_S)
    assert status == 400, body
    assert body["success"] is False and body["code"] == "invalid_argument" and body["field"] == "Last-Event-ID"
    assert "Last-Event-ID" in body["error"]


def test_a_malformed_after_and_after_on_a_pattern_are_400s(daemon):
    status, body = daemon.http("GET", f"/msg/{unique('resume-bad')}/subscribe?after=x1", timeout=READ_TIMEOUT_S)
    assert (status, body["code"], body["field"]) == (400, "invalid_argument", "after"), body
    status, body = daemon.http("GET", f"/msg/{unique('resume-bad')}:*/subscribe?after=3", timeout=READ_TIMEOUT_S)
    assert (status, body["code"], body["field"]) == (400, "invalid_argument", "after"), body
    assert "pattern" in body["error"]


def test_a_pattern_stream_ignores_last_event_id_and_starts_live(daemon):
    prefix = unique("resume-pat")
    old = publish(daemon, f"{prefix}:a", 0)
    publish(daemon, f"{prefix}:b", 1)
    with EventStream(daemon, f"/msg/{prefix}:*/subscribe", {"Last-Event-ID": str(old)}) as stream:
        live_id = publish(daemon, f"{prefix}:a", 2)
        assert kinds_and_ids([stream.next_event()]) == [("message", live_id)]  # nothing replayed


# -- the join, in process: a fake core publishes at the exact moments that matter -------------

class JoinCore:
    """A core with one channel ring; hooks publish right after SUBSCRIBE or after a history read."""

    def __init__(self, ring_size: int, before: int) -> None:
        self.ring_size = ring_size
        self.ring: list[int] = []
        self.last_id = 0
        self.live: list[dict] | None = None  # the stream's deliveries, once subscribed
        self.on_subscribe: list[int] = []  # how many to publish right after SUBSCRIBE
        self.after_history: list[int] = []  # how many to publish after each history read
        self.history_calls: list[dict] = []
        for _ in range(before):
            self.publish()

    def publish(self) -> None:
        self.last_id += 1
        self.ring = (self.ring + [self.last_id])[-self.ring_size:]
        if self.live is not None:
            self.live.append({"action": "msg.delivery", "id": self.last_id, "channel": "c", "message": self.last_id,
                              "sender": None, "ts": 0})

    async def call(self, action: str, args: dict, *, idempotent: bool = False, timeout_s: float | None = None) -> dict:
        assert action == "msg.history" and idempotent
        self.history_calls.append(args)
        found = [i for i in self.ring if i > args["after"]][:args["limit"]]
        reply = {"channel": "c", "count": len(found), "firstId": self.ring[0] if self.ring else None,
                 "lastId": self.ring[-1] if self.ring else None,
                 "messages": [{"id": i, "channel": "c", "payload": i, "contentType": "json", "sender": None,
                               "createdAt": 0, "expiresAt": None} for i in found]}
        for _ in range(self.after_history.pop(0) if self.after_history else 0):
            self.publish()
        return reply

    def stream(self) -> JoinCore:
        return self

    async def subscribe(self, channels: list[str], timeout_s: float = 30.0) -> dict:
        self.live = []
        for _ in range(self.on_subscribe.pop(0) if self.on_subscribe else 0):
            self.publish()
        return {"action": "subscribe", "channels": channels}

    async def next_delivery(self, timeout_s: float) -> dict | None:
        if self.live:
            return self.live.pop(0)
        raise ConnectionError("the core closed the connection")  # ends the stream

    def close(self) -> None:
        pass


def stream_events(core: JoinCore, last_event_id: int) -> list[tuple[str, int | None]]:
    home, headers = token_home()
    client = local_client(create_app(Config(home=home), core=core), headers=headers)  # type: ignore[arg-type]
    resp = client.simulate_get("/msg/c/subscribe", headers={"Last-Event-ID": str(last_event_id)})
    assert resp.status_code == 200, resp.text
    out = []
    for block in resp.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            out.append((fields.get("event", "message"), int(fields["id"]) if "id" in fields else None))
    return out


def test_join_messages_published_between_subscribe_and_history_come_once():
    core = JoinCore(ring_size=100, before=5)
    core.on_subscribe = [2]  # 6, 7: in the history read AND delivered live
    core.after_history = [1]  # 8: live only
    assert stream_events(core, 2) == [("message", i) for i in (3, 4, 5, 6, 7, 8)]


def test_join_pages_and_a_trim_between_pages_is_a_gap_never_a_silent_hole(monkeypatch):
    monkeypatch.setattr(sse, "REPLAY_PAGE", 2)
    core = JoinCore(ring_size=4, before=4)  # ring 1..4
    core.after_history = [5]  # after the first page: 5..9 published, the ring is now 6..9
    events = stream_events(core, 1)
    assert [c["after"] for c in core.history_calls] == [1, 3]
    # 4 and 5 left the ring before the second page: announced; 5, delivered live out of
    # order, is not sent (the client was told about the hole and its ids stay increasing).
    assert events == [("message", 2), ("message", 3), ("gap", None), ("message", 6), ("message", 7),
                      ("message", 8), ("message", 9)]


def raw_request(daemon, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, every byte after the headers) of one request on a closed-after connection."""
    port = daemon.port
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
                     f"Authorization: Bearer {daemon.token}\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("path", ["/health", "/services"])
def test_head_answers_like_get_without_a_body(daemon, path):
    status, headers, body = raw_request(daemon, "HEAD", path)
    get_status, get_headers, get_body = raw_request(daemon, "GET", path)
    assert (status, body) == (200, b"")
    assert get_status == 200 and get_body
    assert headers["content-type"] == get_headers["content-type"]
    assert int(headers["content-length"]) > 0  # the GET's length (its body may differ by a tick)


def test_head_on_the_event_stream_opens_no_stream(daemon):
    status, headers, body = raw_request(daemon, "HEAD", f"/msg/{unique('resume-head')}/subscribe")
    assert (status, headers["content-type"], body) == (200, "text/event-stream", b"")
