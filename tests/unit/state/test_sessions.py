import pytest

from pdcore.errors import OpError
from pdcore.state.pathglob import normalize, overlaps


def _start(h, agent="a1", identity="myapp:api", **kw):
    return h.state.sessions.start(h.ctx(), purpose=kw.pop("purpose", "work"), agentId=agent, identity=identity, **kw)


@pytest.mark.parametrize("a,b,expected", [
    ("src/**", "src/a.py", True),
    ("src", "src/a.py", True),
    ("src/auth/*.ts", "src/auth/login.ts", True),
    ("src/*.ts", "src/auth/login.ts", False),
    ("src/*.ts", "src/*.py", False),
    ("src/a*.ts", "src/*b.ts", True),
    ("**/test_*.py", "tests/unit/test_x.py", True),
    ("src/**/*.py", "src/a/b/c.js", False),
    ("src/a.py", "src/a.py/x", False),
    ("docs/x.md", "src/x.md", False),
])
def test_claim_overlap_is_detected_both_ways(a, b, expected):
    assert overlaps(a, b) is expected
    assert overlaps(b, a) is expected


def test_paths_are_normalized_and_escapes_refused():
    assert normalize("./src//a.py") == "src/a.py"
    assert normalize("src/") == "src"
    for bad in ("../etc/passwd", "src/../../x", "", ".", "a\x00b"):
        with pytest.raises(OpError) as exc:
            normalize(bad)
        assert exc.value.field == "files"


def test_start_get_list_and_end(harness):
    out = _start(harness, purpose="Build auth")
    sid = out["sessionId"]
    got = harness.state.sessions.get(harness.ctx(), id=sid)["session"]
    assert (got["status"], got["phase"], got["purpose"], got["agentId"]) == ("active", "planning", "Build auth", "a1")
    assert harness.state.sessions.list(harness.ctx(), status="active")["count"] == 1
    ended = harness.state.sessions.end(harness.ctx(), id=sid)
    assert ended["status"] == "completed"
    listed = harness.state.sessions.list(harness.ctx())["sessions"]
    assert listed[0]["status"] == "completed" and listed[0]["endedAt"] == harness.clock.now


def test_one_active_session_per_agent_unless_forced(harness):
    first = _start(harness)["sessionId"]
    with pytest.raises(OpError) as exc:
        _start(harness)
    assert exc.value.code == "session_active" and exc.value.extra["sessionId"] == first
    second = _start(harness, force=True)
    assert second["replaced"] == first
    assert harness.state.sessions.get(harness.ctx(), id=first)["session"]["status"] == "abandoned"


def test_phase_changes_and_ended_sessions_refuse_changes(harness):
    sid = _start(harness)["sessionId"]
    out = harness.state.sessions.set_phase(harness.ctx(), id=sid, phase="testing")
    assert (out["phase"], out["previousPhase"]) == ("testing", "planning")
    harness.state.sessions.end(harness.ctx(), id=sid, status="abandoned")
    for call in (lambda: harness.state.sessions.set_phase(harness.ctx(), id=sid, phase="reviewing"),
                 lambda: harness.state.sessions.claim_files(harness.ctx(), id=sid, files=["x.py"]),
                 lambda: harness.state.sessions.end(harness.ctx(), id=sid)):
        with pytest.raises(OpError) as exc:
            call()
        assert exc.value.code == "session_ended"


def test_unknown_session_is_not_found(harness):
    with pytest.raises(OpError) as exc:
        harness.state.sessions.get(harness.ctx(), id="session-nope")
    assert exc.value.code == "not_found" and exc.value.field == "id"


def test_update_ends_with_status_and_changes_purpose(harness):
    sid = _start(harness)["sessionId"]
    out = harness.state.sessions.update(harness.ctx(), id=sid, purpose="Refined", phase="in_progress")
    assert out["session"]["purpose"] == "Refined" and out["session"]["phase"] == "in_progress"
    out = harness.state.sessions.update(harness.ctx(), id=sid, status="completed")
    assert out["session"]["status"] == "completed"


def test_file_claims_are_advisory_and_return_the_conflict(harness):
    s1 = _start(harness, agent="a1", files=["src/auth/*.ts"])["sessionId"]
    s2 = _start(harness, agent="a2")["sessionId"]
    out = harness.state.sessions.claim_files(harness.ctx(), id=s2, files="src/auth/login.ts")
    assert out["claimed"] == ["src/auth/login.ts"]
    (conflict,) = out["conflicts"]
    assert conflict["sessionId"] == s1 and conflict["agentId"] == "a1" and conflict["heldPath"] == "src/auth/*.ts"
    assert conflict["since"] == harness.clock.now


