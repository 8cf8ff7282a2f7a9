import pytest

from pdcore.errors import OpError
from pdcore.state.inbox import inbox_channel


def send(h, to="agent-b", content="hello", **kw):
    return h.state.inbox.send(h.ctx(agent_id=kw.pop("agent_id", None)), id=to, content=content, **kw)


def listing(h, to="agent-b", **kw):
    kw.setdefault("limit", 50)
    return h.state.inbox.list(h.ctx(), id=to, **kw)


def test_send_then_list_newest_first(harness):
    first = send(harness, content="one", **{"from": "agent-a"})["messageId"]
    second = send(harness, content={"task": 2})["messageId"]
    msgs = listing(harness)["messages"]
    assert [m["id"] for m in msgs] == [second, first]
    assert msgs[0]["content"] == {"task": 2} and msgs[0]["contentType"] == "json"
    assert msgs[1]["from"] == "agent-a" and msgs[1]["read"] is False


def test_sender_defaults_to_agent_id(harness):
    send(harness, agent_id="agent-x")
    assert listing(harness)["messages"][0]["from"] == "agent-x"


def test_messages_are_durable(harness):
    send(harness, content="keep me")
    harness.reopen()
    assert listing(harness)["messages"][0]["content"] == "keep me"


def test_read_state_and_stats(harness):
    ids = [send(harness, content=f"m{i}")["messageId"] for i in range(3)]
    harness.state.inbox.mark_read(harness.ctx(), id="agent-b", messageId=ids[0])
    assert harness.state.inbox.stats(harness.ctx(), id="agent-b") == {"agentId": "agent-b", "total": 3, "unread": 2}
    assert [m["id"] for m in listing(harness, unread=True)["messages"]] == [ids[2], ids[1]]
    assert harness.state.inbox.mark_all_read(harness.ctx(), id="agent-b")["marked"] == 2
    assert harness.state.inbox.stats(harness.ctx(), id="agent-b")["unread"] == 0


def test_read_time_is_kept_from_the_first_read(harness):
    mid = send(harness)["messageId"]
    harness.state.inbox.mark_read(harness.ctx(), id="agent-b", messageId=mid)
    first = listing(harness)["messages"][0]["readAt"]
    harness.advance(1000)
    harness.state.inbox.mark_read(harness.ctx(), id="agent-b", messageId=mid)
    assert listing(harness)["messages"][0]["readAt"] == first


def test_marking_someone_elses_message_is_not_found(harness):
    mid = send(harness, to="agent-b")["messageId"]
    with pytest.raises(OpError) as err:
        harness.state.inbox.mark_read(harness.ctx(), id="agent-c", messageId=mid)
    assert err.value.code == "not_found"


def test_clear_deletes_only_that_inbox(harness):
    send(harness, to="agent-b")
    send(harness, to="agent-c")
    assert harness.state.inbox.clear(harness.ctx(), id="agent-b")["deleted"] == 1
    assert listing(harness, to="agent-c")["count"] == 1


def test_inbox_is_bounded_oldest_out(make_harness):
    h = make_harness(inbox_max_per_agent=5)
    for i in range(8):
        send(h, content=f"m{i}")
    assert [m["content"] for m in listing(h)["messages"]] == [f"m{i}" for i in range(7, 2, -1)]


def test_paging_back_with_before(harness):
    ids = [send(harness, content=f"m{i}")["messageId"] for i in range(5)]
    page = listing(harness, limit=2, before=ids[3])["messages"]
    assert [m["id"] for m in page] == [ids[2], ids[1]]


def test_empty_content_is_refused(harness):
    with pytest.raises(OpError) as err:
        send(harness, content="  ")
    assert err.value.code == "missing_field"


def test_new_message_is_announced_without_its_content(harness):
    mid = send(harness, content="secret plans", **{"from": "agent-a"})["messageId"]
    channel, delivery = harness.delivered[-1]
    assert channel == inbox_channel("agent-b")
    assert delivery["message"] == {"messageId": mid, "from": "agent-a", "type": "message"}


# -- a fleet agent called by its bare name (MCP talk_to_agent "qa") ---------------------------
def register(h, agent_id):
    h.state.agents.register(h.ctx(), id=agent_id)


def test_a_bare_fleet_agent_name_reaches_the_registered_fleet_agent(harness):
    register(harness, "myapp:fleet:qa")
    register(harness, "myapp:fleet:qa-lead")  # a longer name is not a match
    out = send(harness, to="qa", content="please test #12")
    assert out["agentId"] == "myapp:fleet:qa" and out["resolvedFrom"] == "qa" and "warning" not in out
    assert "myapp:fleet:qa" in out["message"] and "qa" in out["message"]
    assert listing(harness, to="myapp:fleet:qa")["messages"][0]["content"] == "please test #12"
    assert listing(harness, to="qa")["messages"] == []


def test_a_bare_name_of_several_fleet_agents_is_refused_with_the_list(harness):
    register(harness, "web:fleet:qa")
    register(harness, "api:fleet:qa")
    with pytest.raises(OpError) as info:
        send(harness, to="qa")
    err = info.value
    assert (err.code, err.field, err.status) == ("conflict", "id", 409)
    assert err.extra["candidates"] == ["api:fleet:qa", "web:fleet:qa"]
    assert "api:fleet:qa" in err.message and "web:fleet:qa" in err.message
    assert listing(harness, to="qa")["messages"] == [] and listing(harness, to="api:fleet:qa")["messages"] == []


def test_an_exact_registered_id_wins_over_fleet_agents(harness):
    register(harness, "qa")
    register(harness, "myapp:fleet:qa")
    out = send(harness, to="qa")
    assert out["agentId"] == "qa" and "resolvedFrom" not in out and "warning" not in out


def test_an_unknown_recipient_still_gets_the_message_with_a_warning(harness):
    out = send(harness, to="nobody")
    assert out["agentId"] == "nobody" and "no agent nobody is registered" in out["warning"]
    assert listing(harness, to="nobody")["count"] == 1
    out = send(harness, to="other:fleet:nobody")  # a full id is never resolved
    assert out["agentId"] == "other:fleet:nobody" and "warning" in out


def test_a_fleet_agent_between_runs_is_found_from_its_running_fleet(harness):
    """Between runs the fleet agent is unregistered; the fleet its runner reports still declares it."""
    harness.state.spawn.fleet_report(harness.ctx(), runner="foreground", runnerPid=4242, name="myapp",
                                     agents=[{"name": "qa", "identity": "myapp:qa-bot"}, {"name": "dev"}])
    out = send(harness, to="qa")
    assert (out["agentId"], out["resolvedFrom"]) == ("myapp:qa-bot", "qa")
    register(harness, "myapp:fleet:qa")  # a live registered agent comes first
    register(harness, "dead:fleet:qa")
    harness.state.agents.mark_dead(harness.ctx(), harness.state.agents.get_agent("dead:fleet:qa"), "test")
    assert send(harness, to="qa")["agentId"] == "myapp:fleet:qa"
