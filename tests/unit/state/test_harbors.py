"""Harbors (SPEC.md §10): create / list / get / destroy / enter / leave / members / an agent's harbors."""

import pytest

from pdcore.errors import OpError
from pdcore.state.harbors import covers


def test_create_get_list_destroy(harness):
    hb = harness.state.harbors
    made = hb.create(harness.ctx(), name="app:fleet", capabilities=["tuple:*"], channels=["git:committed"])
    assert made["existing"] is False and made["harbor"]["gated"] is True
    assert hb.get(harness.ctx(), name="app:fleet")["harbor"]["channels"] == ["git:committed"]
    hb.create(harness.ctx(), name="other:fleet")
    assert hb.list(harness.ctx())["count"] == 2
    assert [h["name"] for h in hb.list(harness.ctx(), pattern="app:*")["harbors"]] == ["app:fleet"]
    assert hb.destroy(harness.ctx(), name="app:fleet")["destroyed"] is True
    with pytest.raises(OpError) as info:
        hb.get(harness.ctx(), name="app:fleet")
    assert info.value.code == "not_found"


def test_create_again_updates_what_is_given(harness):
    hb = harness.state.harbors
    hb.create(harness.ctx(), name="h", capabilities=["a"])
    again = hb.create(harness.ctx(), name="h", channels=["c"])
    assert again["existing"] is True
    assert (again["harbor"]["capabilities"], again["harbor"]["channels"]) == (["a"], ["c"])


def test_enter_leave_members_and_memberships_survive_restart(harness):
    hb = harness.state.harbors
    hb.create(harness.ctx(), name="h1")
    hb.create(harness.ctx(), name="h2")
    hb.enter(harness.ctx(), name="h1", agentId="a1", capabilities=["review"], identity="app:api")
    hb.enter(harness.ctx(), name="h2", agentId="a1")
    hb.enter(harness.ctx("a2"), name="h1")
    harness.reopen()
    hb = harness.state.harbors
    members = hb.members(harness.ctx(), name="h1")
    assert [m["agentId"] for m in members["members"]] == ["a1", "a2"] and members["count"] == 2
    assert members["members"][0]["capabilities"] == ["review"]
    assert [h["name"] for h in hb.memberships(harness.ctx(), agentId="a1")["harbors"]] == ["h1", "h2"]
    hb.leave(harness.ctx(), name="h1", agentId="a1")
    assert [h["name"] for h in hb.memberships(harness.ctx(), agentId="a1")["harbors"]] == ["h2"]
    with pytest.raises(OpError) as info:
        hb.leave(harness.ctx(), name="h1", agentId="a1")
    assert info.value.code == "not_found"


def test_enter_needs_an_agent_and_an_existing_harbor(harness):
    hb = harness.state.harbors
    with pytest.raises(OpError) as info:
        hb.enter(harness.ctx(), name="nope", agentId="a")
    assert info.value.code == "not_found"
    hb.create(harness.ctx(), name="h")
    with pytest.raises(OpError) as info:
        hb.enter(harness.ctx(), name="h")
    assert (info.value.code, info.value.field) == ("missing_field", "agentId")


def test_gated_harbor_refuses_capabilities_it_does_not_grant(harness):
    hb = harness.state.harbors
    hb.create(harness.ctx(), name="g", capabilities=["tuple:rd", "deploy:*"])
    hb.enter(harness.ctx(), name="g", agentId="ok", capabilities=["tuple:rd", "deploy:staging"])
    with pytest.raises(OpError) as info:
        hb.enter(harness.ctx(), name="g", agentId="greedy", capabilities=["tuple:rd", "tuple:in"])
    assert info.value.code == "capability_denied" and info.value.extra["denied"] == ["tuple:in"]
    assert [m["agentId"] for m in hb.members(harness.ctx(), name="g")["members"]] == ["ok"]


def test_expires_in_destroys_the_harbor_at_its_deadline(harness):
    hb = harness.state.harbors
    hb.create(harness.ctx(), name="brief", expiresIn=1000)
    hb.enter(harness.ctx(), name="brief", agentId="a")
    harness.advance(999)
    assert hb.get(harness.ctx(), name="brief")
    harness.advance(2)
    assert hb.list(harness.ctx())["count"] == 0 and hb.memberships(harness.ctx(), agentId="a")["count"] == 0
    harness.reopen()
    assert harness.store.read_one("SELECT COUNT(*) FROM harbor_members")[0] == 0


def test_dead_agent_leaves_its_harbors(harness):
    hb = harness.state.harbors
    hb.create(harness.ctx(), name="h")
    hb.enter(harness.ctx(), name="h", agentId="doomed")
    hb.on_agent_dead(harness.ctx(), "doomed", None)
    assert hb.members(harness.ctx(), name="h")["count"] == 0


def test_harbor_member_limit(make_harness):
    h = make_harness(harbor_max_members=2)
    h.state.harbors.create(h.ctx(), name="small")
    for agent in ("a", "b"):
        h.state.harbors.enter(h.ctx(), name="small", agentId=agent)
    with pytest.raises(OpError) as info:
        h.state.harbors.enter(h.ctx(), name="small", agentId="c")
    assert info.value.code == "harbor_full"
    h.state.harbors.enter(h.ctx(), name="small", agentId="a", capabilities=["x"])  # re-entering is fine


@pytest.mark.parametrize(("declared", "wanted", "ok"), [
    (["tuple:out"], "tuple:out", True),
    (["tuple:*"], "tuple:in", True),
    (["*"], "anything", True),
    (["tuple:rd"], "tuple:in", False),
    ([], "tuple:rd", False),
    (["deploy:staging"], "deploy:*", False),
])
def test_capability_cover(declared, wanted, ok):
    assert covers(declared, wanted) is ok
