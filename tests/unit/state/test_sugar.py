import os
import subprocess
import sys

import pytest

from pdcore.errors import OpError


def _counts(h):
    return tuple(h.store.read_one(f"SELECT COUNT(*) FROM {t}")[0] for t in ("agents", "sessions", "file_claims"))


def test_begin_registers_starts_and_claims_in_one_step(harness):
    out = harness.state.sugar.begin(harness.ctx(), purpose="Building auth", identity="myapp:api",
                                    files=["src/auth/*.ts"], pid=os.getpid())
    assert out["agentRegistered"] and out["sessionStarted"]
    assert out["agentId"].startswith("agent-") and out["sessionId"].startswith("session-")
    assert out["fileClaims"] == ["src/auth/*.ts"] and out["fileConflicts"] == []
    assert "salvageHint" not in out
    agent = harness.state.agents.get(harness.ctx(), id=out["agentId"])["agent"]
    assert agent["pid"] == os.getpid() and agent["sessionId"] == out["sessionId"]


def _refused_begin_leaves_nothing(h, **kw):
    before = _counts(h)
    with pytest.raises(OpError) as exc:
        h.state.sugar.begin(h.ctx(), **kw)
    assert _counts(h) == before
    return exc.value


def test_refused_begin_leaves_nothing_behind(harness):
    harness.state.sugar.begin(harness.ctx(), purpose="holder", identity="myapp", agentId="holder",
                              files=["src/core.py"])
    err = _refused_begin_leaves_nothing(harness, purpose="taker", identity="myapp", agentId="taker",
                                        files=["src/*.py"], strict=True)
    assert err.code == "file_conflict"
    assert "taker" not in harness.state.agents.by_id
    err = _refused_begin_leaves_nothing(harness, purpose="again", agentId="holder")
    assert err.code == "session_active"
    err = _refused_begin_leaves_nothing(harness, purpose="   ", agentId="blank")
    assert err.field == "purpose"
    err = _refused_begin_leaves_nothing(harness, purpose="bad path", agentId="p", files=["../x"])
    assert err.field == "files"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)
    err = _refused_begin_leaves_nothing(harness, purpose="dead pid", agentId="p", pid=proc.pid)
    assert err.field == "pid"


def test_begin_with_force_replaces_the_session(harness):
    first = harness.state.sugar.begin(harness.ctx(), purpose="one", agentId="f")
    second = harness.state.sugar.begin(harness.ctx(), purpose="two", agentId="f", force=True)
    assert second["replacedSessionId"] == first["sessionId"]


def test_begin_hints_at_salvage_of_the_same_project(harness):
    dead = harness.state.sugar.begin(harness.ctx(), purpose="orphan", identity="shop:api", agentId="d")
    harness.state.agents.mark_dead(harness.ctx(), harness.state.agents.by_id["d"], "test")
    out = harness.state.sugar.begin(harness.ctx(), purpose="new work", identity="shop:web", agentId="n")
    assert isinstance(out["salvageHint"], str) and "shop" in out["salvageHint"]
    hint = out["salvage"]
    assert hint["count"] == 1 and hint["entries"][0]["sessionId"] == dead["sessionId"]
    other = harness.state.sugar.begin(harness.ctx(), purpose="elsewhere", identity="blog", agentId="o")
    assert "salvageHint" not in other


def test_done_writes_note_ends_session_and_unregisters(harness):
    out = harness.state.sugar.begin(harness.ctx(), purpose="p", agentId="d1", files=["a.py"])
    done = harness.state.sugar.done(harness.ctx(agent_id="d1"), note="all green")
    assert done == {**done, "agentId": "d1", "sessionId": out["sessionId"], "sessionStatus": "completed",
                    "agentUnregistered": True, "releasedFiles": ["a.py"]}
    notes = harness.state.notes.session_notes(harness.ctx(), id=out["sessionId"])["notes"]
    assert [(n["content"], n["type"]) for n in notes] == [("all green", "handoff")]
    assert "d1" not in harness.state.agents.by_id


def test_done_with_abandon_status(harness):
    out = harness.state.sugar.begin(harness.ctx(), purpose="p", agentId="d2")
    done = harness.state.sugar.done(harness.ctx(), sessionId=out["sessionId"], status="abandoned")
    assert done["sessionStatus"] == "abandoned" and done["agentId"] == "d2"


def test_refused_done_changes_nothing(make_harness):
    h = make_harness(note_max_bytes=10)
    out = h.state.sugar.begin(h.ctx(), purpose="p", agentId="d3")
    with pytest.raises(OpError) as exc:
        h.state.sugar.done(h.ctx(), agentId="d3", note="x" * 11)
    assert exc.value.code == "too_large" and exc.value.field == "note"
    assert h.state.sessions.active_for_agent("d3").id == out["sessionId"]
    assert "d3" in h.state.agents.by_id
    with pytest.raises(OpError) as exc:
        h.state.sugar.done(h.ctx())
    assert exc.value.code == "missing_field"
    with pytest.raises(OpError) as exc:
        h.state.sugar.done(h.ctx(), agentId="nobody")
    assert exc.value.code == "not_found"


def test_whoami(harness):
    assert harness.state.sugar.whoami(harness.ctx(), agentId="ghost")["active"] is False
    out = harness.state.sugar.begin(harness.ctx(), purpose="who", identity="me:api", agentId="w")
    harness.state.notes.add(harness.ctx(), id=out["sessionId"], content="hi")
    harness.clock.advance(1500)
    me = harness.state.sugar.whoami(harness.ctx(agent_id="w"))
    assert me == {**me, "active": True, "agentId": "w", "sessionId": out["sessionId"], "purpose": "who",
                  "identity": "me:api", "noteCount": 1, "duration": 1500}


def test_sitrep_gathers_what_happened(harness):
    harness.state.sugar.begin(harness.ctx(), purpose="a", identity="proj", agentId="s1", files=["src/**"])
    b = harness.state.sugar.begin(harness.ctx(), purpose="b", identity="proj", agentId="s2", files=["src/x.py"])
    harness.state.notes.add(harness.ctx(), id=b["sessionId"], content="progress!")
    harness.state.sugar.begin(harness.ctx(), purpose="c", identity="proj", agentId="s3")
    harness.state.agents.mark_dead(harness.ctx(), harness.state.agents.by_id["s3"], "test")
    rep = harness.state.sugar.sitrep(harness.ctx(), project="proj")
    assert rep["activeSessionCount"] == 2
    assert [n["content"] for n in rep["recentNotes"]] == ["progress!"]
    assert [a["id"] for a in rep["deadAgents"]] == ["s3"]
    assert rep["salvageCount"] == 1
    assert rep["conflicts"][0]["paths"] == ["src/**", "src/x.py"]
    assert rep["activity"]