def test_strict_claim_refuses_and_stores_nothing(harness):
    _start(harness, agent="a1", files=["src/**"])
    s2 = _start(harness, agent="a2")["sessionId"]
    with pytest.raises(OpError) as exc:
        harness.state.sessions.claim_files(harness.ctx(), id=s2, files=["src/a.py", "docs/b.md"], strict=True)
    assert exc.value.code == "file_conflict" and exc.value.field == "files"
    assert harness.state.sessions.files_list(harness.ctx(), sessionId=s2)["count"] == 0
    assert harness.store.read_one("SELECT COUNT(*) FROM file_claims WHERE session_id=?", (s2,))[0] == 0


def test_a_strict_holder_blocks_advisory_claimers(harness):
    _start(harness, agent="a1", files=["src/core.py"], strict=True)
    s2 = _start(harness, agent="a2")["sessionId"]
    with pytest.raises(OpError) as exc:
        harness.state.sessions.claim_files(harness.ctx(), id=s2, files=["src/*.py"])
    assert exc.value.code == "file_conflict"


def test_claims_in_other_projects_do_not_conflict(harness):
    _start(harness, agent="a1", identity="alpha:api", files=["src/a.py"])
    s2 = _start(harness, agent="a2", identity="beta:api")["sessionId"]
    out = harness.state.sessions.claim_files(harness.ctx(), id=s2, files=["src/a.py"], strict=True)
    assert out["conflicts"] == []


def test_claims_are_released_on_end_and_on_request(harness):
    sid = _start(harness, files=["a.py", "b.py", "c.py"])["sessionId"]
    out = harness.state.sessions.release_files(harness.ctx(), id=sid, files=["a.py"])
    assert out["released"] == ["a.py"]
    assert [f["path"] for f in out["files"]] == ["b.py", "c.py"]
    assert harness.state.sessions.end(harness.ctx(), id=sid)["releasedFiles"] == ["b.py", "c.py"]
    assert harness.state.sessions.files_list(harness.ctx())["count"] == 0
    assert harness.store.read_one("SELECT COUNT(*) FROM file_claims")[0] == 0


def test_who_owns_matches_globs_and_folders(harness):
    sid = _start(harness, files=["src/auth/*.ts", "docs"])["sessionId"]
    owners = harness.state.sessions.who_owns(harness.ctx(), path="src/auth/login.ts")["owners"]
    assert [o["sessionId"] for o in owners] == [sid]
    assert harness.state.sessions.who_owns(harness.ctx(), path="docs/guide/intro.md")["owned"] is True
    assert harness.state.sessions.who_owns(harness.ctx(), path="src/main.ts")["owned"] is False


def test_claim_ttl_lapses(harness):
    sid = _start(harness)["sessionId"]
    harness.state.sessions.claim_files(harness.ctx(), id=sid, files=["tmp.py"], ttl=1000)
    harness.advance(999)
    assert harness.state.sessions.files_list(harness.ctx(), sessionId=sid)["count"] == 1
    harness.advance(1)
    assert harness.state.sessions.files_list(harness.ctx(), sessionId=sid)["count"] == 0


def test_sessions_and_claims_survive_restart(harness):
    sid = _start(harness, files=["src/x.py"])["sessionId"]
    harness.reopen()
    assert harness.state.sessions.active_for_agent("a1").id == sid
    assert harness.state.sessions.who_owns(harness.ctx(), path="src/x.py")["owners"][0]["sessionId"] == sid


def test_check_files_reports_blocking_strict_claims(harness):
    _start(harness, agent="holder", files=["src/hard.py"], strict=True)
    _start(harness, agent="other", files=["src/soft.py"])
    mine = _start(harness, agent="me")["sessionId"]
    out = harness.state.sessions.check_files(harness.ctx(), paths=["src/hard.py", "src/soft.py", "README.md"],
                                             sessionId=mine)
    assert len(out["conflicts"]) == 2 and out["blocked"] is True
    assert [c["path"] for c in out["blocking"]] == ["src/hard.py"]


def test_too_many_files_is_refused(make_harness):
    h = make_harness(session_max_files=3)
    sid = _start(h)["sessionId"]
    with pytest.raises(OpError) as exc:
        h.state.sessions.claim_files(h.ctx(), id=sid, files=["a", "b", "c", "d"])
    assert exc.value.field == "files"
