"""The arbiter (SPEC.md §12): each of the six invariants provoked, recorded with who/what/when;
strict mode throws the offender overboard until it registers again."""

import os

import pytest

from pdcore.errors import OpError
from pdcore.ops.catalogue import CATALOGUE
from pdcore.ops.schema import Arg, Op


def violations(h, **kw):
    return h.state.arbiter.violations(h.ctx(), **kw)["violations"]


def register(h, agent_id, pid=None):
    return h.state.agents.register(h.ctx(agent_id), id=agent_id, pid=pid)


# -- 1. pid squatting -----------------------------------------------------------------------
def test_pid_squatting_is_recorded(harness):
    register(harness, "owner", pid=os.getpid())
    register(harness, "squatter")
    harness.state.arbiter.check_claim_pid(harness.ctx("squatter"), os.getpid(), identity="app:api")
    harness.state.arbiter.check_claim_pid(harness.ctx("owner"), os.getpid(), identity="app:api")  # its own pid
    harness.state.arbiter.check_claim_pid(harness.ctx(), os.getpid(), identity="app:api")  # anonymous: not judged
    found = violations(harness, rule="PID_SQUATTING")
    assert len(found) == 1
    v = found[0]
    assert (v["agentId"], v["target"], v["severity"], v["action"]) == ("squatter", "app:api", "critical", "logged")
    assert v["metadata"] == {"pid": os.getpid(), "owner": "owner"} and v["timestamp"] == harness.clock.now
    assert harness.state.agents.get_agent("squatter").dead_at is None  # observe-only mode


# -- 2. capability escalation ---------------------------------------------------------------
def test_capability_escalation_on_entry_and_on_action(harness):
    st = harness.state
    st.harbors.create(harness.ctx(), name="g", capabilities=["tuple:rd"])
    with pytest.raises(OpError):
        st.harbors.enter(harness.ctx(), name="g", agentId="a", capabilities=["tuple:in"])
    st.harbors.enter(harness.ctx(), name="g", agentId="a", capabilities=["tuple:rd"])
    with pytest.raises(OpError) as info:
        st.arbiter.check_capability(harness.ctx("a"), "g", "a", "tuple:in")
    assert info.value.code == "capability_denied"
    st.arbiter.check_capability(harness.ctx("a"), "g", "a", "tuple:rd")  # granted: nothing happens
    found = violations(harness, rule="CAP_ESCALATION")
    assert [v["agentId"] for v in found] == ["a", "a"]
    assert all(v["target"] == "g" and v["action"] == "refused" for v in found)


def test_violation_survives_the_rollback_of_the_refused_operation(harness):
    """A refused op's savepoint is rolled back; the record is written outside it."""
    st = harness.state
    st.harbors.create(harness.ctx(), name="g", capabilities=["x"])
    harness.store.commit()
    harness.store.begin_op()
    st.tuples.out(harness.ctx(), fields=["written", "before the refusal"])
    with pytest.raises(OpError):
        st.harbors.enter(harness.ctx(), name="g", agentId="a", capabilities=["y"])
    harness.store.abort_op()
    harness.advance(0)
    harness.reopen()
    assert len(violations(harness, rule="CAP_ESCALATION")) == 1


# -- 3. note monotonicity -------------------------------------------------------------------
def _notes(h, n, agent="writer"):
    sid = h.state.sessions.start(h.ctx(agent), purpose="notes", agentId=agent)["sessionId"]
    for i in range(n):
        h.state.notes.add(h.ctx(agent), id=sid, content=f"note {i}")
    h.store.commit()
    return sid


def test_removed_notes_break_monotonicity(harness):
    _notes(harness, 3)
    arbiter = harness.state.arbiter
    assert arbiter.sweep(harness.ctx()) == 0
    top = harness.store.read_one("SELECT MAX(id) FROM notes")[0]
    harness.store.db.execute("DROP TRIGGER notes_no_delete")  # what only someone with the db file can do
    harness.store.db.execute("DELETE FROM notes WHERE id = ?", (top,))
    assert arbiter.sweep(harness.ctx()) >= 1
    assert arbiter.sweep(harness.ctx()) == 0  # recorded once, not on every sweep
    found = violations(harness, rule="NOTE_MONOTONICITY")
    assert any("removed" in v["details"] for v in found)


