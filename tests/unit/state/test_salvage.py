import pytest

from pdcore.errors import OpError


def _doomed(h, agent="dead-1", identity="myapp:api", files=("src/auth/*.ts",), notes=("one", "two")):
    """An agent with a session, files and notes, then declared dead by the reaper's path."""
    out = h.state.sugar.begin(h.ctx(), purpose="Half-done migration", identity=identity, agentId=agent,
                              files=list(files))
    for text in notes:
        h.state.notes.add(h.ctx(), id=out["sessionId"], content=text, type="progress")
    h.state.agents.mark_dead(h.ctx(), h.state.agents.by_id[agent], "no heartbeat")
    return out["sessionId"]


def test_dead_agents_session_enters_the_queue_with_files_and_notes(harness):
    sid = _doomed(harness)
    (entry,) = harness.state.salvage.list(harness.ctx())["entries"]
    assert (entry["agentId"], entry["sessionId"], entry["status"]) == ("dead-1", sid, "pending")
    assert entry["purpose"] == "Half-done migration" and entry["files"] == ["src/auth/*.ts"]
    assert [n["content"] for n in entry["notes"]] == ["one", "two"]
    assert entry["diedAt"] == harness.clock.now and entry["lastHeartbeat"] is not None
    session = harness.state.sessions.get(harness.ctx(), id=sid)["session"]
    assert session["status"] == "abandoned"
    assert harness.state.sessions.who_owns(harness.ctx(), path="src/auth/a.ts")["owned"] is False


def test_reaper_timeout_feeds_the_queue(make_harness):
    h = make_harness(agent_dead_ms=60_000)
    h.state.sugar.begin(h.ctx(), purpose="x", identity="p:q", agentId="quiet")
    h.advance(60_000)
    assert h.state.salvage.pending(h.ctx())["entries"][0]["agentId"] == "quiet"


def test_notes_in_entries_are_the_last_n(make_harness):
    h = make_harness(salvage_note_count=2)
    _doomed(h, notes=("a", "b", "c"))
    entry = h.state.salvage.list(h.ctx())["entries"][0]
    assert [n["content"] for n in entry["notes"]] == ["b", "c"] and entry["noteCount"] == 3


def test_agent_without_a_session_leaves_nothing_to_salvage(harness):
    harness.state.agents.register(harness.ctx(), id="idle")
    harness.state.agents.mark_dead(harness.ctx(), harness.state.agents.by_id["idle"], "test")
    assert harness.state.salvage.list(harness.ctx())["count"] == 0


def test_exactly_one_claimer_wins_and_inherits_the_files(harness):
    _doomed(harness)
    mine = harness.state.sugar.begin(harness.ctx(), purpose="rescue", identity="myapp:api", agentId="rescuer")
    won = harness.state.salvage.claim(harness.ctx(), agentId="dead-1", claimedBy="rescuer")
    assert won["sessionId"] == mine["sessionId"] and won["inheritedFiles"] == ["src/auth/*.ts"]
    owners = harness.state.sessions.who_owns(harness.ctx(), path="src/auth/a.ts")["owners"]
    assert [o["agentId"] for o in owners] == ["rescuer"]
    for other in ("late-1", "late-2"):
        with pytest.raises(OpError) as exc:
            harness.state.salvage.claim(harness.ctx(), agentId="dead-1", claimedBy=other)
        assert exc.value.code == "already_claimed" and exc.value.extra["claimedBy"] == "rescuer"


def test_a_claimer_without_a_session_gets_one(harness):
    _doomed(harness)
    won = harness.state.salvage.claim(harness.ctx(), agentId="dead-1", claimedBy="fresh")
    assert won["sessionCreated"] is True
    session = harness.state.sessions.get(harness.ctx(), id=won["sessionId"])["session"]
    assert session["agentId"] == "fresh" and session["identity"] == "myapp:api"


def test_complete_needs_the_claimer(harness):
    _doomed(harness)
    with pytest.raises(OpError) as exc:
        harness.state.salvage.complete(harness.ctx(), agentId="dead-1")
    assert (exc.value.code, exc.value.field) == ("missing_field", "newAgentId")
    with pytest.raises(OpError) as exc:
        harness.state.salvage.complete(harness.ctx(), agentId="dead-1", newAgentId="r1")
    assert exc.value.code == "invalid_state"
    harness.state.salvage.claim(harness.ctx(), agentId="dead-1", claimedBy="r1")
    with pytest.raises(OpError) as exc:
        harness.state.salvage.complete(harness.ctx(), agentId="dead-1", claimedBy="r2")
    assert exc.value.code == "not_owner"
    out = harness.state.salvage.complete(harness.ctx(), agentId="dead-1", claimedBy="r1")
    assert out["status"] == "completed"
    assert harness.state.salvage.list(harness.ctx())["count"] == 0
    assert harness.state.salvage.list(harness.ctx(), status="completed")["count"] == 1


def test_abandon_returns_the_work_and_its_files(harness):
    _doomed(harness)
    won = harness.state.salvage.claim(harness.ctx(), agentId="dead-1", claimedBy="r1")
    out = harness.state.salvage.abandon(harness.ctx(), agentId="dead-1", claimedBy="r1")
    assert out["status"] == "pending" and out["releasedFiles"] == ["src/auth/*.ts"]
    assert harness.state.sessions.files_list(harness.ctx(), sessionId=won["sessionId"])["count"] == 0
    again = harness.state.salvage.claim(harness.ctx(), agentId="dead-1", claimedBy="r2")
    assert again["claimedBy"] == "r2"


def test_dismiss_and_unknown_agent(harness):
    _doomed(harness)
    assert harness.state.salvage.dismiss(harness.ctx(), agentId="dead-1")["dismissed"] == 1
    assert harness.state.salvage.list(harness.ctx())["count"] == 0
    with pytest.raises(OpError) as exc:
        harness.state.salvage.claim(harness.ctx(), agentId="dead-1", claimedBy="r")
    assert exc.value.code == "not_found" and exc.value.field == "agentId"


def test_project_filter(harness):
    _doomed(harness, agent="d-alpha", identity="alpha:api")
    _doomed(harness, agent="d-beta", identity="beta:web")
    entries = harness.state.salvage.list(harness.ctx(), project="beta")["entries"]
    assert [e["agentId"] for e in entries] == ["d-beta"]


def test_queue_survives_restart(harness):
    _doomed(harness)
    harness.state.salvage.claim(harness.ctx(), agentId="dead-1", claimedBy="r1")
    harness.reopen()
    (entry,) = harness.state.salvage.list(harness.ctx())["entries"]
    assert entry["status"] == "claimed" and entry["claimedBy"] == "r1"
    assert [n["content"] for n in entry["notes"]] == ["one", "two"]
