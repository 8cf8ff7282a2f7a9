"""Takes with request ids, in process: a repeat returns the recorded result, records expire and are capped."""

import pytest

from pdcore.errors import OpError
from pdcore.state import Park


def out(h, *fields):
    return h.state.tuples.out(h.ctx(), fields=list(fields))["tuple"]["id"]


def take(h, pattern, **kw):
    return h.state.tuples.take(h.ctx(), pattern=pattern, **kw)


def test_repeat_with_the_same_id_returns_the_same_tuple_and_takes_nothing_more(harness):
    ids = [out(harness, "job", i) for i in range(3)]
    first = take(harness, ["job"], requestId="r-1")
    harness.store.commit()
    again = take(harness, ["job"], requestId="r-1")
    assert [t["id"] for t in first["taken"]] == [ids[0]]
    assert again["taken"] == first["taken"] and again["repeated"] is True
    assert harness.state.tuples.count(harness.ctx(), pattern=["job"])["count"] == 2
    other = take(harness, ["job"], requestId="r-2")
    assert [t["id"] for t in other["taken"]] == [ids[1]]


def test_the_record_survives_a_restart_with_the_take(harness):
    out(harness, "job", 1)
    out(harness, "job", 2)
    first = take(harness, ["job"], requestId="r-restart")
    harness.reopen()
    assert take(harness, ["job"], requestId="r-restart")["taken"] == first["taken"]
    assert harness.state.tuples.count(harness.ctx(), pattern=["job"])["count"] == 1


def test_a_reused_id_with_another_pattern_or_action_is_refused(harness):
    out(harness, "job", 1)
    take(harness, ["job"], requestId="r-x")
    with pytest.raises(OpError) as info:
        take(harness, ["other"], requestId="r-x")
    assert (info.value.code, info.value.field) == ("conflict", "requestId")
    with pytest.raises(OpError) as info:
        harness.state.salvage.claim(harness.ctx(), agentId="dead", claimedBy="me", requestId="r-x")
    assert info.value.code == "conflict"


def test_an_empty_take_is_not_recorded(harness):
    assert take(harness, ["job"], requestId="r-empty")["count"] == 0
    tid = out(harness, "job", 1)
    assert [t["id"] for t in take(harness, ["job"], requestId="r-empty")["taken"]] == [tid]


def test_a_parked_take_records_what_it_takes_when_woken(harness):
    parked = take(harness, ["job"], requestId="r-park", wait=5000)
    assert isinstance(parked, Park)
    tid = out(harness, "job", 1)
    out(harness, "job", 2)
    retried = take(harness, ["job"], requestId="r-park", wait=5000)  # what the core does on the wake
    assert [t["id"] for t in retried["taken"]] == [tid]
    assert take(harness, ["job"], requestId="r-park", wait=5000)["taken"] == retried["taken"]


def test_records_expire_on_the_timer_heap(make_harness):
    h = make_harness(take_record_ttl_ms=1000)
    out(h, "job", 1)
    out(h, "job", 2)
    take(h, ["job"], requestId="r-old")
    h.store.commit()
    h.advance(500)
    take(h, ["job"], requestId="r-new")
    assert h.advance(600) == 1  # one timer fired: it dropped r-old and re-armed for r-new
    assert set(h.state.take_records.keys) == {"r-new"}
    assert h.store.read_one("SELECT count(*) FROM take_records WHERE request_id = 'r-old'")[0] == 0
    out(h, "job", 3)
    assert take(h, ["job"], requestId="r-old")["taken"][0]["fields"] == ["job", 3]  # a new take now
    h.advance(1000)
    assert not h.state.take_records.keys


def test_records_are_capped_oldest_first(make_harness):
    h = make_harness(take_records_max=3)
    for i in range(5):
        out(h, "job", i)
        take(h, ["job"], requestId=f"r-{i}")
    h.store.commit()
    assert list(h.state.take_records.keys) == ["r-2", "r-3", "r-4"]
    assert h.store.read_one("SELECT count(*) FROM take_records")[0] == 3
    assert h.state.counts()["take_records"] == 3


def test_salvage_claim_repeated_with_its_id_answers_the_same(harness):
    s = harness.state
    begun = s.sugar.begin(harness.ctx(), purpose="work", identity="proj:api", agentId="dead-agent", files=["a.py"])
    s.agents.mark_dead(harness.ctx(), s.agents.by_id["dead-agent"], "test")
    first = s.salvage.claim(harness.ctx(), agentId="dead-agent", claimedBy="heir", requestId="c-1")
    harness.store.commit()
    again = s.salvage.claim(harness.ctx(), agentId="dead-agent", claimedBy="heir", requestId="c-1")
    assert first["entry"]["sessionId"] == begun["sessionId"]
    assert again["sessionId"] == first["sessionId"] and again["repeated"] is True
    with pytest.raises(OpError) as info:
        s.salvage.claim(harness.ctx(), agentId="dead-agent", claimedBy="heir", requestId="c-2")
    assert info.value.code == "already_claimed"