def test_a_note_removed_from_the_middle_breaks_the_chain(harness):
    _notes(harness, 3)
    first = harness.store.read_one("SELECT MIN(id) FROM notes")[0]
    harness.store.db.execute("DROP TRIGGER notes_no_delete")
    harness.store.db.execute("DELETE FROM notes WHERE id = ?", (first + 1,))
    harness.state.arbiter.sweep(harness.ctx())
    assert any(v["metadata"].get("noteId") == first + 2 for v in violations(harness, rule="NOTE_MONOTONICITY"))


def test_broken_hash_chain_and_shrinking_session_are_recorded(harness):
    arbiter = harness.state.arbiter
    arbiter.check_note_chain(harness.ctx(), "s1", True)
    arbiter.check_note_chain(harness.ctx(), "s1", False, note_id=7, detail="prev_hash mismatch")
    arbiter.check_note_chain(harness.ctx(), "s1", False, note_id=7)  # the same break again: once
    arbiter.check_note_count(harness.ctx(), "s2", count=3, previous=4)
    found = violations(harness, rule="NOTE_MONOTONICITY")
    assert [v["target"] for v in found] == ["s2", "s1"]


# -- 4. note integrity ----------------------------------------------------------------------
def test_tampered_ciphertext_is_recorded(harness):
    _notes(harness, 2)
    harness.store.db.execute("DROP TRIGGER notes_no_update")
    note_id, ct = harness.store.read_one("SELECT id, ciphertext FROM notes ORDER BY id LIMIT 1")
    harness.store.db.execute("UPDATE notes SET ciphertext = ? WHERE id = ?", (bytes([ct[0] ^ 1]) + ct[1:], note_id))
    harness.state.arbiter.sweep(harness.ctx())
    found = violations(harness, rule="NOTE_INTEGRITY")
    assert len(found) == 1 and found[0]["metadata"]["noteId"] == note_id and found[0]["severity"] == "critical"


def test_note_integrity_reports_are_recorded_once(harness):
    arbiter = harness.state.arbiter
    arbiter.check_note_integrity(harness.ctx(), 5, "s1", True)
    arbiter.check_note_integrity(harness.ctx(), 6, "s1", False, detail="InvalidTag")
    arbiter.check_note_integrity(harness.ctx(), 6, "s1", False, detail="InvalidTag")
    assert [v["metadata"]["noteId"] for v in violations(harness, rule="NOTE_INTEGRITY")] == [6]


def test_audit_hook_lets_the_notes_code_report(harness, monkeypatch):
    seen = []

    def audit(ctx, arbiter):
        seen.append(ctx.now)
        arbiter.check_note_integrity(ctx, 9, "s9", False)

    monkeypatch.setattr(harness.state.activity, "arbiter_audit", audit, raising=False)
    harness.state.arbiter.sweep(harness.ctx())
    assert seen and len(violations(harness, rule="NOTE_INTEGRITY")) == 1


# -- 5. lock owner validity -----------------------------------------------------------------
def test_release_by_a_non_owner_is_recorded(harness):
    arbiter = harness.state.arbiter
    arbiter.check_lock_release(harness.ctx("b"), "db", "b", "a")
    arbiter.check_lock_release(harness.ctx("a"), "db", "a", "a")
    arbiter.check_lock_release(harness.ctx("c"), "db", "c", "a", force=True)
    found = violations(harness, rule="LOCK_OWNER_VALID")
    assert len(found) == 1 and (found[0]["agentId"], found[0]["target"]) == ("b", "db")


