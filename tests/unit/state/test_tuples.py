"""The tuple space (SPEC.md §8) in process: out / rd / in / poll / scan / count, waits, TTL, restarts."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdcore.errors import OpError
from pdcore.state import Park
from pdcore.state.tuplepattern import Pattern, canon, compile_pattern
from pdcore.state.tuples import out_keys, wait_keys


def out(h, fields, **kw):
    return h.state.tuples.out(h.ctx(kw.pop("agent", None)), fields=fields, **kw)["tuple"]


def test_out_records_writer_time_and_harbor(harness):
    t = harness.state.tuples.out(harness.ctx("agent-a"), tuple=["task", "build"], harbor="app:fleet", ttl=5000)["tuple"]
    assert t["fields"] == ["task", "build"]
    assert (t["harbor"], t["writtenBy"], t["createdAt"]) == ("app:fleet", "agent-a", harness.clock.now)
    assert t["expiresAt"] == harness.clock.now + 5000
    t2 = harness.state.tuples.out(harness.ctx(), fields=["x"], writtenBy="me", ttlMs=10)["tuple"]
    assert (t2["writtenBy"], t2["expiresAt"]) == ("me", harness.clock.now + 10)


def test_fields_or_tuple_is_required(harness):
    with pytest.raises(OpError) as info:
        harness.state.tuples.out(harness.ctx())
    assert (info.value.code, info.value.field) == ("missing_field", "fields")


def test_rd_serves_oldest_first_and_keeps_tuples(harness):
    ids = [out(harness, ["task", i])["id"] for i in range(5)]
    got = harness.state.tuples.rd(harness.ctx(), pattern=["task"], limit=3)
    assert [t["id"] for t in got["tuples"]] == ids[:3] and got["count"] == 3
    assert harness.state.tuples.count(harness.ctx())["count"] == 5


def test_in_takes_the_oldest_match_once(harness):
    a = out(harness, ["job", "a", 0.9])
    out(harness, ["job", "b", 0.1])
    c = out(harness, ["job", "c", 0.8])
    tuples = harness.state.tuples
    first = tuples.take(harness.ctx(), pattern=["job", "*", ">0.5"])
    second = tuples.take(harness.ctx(), pattern=["job", "*", ">0.5"])
    third = tuples.take(harness.ctx(), pattern=["job", "*", ">0.5"])
    assert [t["id"] for t in first["taken"]] == [a["id"]]
    assert [t["id"] for t in second["taken"]] == [c["id"]]
    assert third == {"taken": [], "count": 0}
    assert tuples.count(harness.ctx())["count"] == 1


def test_taken_tuple_is_never_served_twice_even_after_restart(harness):
    written = [out(harness, ["w", i])["id"] for i in range(10)]
    taken = [t["id"] for t in harness.state.tuples.take(harness.ctx(), pattern=["w"], limit=4)["taken"]]
    assert taken == written[:4]
    harness.reopen()
    rest = harness.state.tuples.take(harness.ctx(), pattern=["w"], limit=100)["taken"]
    assert [t["id"] for t in rest] == written[4:]


def test_ids_are_never_reused_after_the_newest_were_taken(harness):
    last = out(harness, ["z"])["id"]
    harness.state.tuples.take(harness.ctx(), pattern=["z"])
    harness.reopen()
    assert out(harness, ["z"])["id"] == last + 1


def test_short_pattern_matches_longer_tuples_oldest_first_across_arities(harness):
    ids = [out(harness, f)["id"] for f in (["task", 1, 2], ["task"], ["task", 1], ["other", 1], ["task", 1, 2, 3])]
    got = harness.state.tuples.rd(harness.ctx(), pattern=["task"])["tuples"]
    assert [t["id"] for t in got] == [ids[0], ids[1], ids[2], ids[4]]
    got = harness.state.tuples.rd(harness.ctx(), pattern=["task", 1])["tuples"]
    assert [t["id"] for t in got] == [ids[0], ids[2], ids[4]]
    got = harness.state.tuples.rd(harness.ctx(), pattern=["*", 1])["tuples"]
    assert [t["id"] for t in got] == [ids[0], ids[2], ids[3], ids[4]]
    assert harness.state.tuples.rd(harness.ctx(), pattern=["task", 1, 2, 3, 4])["tuples"] == []


def test_harbors_scope_the_space(harness):
    out(harness, ["task", 1], harbor="a:fleet")
    out(harness, ["task", 2], harbor="b:fleet")
    out(harness, ["task", 3])
    rd = lambda **kw: [t["fields"][1] for t in harness.state.tuples.rd(harness.ctx(), pattern=["task"], **kw)["tuples"]]  # noqa: E731
    assert rd(harbor="a:fleet") == [1]
    assert rd(harbor="b:fleet") == [2]
    assert rd() == [3]
    count = harness.state.tuples.count
    assert count(harness.ctx(), harbor="*")["count"] == 3
    assert count(harness.ctx(), harbor="*", pattern=["task", ">1"])["count"] == 2
    scan = harness.state.tuples.scan(harness.ctx(), harbor="*")
    assert [t["fields"][1] for t in scan["tuples"]] == [1, 2, 3] and scan["total"] == 3
    with pytest.raises(OpError):
        harness.state.tuples.out(harness.ctx(), fields=["x"], harbor="*")


def test_ttl_expires_on_the_timer_and_survives_restart_until_then(harness):
    out(harness, ["tmp"], ttlMs=1000)
    out(harness, ["keep"])
    harness.advance(500)
    harness.reopen()
    assert harness.state.tuples.count(harness.ctx(), pattern=["tmp"])["count"] == 1
    harness.advance(501)
    assert harness.state.tuples.count(harness.ctx(), pattern=["tmp"])["count"] == 0
    assert harness.state.tuples.count(harness.ctx())["count"] == 1
    harness.reopen()
    assert harness.store.read_one("SELECT COUNT(*) FROM tuples")[0] == 1


def test_expired_tuple_is_not_served_before_its_timer_runs(harness):
    out(harness, ["tmp"], ttlMs=100)
    harness.clock.advance(200)  # time passes, timers not yet run
    assert harness.state.tuples.take(harness.ctx(), pattern=["tmp"])["count"] == 0


def test_in_with_wait_parks_and_a_new_tuple_wakes_it(harness):
    tuples = harness.state.tuples
    parked = tuples.take(harness.ctx(), pattern=["job", "*"], wait=5000, harbor="h")
    assert isinstance(parked, Park)
    assert parked.deadline == harness.clock.now + 5000
    assert parked.on_timeout == {"taken": [], "count": 0}
    assert parked.keys == (("tuple", "h", "at", 0, "job"),)
    harness.state.pending_wakes.clear()
    out(harness, ["job", 1], harbor="other")  # other harbor: not this waiter's key
    out(harness, ["job", 2], harbor="h")
    assert ("tuple", "h", "at", 0, "job") in harness.state.pending_wakes
    ctx = harness.ctx()
    ctx.retry = True
    got = tuples.take(ctx, pattern=["job", "*"], wait=5000, harbor="h")
    assert [t["fields"] for t in got["taken"]] == [["job", 2]]
    again = tuples.take(ctx, pattern=["job", "*"], wait=5000, harbor="h")
    assert isinstance(again, Park)  # nothing left: keeps waiting


def test_wildcard_head_waiters_wait_on_the_harbor_key(harness):
    parked = harness.state.tuples.rd(harness.ctx(), pattern=["*", ">3"], wait=100)
    assert parked.keys == (("tuple", None, "any"),) and parked.on_timeout == {"tuples": [], "count": 0}
    harness.state.pending_wakes.clear()
    out(harness, ["anything", 4])
    assert ("tuple", None, "any") in harness.state.pending_wakes


def test_wait_is_capped_by_config(make_harness):
    h = make_harness(tuple_wait_max_ms=1000)
    parked = h.state.tuples.take(h.ctx(), pattern=["x"], wait=60_000)
    assert parked.deadline == h.clock.now + 1000


def test_poll_walks_the_space_by_id(harness):
    ids = [out(harness, ["ev", i])["id"] for i in range(3)]
    out(harness, ["noise"])
    poll = harness.state.tuples.poll
    first = poll(harness.ctx(), pattern=["ev"])
    assert first["tuple"]["id"] == ids[0] and first["lastId"] == ids[0]
    nxt = poll(harness.ctx(), pattern=["ev"], after=first["lastId"], limit=5)
    assert [t["id"] for t in nxt["tuples"]] == ids[1:] and nxt["lastId"] == ids[2]
    done = poll(harness.ctx(), pattern=["ev"], after=nxt["lastId"])
    assert done["tuple"] is None and done["lastId"] == ids[2] + 1  # the cursor skips the non-matching tail


def test_new_tuples_are_published_on_the_harbor_channel(harness):
    harness.delivered.clear()
    out(harness, ["task", 1], harbor="app:fleet")
    out(harness, ["task", 2])
    channels = [ch for ch, _ in harness.delivered]
    assert channels == ["tuple:app:fleet", "tuple"]
    message = harness.delivered[0][1]["message"]
    assert message["event"] == "tuple.out" and message["tuple"]["fields"] == ["task", 1]


def test_take_with_concrete_head_does_not_scan_other_heads_or_harbors(harness, monkeypatch):
    tuples = harness.state.tuples
    for i in range(2000):
        out(harness, [f"other{i % 50}", i])
        out(harness, ["task", i], harbor="elsewhere")
    out(harness, ["task", "mine"])
    calls = []
    real = Pattern.match
    monkeypatch.setattr(Pattern, "match", lambda self, f: calls.append(1) or real(self, f))
    got = tuples.take(harness.ctx(), pattern=["task", "*"])
    assert got["taken"][0]["fields"] == ["task", "mine"]
    assert len(calls) == 1


def test_malformed_pattern_is_refused_before_anything_changes(harness):
    out(harness, ["a"])
    with pytest.raises(OpError) as info:
        harness.state.tuples.take(harness.ctx(), pattern='["a", ">x"]')
    assert info.value.code == "invalid_pattern" and "at position 1" in info.value.message
    assert harness.state.tuples.count(harness.ctx())["count"] == 1


def test_gated_harbor_refuses_agent_without_capability_and_records_it(harness):
    st = harness.state
    st.harbors.create(harness.ctx(), name="secure:fleet", capabilities=["tuple:rd", "tuple:out"])
    st.harbors.enter(harness.ctx(), name="secure:fleet", agentId="reader", capabilities=["tuple:rd"])
    out(harness, ["job", 1], harbor="secure:fleet")  # anonymous: not checked
    with pytest.raises(OpError) as info:
        st.tuples.out(harness.ctx("reader"), fields=["job", 2], harbor="secure:fleet")
    assert info.value.code == "capability_denied" and info.value.status == 403
    with pytest.raises(OpError):
        st.tuples.take(harness.ctx("stranger"), pattern=["job"], harbor="secure:fleet")
    assert st.tuples.rd(harness.ctx("reader"), pattern=["job"], harbor="secure:fleet")["count"] == 1
    harness.advance(0)
    found = st.arbiter.violations(harness.ctx(), rule="CAP_ESCALATION")["violations"]
    assert {v["agentId"] for v in found} == {"reader", "stranger"}


def test_open_harbor_checks_nothing(harness):
    st = harness.state
    st.harbors.create(harness.ctx(), name="open:fleet")
    assert st.tuples.out(harness.ctx("anyone"), fields=["x"], harbor="open:fleet")["tuple"]["id"]


def test_waiters_are_woken_only_by_tuples_holding_their_exact_value(harness):
    tuples = harness.state.tuples
    parked = tuples.rd(harness.ctx(), pattern=["*", "x7", ">1"], wait=5000, harbor="h")
    assert parked.keys == (("tuple", "h", "at", 1, "x7"),)  # the last exact-valued element
    harness.state.pending_wakes.clear()
    out(harness, ["task", "x8", 2], harbor="h")
    assert ("tuple", "h", "at", 1, "x7") not in harness.state.pending_wakes
    out(harness, ["task", "x7", 2], harbor="h")
    assert ("tuple", "h", "at", 1, "x7") in harness.state.pending_wakes


tuple_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from([1.0, 0.5]) | st.sampled_from(["a", "b", "a:b"]),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from("ab"), inner, max_size=2),
    max_leaves=4)
pattern_elements = tuple_values | st.sampled_from(["*", ">0", "<=1", "a:*", "*"])


@settings(max_examples=500, deadline=None)
@given(st.lists(pattern_elements, max_size=4), st.lists(tuple_values, min_size=1, max_size=5))
def test_an_out_wakes_every_waiter_whose_pattern_its_tuple_matches(raw, fields):
    pattern = compile_pattern(raw)
    if pattern.match(fields):
        assert set(wait_keys("h", pattern)) & set(out_keys("h", fields, canon(fields[0])))
