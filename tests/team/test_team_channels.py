"""Channels shared by two daemons through a real nats-server: a message published on A reaches
subscribers on B (IPC SUBSCRIBE, a pattern subscription, SSE, a long-poll) in order; history,
poll `after` and SSE Last-Event-ID resume use ids that mean the same on both hosts; NATS
stopped: channel calls fail fast, back: they work again."""

from __future__ import annotations

import threading
import time

from tests.integration.test_messaging import SseReader, wait_until
from tests.integration.test_sse_resume import EventStream
from tests.team.conftest import stop_nats_under, team_settings, wait_team_ready

MESSAGES = 200


def test_messages_published_on_a_reach_subscribers_on_b_in_order(nats_server, daemon_factory):
    settings = team_settings([nats_server.url], "chan")
    a, b = daemon_factory(**settings), daemon_factory(**settings)
    wait_team_ready(a), wait_team_ready(b)
    exact = b.client(transport="ipc").subscribe("build:main")
    pattern = b.client(transport="ipc").subscribe("build:*")
    sse = SseReader(b, "build:main")
    sse.start()
    sse.subscribed.wait(10)
    polled: dict = {}
    poller = threading.Thread(target=lambda: polled.setdefault("reply", b.http(
        "GET", "/msg/build:main/poll?after=0&timeout=10000")))
    poller.start()
    time.sleep(0.3)
    ca, cb = a.client(), b.client()
    started = time.monotonic()
    ids = [ca.call("msg.publish", channel="build:main", payload={"n": n}, sender="A")["id"] for n in range(MESSAGES)]
    ca.call("msg.publish", channel="build:other", payload="elsewhere")
    try:
        got = [exact.next_message(timeout=10) for _ in range(MESSAGES)]
        got_pattern = [pattern.next_message(timeout=10) for _ in range(MESSAGES + 1)]
        wait_until(lambda: len(sse.messages) >= MESSAGES, what="the SSE events on B")
        took = time.monotonic() - started
        poller.join(10)
    finally:
        exact.close()
        pattern.close()
        sse.close()
    assert ids == sorted(ids) and len(set(ids)) == MESSAGES
    assert [m["message"]["n"] for m in got] == list(range(MESSAGES))
    assert [m["id"] for m in got] == ids
    assert [m["id"] for m in sse.messages[:MESSAGES]] == ids and sse.messages[0]["sender"] == "A"
    assert [m["channel"] for m in got_pattern] == ["build:main"] * MESSAGES + ["build:other"]
    status, body = polled["reply"]
    assert status == 200 and body["messages"][0]["id"] == ids[0]
    history = cb.call("msg.history", channel="build:main", limit=1000)
    assert [m["id"] for m in history["messages"]] == ids
    assert history["firstId"] == ids[0] and history["lastId"] == ids[-1]
    after = cb.call("msg.poll", channel="build:main", after=ids[149], timeout=0)
    assert [m["payload"]["n"] for m in after["messages"]] == list(range(150, MESSAGES))
    print(f"\n{MESSAGES} messages published on A, received in order on B by IPC (exact and pattern) and SSE "
          f"in {took:.2f} s")


def test_sse_on_b_resumes_after_an_id_from_a(nats_server, daemon_factory):
    settings = team_settings([nats_server.url], "chanres")
    a, b = daemon_factory(**settings), daemon_factory(**settings)
    wait_team_ready(a), wait_team_ready(b)
    ca = a.client()
    ids = [ca.call("msg.publish", channel="feed", payload={"n": n})["id"] for n in range(5)]
    wait_until(lambda: b.client().call("msg.history", channel="feed")["count"] == 5, what="B's mirror")
    with EventStream(b, "/msg/feed/subscribe", headers={"Last-Event-ID": str(ids[1])}) as stream:
        replay = [stream.next_event() for _ in range(3)]
        assert [(kind, event_id) for kind, event_id, _ in replay] == [("message", i) for i in ids[2:]]
        live = ca.call("msg.publish", channel="feed", payload={"n": 5})["id"]
        kind, event_id, data = stream.next_event()
        assert (kind, event_id, data["message"]) == ("message", live, {"n": 5})
    cleared = ca.call("msg.clear", channel="feed")
    assert cleared["deleted"] == 6
    wait_until(lambda: b.client().call("msg.history", channel="feed")["count"] == 0, what="the clear on B")


def test_events_of_other_primitives_reach_the_team(nats_server, daemon_factory):
    settings = team_settings([nats_server.url], "chanev")
    a, b = daemon_factory(**settings), daemon_factory(**settings)
    wait_team_ready(a), wait_team_ready(b)
    events = b.client(transport="ipc").subscribe("tuple:*")
    try:
        out = a.client().call("tuple.out", fields=["evt", 1], harbor="h")
        got = events.next_message(timeout=10)
    finally:
        events.close()
    assert got["channel"] == "tuple:h" and got["message"]["tuple"]["id"] == out["tuple"]["id"]


def test_nats_stopped_channel_calls_fail_fast_and_work_again_when_back(nats_server, daemon_factory):
    d = daemon_factory(**team_settings([nats_server.url], "chandown"))
    wait_team_ready(d)
    c = d.client(timeout=30)
    kept = c.call("msg.publish", channel="kept", payload="before")["id"]
    stop_nats_under(
        d, nats_server, waiting={"action": "msg.poll", "channel": "quiet", "after": 0, "timeout": 20_000},
        failing=[{"action": "msg.publish", "channel": "kept", "payload": "x"},
                 {"action": "msg.history", "channel": "kept"},
                 {"action": "msg.poll", "channel": "kept", "after": 0, "timeout": 0}],
        http=("POST", "/msg/kept", {"payload": "http"}), local_id="chandown:api")
    nats_server.start()
    wait_team_ready(d)
    assert [m["id"] for m in c.call("msg.history", channel="kept")["messages"]] == [kept]  # kept by JetStream
    assert c.call("msg.publish", channel="kept", payload="after")["id"] > kept