def test_lock_held_by_a_dead_owner_past_the_reaper_is_recorded(harness):
    st = harness.state
    register(harness, "holder")
    st.locks.acquire(harness.ctx("holder"), name="deploy", owner="holder", ttl=3_600_000)
    agent = st.agents.get_agent("holder")
    agent.dead_at = harness.clock.now  # dead, yet (as if the reaper failed) its lock stays
    harness.clock.advance(3 * harness.config.reaper_interval_ms)
    assert st.arbiter.sweep(harness.ctx()) == 1
    found = violations(harness, rule="LOCK_OWNER_VALID")
    assert found[0]["target"] == "deploy" and found[0]["agentId"] == "holder"


def test_locks_freed_by_the_reaper_are_fine(harness):
    st = harness.state
    register(harness, "holder")
    st.locks.acquire(harness.ctx("holder"), name="deploy", owner="holder", ttl=3_600_000)
    st.agents.mark_dead(harness.ctx(), st.agents.get_agent("holder"), "test")
    harness.clock.advance(3 * harness.config.reaper_interval_ms)
    assert st.arbiter.sweep(harness.ctx()) == 0


# -- 6. heartbeat freshness -----------------------------------------------------------------
def test_agent_not_reaped_past_its_dead_threshold_is_recorded(harness):
    st = harness.state
    register(harness, "ghost")
    cfg = harness.config
    harness.clock.advance(max(cfg.agent_dead_ms, cfg.agent_restart_grace_ms) + 3 * cfg.reaper_interval_ms)
    assert st.arbiter.sweep(harness.ctx()) == 1  # timers did not run: the reaper did not pass
    assert st.arbiter.sweep(harness.ctx()) == 0
    v = violations(harness, rule="HEARTBEAT_FRESHNESS")[0]
    assert v["agentId"] == "ghost" and v["severity"] == "warning"


def test_fresh_and_reaped_agents_are_fine(harness):
    register(harness, "fresh")
    harness.advance(1000)
    assert harness.state.arbiter.sweep(harness.ctx()) == 0


def test_sweep_runs_on_the_core_timer(harness):
    harness.advance(harness.config.arbiter_sweep_interval_ms)
    assert harness.state.arbiter.last_sweep == harness.clock.now


# -- status, listing, durability ------------------------------------------------------------
def test_status_and_violations_are_durable(harness):
    arbiter = harness.state.arbiter
    arbiter.check_lock_release(harness.ctx("b"), "l1", "b", "a")
    arbiter.check_note_integrity(harness.ctx(), 1, "s", False)
    harness.advance(0)
    harness.reopen()
    status = harness.state.arbiter.status(harness.ctx())
    assert status["violationsCount"] == 2 and status["rulesCount"] == 6 and status["strictMode"] is False
    assert {r["name"]: r["violations"] for r in status["rules"]}["LOCK_OWNER_VALID"] == 1
    listed = harness.state.arbiter.violations(harness.ctx(), limit=1)
    assert listed["count"] == 1 and listed["total"] == 2 and listed["violations"][0]["rule"] == "NOTE_INTEGRITY"
    assert harness.state.arbiter.violations(harness.ctx(), agentId="b")["total"] == 1
    with pytest.raises(OpError):
        harness.state.arbiter.violations(harness.ctx(), rule="NOPE")


def test_violations_are_published_and_logged(harness):
    harness.delivered.clear()
    harness.state.arbiter.check_lock_release(harness.ctx("b"), "l1", "b", "a")
    harness.advance(0)
    assert [ch for ch, _ in harness.delivered] == ["pd:arbiter"]
    acts = harness.state.activity.list(harness.ctx(), type="arbiter.violation")["activities"]
    assert acts[0]["agentId"] == "b" and acts[0]["target"] == "l1"


def test_violations_table_is_bounded(make_harness):
    h = make_harness(arbiter_violations_max=5)
    for i in range(12):
        h.state.arbiter.check_lock_release(h.ctx(), f"l{i}", "b", "a")
    h.advance(0)
    assert h.state.arbiter.violations(h.ctx(), limit=100)["total"] == 5


