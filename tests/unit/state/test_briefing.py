import pytest

from pdcore.errors import OpError


def _scene(h):
    """Two projects: brf with services, two agents, a dead one, claims, a lock, notes; other with one service."""
    st = h.state
    st.ports.claim(h.ctx(), id="brf:api:main")
    st.ports.claim(h.ctx(), id="brf:web:main")
    st.ports.claim(h.ctx(), id="other:api")
    alice = st.sugar.begin(h.ctx(), purpose="Building auth", identity="brf:api", agentId="alice",
                           files=["src/auth/*.py"])
    st.sugar.begin(h.ctx(), purpose="Styling the login page", identity="brf:web", agentId="bob",
                   files=["src/auth/login.py"])
    st.notes.add(h.ctx(), id=alice["sessionId"], content="Chose JWT\nsecond line stays out", type="decision")
    doomed = st.sugar.begin(h.ctx(), purpose="Half-done migration", identity="brf:db", agentId="carol",
                            files=["migrations/*"])
    st.notes.add(h.ctx(), id=doomed["sessionId"], content="step 1 of 3", type="progress")
    st.agents.mark_dead(h.ctx(), st.agents.by_id["carol"], "no heartbeat")
    st.locks.acquire(h.ctx(), name="brf:deploy", owner="alice", ttl=60_000)
    st.locks.acquire(h.ctx(), name="elsewhere", owner="zed", ttl=60_000)
    st.changelog.add(h.ctx(), summary="Login endpoint", identity="brf:api", type="feature")
    st.integration.ready(h.ctx(), identity="brf:api:main", message="auth endpoints up")
    st.sugar.begin(h.ctx(), purpose="Unrelated", identity="other:api", agentId="olga")
    return alice


def test_briefing_gathers_the_projects_state(harness):
    _scene(harness)
    b = harness.state.briefing.get(harness.ctx(), project="brf")
    assert [s["id"] for s in b["services"]] == ["brf:api:main", "brf:web:main"]
    assert {a["id"] for a in b["agents"]} == {"alice", "bob"}
    assert {s["agentId"] for s in b["activeSessions"]} == {"alice", "bob"}
    assert {c["path"] for c in b["fileClaims"]} == {"src/auth/*.py", "src/auth/login.py"}
    assert len(b["conflicts"]) == 1
    assert [e["agentId"] for e in b["salvage"]] == ["carol"] and b["salvage"][0]["files"] == ["migrations/*"]
    assert [lk["name"] for lk in b["locks"]] == ["brf:deploy"]
    assert [c["summary"] for c in b["changelog"]] == ["Login endpoint"]
    assert [s["identity"] for s in b["integration"]] == ["brf:api:main"]
    assert {n["type"] for n in b["recentNotes"]} == {"decision", "progress"}
    assert b["activity"] and all("olga" != a["agentId"] for a in b["activity"])


def test_briefing_markdown_is_a_readable_snapshot(harness):
    _scene(harness)
    md = harness.state.briefing.get(harness.ctx(), project="brf")["markdown"]
    assert md.startswith("# Briefing: brf\n")
    for text in ("## At a glance", "brf:api:main", "`alice`", "Building auth", "`src/auth/*.py`",
                 "## File conflicts", "pd salvage claim carol", "`brf:deploy` held by `alice`",
                 "decision: Chose JWT", "**[FEATURE]** Login endpoint", "## Next steps"):
        assert text in md, text
    assert "second line stays out" not in md
    assert "other:api" not in md and "olga" not in md and "elsewhere" not in md


def test_briefing_without_a_project_covers_everything(harness):
    _scene(harness)
    b = harness.state.briefing.get(harness.ctx())
    assert b["project"] is None and "# Briefing: all projects" in b["markdown"]
    assert {s["id"] for s in b["services"]} >= {"brf:api:main", "other:api"}
    assert {lk["name"] for lk in b["locks"]} == {"brf:deploy", "elsewhere"}


def test_briefing_of_an_empty_project_says_so(harness):
    b = harness.state.briefing.get(harness.ctx(), project="ghost")
    assert b["services"] == [] and b["activeSessions"] == [] and b["salvageCount"] == 0
    assert "- none claimed" in b["markdown"]


def test_briefing_changes_nothing(harness):
    _scene(harness)
    harness.store.commit()
    writes = harness.store.writes
    harness.state.briefing.get(harness.ctx(), project="brf")
    harness.state.briefing.get(harness.ctx())
    assert harness.store.writes == writes and not harness.store.pending and not harness.store.in_tx


def test_limit_bounds_the_lists(harness):
    for i in range(5):
        harness.state.changelog.add(harness.ctx(), summary=f"c{i}", identity="lim:api")
    assert len(harness.state.briefing.get(harness.ctx(), project="lim", limit=2)["changelog"]) == 2


@pytest.mark.parametrize("project", ["a:b", "bad name", "x*"])
def test_a_project_that_is_not_one_segment_is_refused(harness, project):
    with pytest.raises(OpError) as info:
        harness.state.briefing.get(harness.ctx(), project=project)
    assert (info.value.code, info.value.field) == ("invalid_argument", "project")
