import pytest

from pdcore.errors import OpError
from pdcore.state import Park
from pdcore.state.channels import channel_key, channel_matches


def pub(h, channel="ch", payload="hello", **kw):
    return h.state.channels.publish(h.ctx(agent_id=kw.pop("agent_id", None)), channel=channel, payload=payload, **kw)


def history(h, channel="ch", **kw):
    kw.setdefault("limit", 50)
    return h.state.channels.history(h.ctx(), channel=channel, **kw)


def test_publish_appends_delivers_and_wakes(harness):
    out = pub(harness, payload={"k": 1}, sender="me")
    assert out["channel"] == "ch" and out["id"] >= 1
    assert harness.delivered == [("ch", {"id": out["id"], "channel": "ch", "message": {"k": 1}, "sender": "me",
                                        "ts": harness.clock.now})]
    assert channel_key("ch") in harness.state.pending_wakes
    msg = history(harness)["messages"][0]
    assert (msg["payload"], msg["sender"], msg["createdAt"]) == ({"k": 1}, "me", harness.clock.now)


def test_root_publish_goes_through_the_ring(harness):
    harness.state.publish("pd:agents", {"event": "dead"}, "reaper")
    assert history(harness, "pd:agents")["messages"][0]["payload"] == {"event": "dead"}
    assert harness.delivered[0][0] == "pd:agents"


def test_message_ids_increase_across_channels(harness):
    ids = [pub(harness, channel=f"c{i % 3}")["id"] for i in range(9)]
    assert ids == sorted(set(ids))


def test_message_ids_keep_increasing_after_restart(harness):
    last = pub(harness)["id"]
    harness.reopen()
    assert pub(harness)["id"] > last


def test_sender_defaults_to_agent_id(harness):
    pub(harness, agent_id="agent-1")
    assert history(harness)["messages"][0]["sender"] == "agent-1"


def test_3_7_aliases_of_payload_are_accepted(harness):
    pub(harness, payload=None, message="via message")
    pub(harness, payload=None, content="via content")
    assert [m["payload"] for m in history(harness)["messages"]] == ["via message", "via content"]


def test_empty_payload_is_refused(harness):
    for bad in (None, "", "   "):
        with pytest.raises(OpError) as err:
            pub(harness, payload=bad)
        assert err.value.code == "missing_field"


def test_publishing_to_a_pattern_is_refused(harness):
    with pytest.raises(OpError):
        pub(harness, channel="app:*")


def test_oversized_message_is_refused_with_413(make_harness):
    h = make_harness(message_max_bytes=100)
    with pytest.raises(OpError) as err:
        pub(h, payload="x" * 101)
    assert err.value.status == 413


def test_history_limit_and_after(harness):
    ids = [pub(harness, payload=f"m{i}")["id"] for i in range(10)]
    assert [m["payload"] for m in history(harness, limit=3)["messages"]] == ["m7", "m8", "m9"]
    after = history(harness, after=ids[4], limit=2)["messages"]
    assert [m["id"] for m in after] == ids[5:7]
    assert history(harness)["lastId"] == ids[-1]


def test_ring_is_bounded_by_count(make_harness):
    h = make_harness(channel_ring_size=5)
    for i in range(12):
        pub(h, payload=f"m{i}")
    msgs = history(h)["messages"]
    assert [m["payload"] for m in msgs] == [f"m{i}" for i in range(7, 12)]
    assert h.state.channels.live == 5


def test_ring_is_bounded_by_age(make_harness):
    h = make_harness(channel_ring_age_ms=10_000)
    pub(h, payload="old")
    h.advance(6000)
    pub(h, payload="new")
    h.advance(5000)
    assert [m["payload"] for m in history(h)["messages"]] == ["new"]


def test_quiet_channels_are_swept_by_the_timer(make_harness):
    h = make_harness(channel_ring_age_ms=2000)
    pub(h, channel="quiet")
    h.advance(5000)
    assert h.state.channels.rings == {}
    assert h.state.channels.total_bytes == 0