# -- strict mode: man overboard -------------------------------------------------------------
def test_strict_mode_throws_the_offender_overboard_until_it_registers_again(make_harness):
    h = make_harness(arbiter_strict=True)
    st = h.state
    register(h, "owner", pid=os.getpid())
    register(h, "squatter")
    st.sessions.start(h.ctx("squatter"), purpose="squat", agentId="squatter", identity="app:api")
    with pytest.raises(OpError) as info:
        st.arbiter.check_claim_pid(h.ctx("squatter"), os.getpid(), identity="app:api")
    assert info.value.code == "agent_overboard" and info.value.status == 403
    write = type("Op", (), {"name": "tuple.out", "durable": True})()
    read = type("Op", (), {"name": "tuple.rd", "durable": False})()
    with pytest.raises(OpError):
        st.arbiter.check_writes(h.ctx("squatter"), write)  # refused at once
    st.arbiter.check_writes(h.ctx("squatter"), read)  # reads still work
    st.arbiter.check_writes(h.ctx("owner"), write)  # others are not affected
    h.advance(0)  # outside the refused op: the man-overboard step
    agent = st.agents.get_agent("squatter")
    assert agent.dead_at is not None and "man overboard" in agent.dead_reason
    if hasattr(st, "salvage"):
        assert st.sessions.active_for_agent("squatter") is None
    heartbeat = CATALOGUE["heartbeat"]
    with pytest.raises(OpError):
        st.arbiter.check_writes(h.ctx("squatter"), heartbeat)
    with pytest.raises(OpError):  # a heartbeat naming the agent in `id` would re-register it silently
        st.arbiter.check_writes(h.ctx(), heartbeat, {"action": "heartbeat", "id": "squatter"})
    assert [e["agentId"] for e in st.arbiter.status(h.ctx())["overboard"]] == ["squatter"]
    h.reopen()
    st = h.state
    with pytest.raises(OpError):
        st.arbiter.check_writes(h.ctx("squatter"), write)  # still overboard after a restart
    st.arbiter.check_writes(h.ctx("squatter"), type("Op", (), {"name": "agent.register", "durable": True})())
    register(h, "squatter")
    st.arbiter.check_writes(h.ctx("squatter"), write)  # back on board
    assert st.arbiter.status(h.ctx())["overboard"] == []
    v = violations(h, rule="PID_SQUATTING")[0]
    assert v["action"] == "man_overboard"


def test_strict_mode_capability_escalation_goes_overboard(make_harness):
    h = make_harness(arbiter_strict=True)
    st = h.state
    register(h, "a")
    st.harbors.create(h.ctx(), name="g", capabilities=["tuple:rd"])
    with pytest.raises(OpError):
        st.harbors.enter(h.ctx("a"), name="g", agentId="a", capabilities=["deploy"])
    h.advance(0)
    assert st.arbiter.is_overboard("a")
    assert st.agents.get_agent("a").dead_at is not None


def test_non_critical_violations_never_go_overboard_in_strict_mode(make_harness):
    h = make_harness(arbiter_strict=True)
    h.state.arbiter.check_lock_release(h.ctx("b"), "l", "b", "a")
    h.advance(0)
    assert not h.state.arbiter.is_overboard("b")


# -- strict mode: the acting agent named in the op's own actor field -------------------------
def throw_overboard(h, agent_id="bad1"):
    """Make `agent_id` squat a live agent's pid in strict mode, and run the man-overboard step."""
    register(h, "owner", pid=os.getpid())
    register(h, agent_id)
    with pytest.raises(OpError):
        h.state.arbiter.check_claim_pid(h.ctx(agent_id), os.getpid(), identity="app:api")
    h.advance(0)
    assert h.state.arbiter.is_overboard(agent_id)


ACTOR_WRITES = [
    ("lock.acquire", {"name": "l", "owner": "bad1"}, "owner"),
    ("lock.extend", {"name": "l", "owner": "bad1"}, "owner"),
    ("lock.release", {"name": "l", "owner": "bad1"}, "owner"),
    ("tuple.out", {"fields": ["x"], "writtenBy": "bad1"}, "writtenBy"),
    ("msg.publish", {"channel": "c", "payload": "hi", "sender": "bad1"}, "sender"),
    ("inbox.send", {"id": "someone", "content": "hi", "from": "bad1"}, "from"),
    ("salvage.claim", {"agentId": "dead-one", "claimedBy": "bad1"}, "claimedBy"),
    ("salvage.complete", {"agentId": "dead-one", "claimedBy": "bad1"}, "claimedBy"),
    ("salvage.abandon", {"agentId": "dead-one", "claimedBy": "bad1"}, "claimedBy"),
    ("heartbeat", {"id": "bad1"}, "id"),
]


