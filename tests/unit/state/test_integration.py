from pdcore.state.integration import integration_channel


def test_ready_and_needs_are_listed_newest_first(harness):
    st = harness.state.integration
    st.needs(harness.ctx(), identity="app:web", message="needs auth endpoints")
    harness.advance(10)
    st.ready(harness.ctx(agent_id="api-agent"), identity="app:api", message="auth endpoints ready")
    out = st.list(harness.ctx(), project="app")
    assert [(s["identity"], s["type"]) for s in out["signals"]] == [("app:api", "ready"), ("app:web", "needs")]
    assert out["signals"][0]["agentId"] == "api-agent"
    assert out["latest"] == {"app:api": "ready", "app:web": "needs"}


def test_list_filters_by_project_identity_and_type(harness):
    st = harness.state.integration
    st.ready(harness.ctx(), identity="a:x")
    st.ready(harness.ctx(), identity="b:y")
    st.needs(harness.ctx(), identity="a:x", message="db")
    assert st.list(harness.ctx(), project="b")["count"] == 1
    assert st.list(harness.ctx(), identity="a:x", type="needs")["signals"][0]["message"] == "db"


def test_latest_signal_wins(harness):
    st = harness.state.integration
    st.needs(harness.ctx(), identity="a:x")
    st.ready(harness.ctx(), identity="a:x")
    assert st.list(harness.ctx())["latest"] == {"a:x": "ready"}


def test_signal_is_published_on_the_project_channel(harness):
    out = harness.state.integration.ready(harness.ctx(), identity="app:api", message="up")
    assert out["channel"] == integration_channel("app")
    channel, delivery = harness.delivered[-1]
    assert channel == "pd:integration:app"
    assert delivery["message"]["identity"] == "app:api" and delivery["message"]["type"] == "ready"


def test_signals_are_durable(harness):
    harness.state.integration.ready(harness.ctx(), identity="app:api")
    harness.reopen()
    assert harness.state.integration.list(harness.ctx())["count"] == 1