def test_all_rings_together_are_bounded_by_bytes(make_harness):
    h = make_harness(channel_ring_total_bytes=1000)
    for i in range(50):
        pub(h, channel=f"c{i}", payload="x" * 100)
    ch = h.state.channels
    assert ch.total_bytes <= 1000
    assert len(ch.rings) == 10
    assert "c49" in ch.rings and "c0" not in ch.rings


def test_memory_stays_bounded_under_a_flood(make_harness):
    h = make_harness(channel_ring_size=10)
    for i in range(20_000):
        pub(h, payload=i)
    ch = h.state.channels
    assert ch.live == 10
    assert len(ch.order) <= 2 * ch.live + 1024 + 1


def test_per_message_expiry_hides_it_from_history(harness):
    pub(harness, payload="short", expires=1000)
    pub(harness, payload="long")
    harness.advance(1500)
    assert [m["payload"] for m in history(harness)["messages"]] == ["long"]


def test_history_of_a_pattern_merges_channels_by_id(harness):
    pub(harness, channel="app:a", payload=1)
    pub(harness, channel="other", payload=2)
    pub(harness, channel="app:b", payload=3)
    assert [m["payload"] for m in history(harness, "app:*")["messages"]] == [1, 3]


def test_poll_returns_waiting_messages_at_once(harness):
    first = pub(harness, payload="a")["id"]
    pub(harness, payload="b")
    out = harness.state.channels.poll(harness.ctx(), channel="ch", after=first)
    assert [m["payload"] for m in out["messages"]] == ["b"]
    assert out["message"]["payload"] == "b" and out["lastId"] == out["messages"][-1]["id"]


def test_poll_parks_on_the_channel_and_times_out_empty(harness):
    last = pub(harness)["id"]
    parked = harness.state.channels.poll(harness.ctx(), channel="ch", after=last, timeout=5000)
    assert isinstance(parked, Park)
    assert parked.keys == (channel_key("ch"),)
    assert parked.deadline == harness.clock.now + 5000
    assert parked.on_timeout == {"channel": "ch", "messages": [], "message": None, "count": 0, "lastId": last}
    new = pub(harness, payload="next")["id"]
    ctx = harness.ctx()
    ctx.retry = True
    out = harness.state.channels.poll(ctx, channel="ch", after=last, timeout=5000)
    assert [m["id"] for m in out["messages"]] == [new]


def test_poll_timeout_is_capped(make_harness):
    h = make_harness(channel_poll_max_ms=1000)
    parked = h.state.channels.poll(h.ctx(), channel="empty", after=0, timeout=60_000)
    assert parked.deadline == h.clock.now + 1000


def test_poll_with_zero_timeout_answers_empty_now(harness):
    out = harness.state.channels.poll(harness.ctx(), channel="empty", after=0, timeout=0)
    assert out["messages"] == []


def test_clear_forgets_history_but_ids_continue(harness):
    last = pub(harness)["id"]
    pub(harness)
    assert harness.state.channels.clear(harness.ctx(), channel="ch")["deleted"] == 2
    assert history(harness)["messages"] == []
    assert pub(harness)["id"] > last
    assert harness.state.channels.total_bytes == len("hello")


def test_channels_lists_most_recent_first(harness):
    pub(harness, channel="a")
    harness.advance(5)
    pub(harness, channel="b")
    pub(harness, channel="b")
    out = harness.state.channels.list_channels(harness.ctx())
    assert [(c["channel"], c["count"]) for c in out["channels"]] == [("b", 2), ("a", 1)]
    assert out["channels"][0]["lastMessage"] == harness.clock.now


def test_channel_patterns_match_like_subscriptions():
    assert channel_matches("app:*", "app:events")
    assert channel_matches("app:*", "app:a:b")
    assert not channel_matches("app:*", "other:events")
    assert channel_matches("exact", "exact") and not channel_matches("exact", "exact2")
