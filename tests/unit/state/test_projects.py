def test_projects_are_derived_from_services_sessions_agents_and_salvage(harness):
    st = harness.state
    a = st.ports.claim(harness.ctx(), id="alpha:api:main")["port"]
    b = st.ports.claim(harness.ctx(), id="alpha:web")["port"]
    st.ports.claim(harness.ctx(), id="beta")
    st.sugar.begin(harness.ctx(), purpose="x", identity="alpha:api", agentId="a1", files=["src/a.py", "src/b.py"])
    st.sugar.begin(harness.ctx(), purpose="y", identity="gamma:api", agentId="g1")
    st.agents.mark_dead(harness.ctx(), st.agents.by_id["g1"], "test")
    out = st.projects.list(harness.ctx())
    by_name = {p["project"]: p for p in out["projects"]}
    assert list(by_name) == ["alpha", "beta", "gamma"] and out["count"] == 3
    alpha = by_name["alpha"]
    assert (alpha["services"], alpha["ports"], alpha["activeSessions"], alpha["fileClaims"], alpha["agents"]) == \
        (2, sorted([a, b]), 1, 2, 1)
    assert by_name["beta"]["services"] == 1 and by_name["beta"]["activeSessions"] == 0
    gamma = by_name["gamma"]
    assert (gamma["salvagePending"], gamma["agents"], gamma["activeSessions"]) == (1, 0, 0)
    assert alpha["lastActivity"] == harness.clock.now


def test_a_project_disappears_with_its_last_service(harness):
    harness.state.ports.claim(harness.ctx(), id="gone:api")
    harness.state.ports.release(harness.ctx(), id="gone:*")
    assert harness.state.projects.list(harness.ctx())["count"] == 0


def test_limit_cuts_the_list_not_the_count(harness):
    for name in ("p1", "p2", "p3"):
        harness.state.ports.claim(harness.ctx(), id=f"{name}:api")
    out = harness.state.projects.list(harness.ctx(), limit=2)
    assert [p["project"] for p in out["projects"]] == ["p1", "p2"] and out["count"] == 3