@pytest.mark.parametrize(("action", "args", "field"), ACTOR_WRITES, ids=[a for a, _, _ in ACTOR_WRITES])
def test_overboard_agent_naming_itself_in_the_actor_field_is_refused(make_harness, action, args, field):
    """SPEC §12: its further writes are refused, whichever field names it (not only agentId)."""
    h = make_harness(arbiter_strict=True)
    throw_overboard(h)
    op = CATALOGUE[action]
    for ctx in (h.ctx(), h.ctx("owner")):  # anonymous, or another agent's agentId with bad1 as the actor
        with pytest.raises(OpError) as info:
            h.state.arbiter.check_writes(ctx, op, {"action": action, **args})
        assert (info.value.code, info.value.field, info.value.extra["agentId"]) == ("agent_overboard", field, "bad1")
    h.state.arbiter.check_writes(h.ctx(), op, {"action": action, **args, field: "owner"})  # others write on


def test_overboard_agent_in_agentid_of_an_ephemeral_write_is_refused(make_harness):
    h = make_harness(arbiter_strict=True)
    throw_overboard(h)
    for action, args in (("msg.publish", {"channel": "c", "payload": "x"}), ("msg.clear", {"channel": "c"}),
                         ("pheromone.spray", {"table": "t", "id": "i"})):
        with pytest.raises(OpError):
            h.state.arbiter.check_writes(h.ctx("bad1"), CATALOGUE[action], {"action": action, **args})
    for action in ("lock.get", "tuple.rd", "msg.history"):  # reads are not refused
        h.state.arbiter.check_writes(h.ctx("bad1"), CATALOGUE[action], {"action": action, "owner": "bad1"})


def test_overboard_agent_may_re_register_then_write_through_its_actor_field(make_harness):
    h = make_harness(arbiter_strict=True)
    throw_overboard(h)
    acquire = CATALOGUE["lock.acquire"]
    payload = {"action": "lock.acquire", "name": "l", "owner": "bad1"}
    register_op = CATALOGUE["agent.register"]
    h.state.arbiter.check_writes(h.ctx(), register_op, {"action": "agent.register", "id": "bad1"})
    h.state.arbiter.check_writes(h.ctx("bad1"), register_op, {"action": "agent.register", "id": "bad1"})
    with pytest.raises(OpError):
        h.state.arbiter.check_writes(h.ctx(), acquire, payload)  # not registered again yet
    register(h, "bad1")
    h.state.arbiter.check_writes(h.ctx(), acquire, payload)  # back on board
    assert h.state.arbiter.status(h.ctx())["overboard"] == []


def test_actor_field_values_of_any_type_are_left_to_validation(make_harness):
    h = make_harness(arbiter_strict=True)
    throw_overboard(h)
    h.state.arbiter.check_writes(h.ctx(), CATALOGUE["lock.acquire"], {"name": "l", "owner": ["bad1"]})
    h.state.arbiter.check_writes(h.ctx(), CATALOGUE["tuple.out"], {"fields": ["x"], "writtenBy": {"a": 1}})


def test_every_actor_field_is_an_argument_of_its_op():
    assert {op.name: op.actor for op in CATALOGUE.values() if op.actor} == {
        "heartbeat": "id", "inbox.send": "from", "lock.acquire": "owner", "lock.extend": "owner",
        "lock.release": "owner", "msg.publish": "sender", "salvage.abandon": "claimedBy",
        "salvage.claim": "claimedBy", "salvage.complete": "claimedBy", "tuple.out": "writtenBy"}
    with pytest.raises(ValueError):
        Op("x.y", "x.y", "bad", args=(Arg("owner"),), actor="writtenBy")
