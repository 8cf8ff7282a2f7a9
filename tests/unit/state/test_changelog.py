import pytest

from pdcore.errors import OpError
from pdcore.ops import VALIDATORS
from pdcore.state.changelog import ancestors


def test_an_entry_rolls_up_to_its_ancestors(harness):
    out = harness.state.changelog.add(harness.ctx(), summary="JWT refresh tokens", identity="cl:api:auth",
                                      type="feature")
    assert out["identity"] == "cl:api:auth" and out["ancestors"] == ["cl:api", "cl"]
    entry = out["entry"]
    assert (entry["project"], entry["type"], entry["summary"], entry["createdAt"]) == \
        ("cl", "feature", "JWT refresh tokens", harness.clock.now)


def test_ancestors_of_short_and_missing_identities():
    assert ancestors("a") == [] and ancestors(None) == [] and ancestors("a:b") == ["a"]


def test_identity_and_session_default_to_the_agents_active_session(harness):
    begun = harness.state.sugar.begin(harness.ctx(), purpose="auth work", identity="cl2:api", agentId="ag-1")
    out = harness.state.changelog.add(harness.ctx(agent_id="ag-1"), summary="fixed login", type="fix")
    assert out["identity"] == "cl2:api"
    assert (out["entry"]["sessionId"], out["entry"]["agentId"]) == (begun["sessionId"], "ag-1")


def test_without_any_identity_the_entry_has_none(harness):
    out = harness.state.changelog.add(harness.ctx(), summary="tidy")
    assert out["identity"] is None and out["entry"]["project"] is None and out["ancestors"] == []


def test_list_is_newest_first_and_filters_by_project_identity_and_type(harness):
    cl = harness.state.changelog
    for identity, kind, text in (("p1:api", "feature", "one"), ("p1:api:auth", "fix", "two"),
                                 ("p1:web", "docs", "three"), ("p2:api", "feature", "other"),
                                 ("p1:api2", "chore", "sibling, not child")):
        cl.add(harness.ctx(), summary=text, identity=identity, type=kind)
        harness.clock.advance(10)
    ctx = harness.ctx()
    assert [e["summary"] for e in cl.list(ctx, project="p1")["entries"]] == \
        ["sibling, not child", "three", "two", "one"]
    assert [e["summary"] for e in cl.list(ctx, identity="p1:api")["entries"]] == ["two", "one"]
    assert [e["summary"] for e in cl.list(ctx, type="feature")["entries"]] == ["other", "one"]
    assert cl.list(ctx, project="nobody")["count"] == 0


def test_list_pages_with_before(harness):
    cl = harness.state.changelog
    for i in range(5):
        cl.add(harness.ctx(), summary=f"e{i}", identity="pg:x")
    first = cl.list(harness.ctx(), limit=2)
    assert [e["summary"] for e in first["entries"]] == ["e4", "e3"] and first["nextBefore"] is not None
    rest = cl.list(harness.ctx(), before=first["nextBefore"], limit=10)
    assert [e["summary"] for e in rest["entries"]] == ["e2", "e1", "e0"] and rest["nextBefore"] is None


def test_entries_are_durable(harness):
    harness.state.changelog.add(harness.ctx(), summary="survives", identity="dur:api", description="**why**",
                                metadata={"pr": 12})
    harness.reopen()
    (entry,) = harness.state.changelog.list(harness.ctx(), project="dur")["entries"]
    assert (entry["summary"], entry["description"], entry["metadata"]) == ("survives", "**why**", {"pr": 12})


def test_adding_records_activity_and_publishes(harness):
    harness.state.changelog.add(harness.ctx(), summary="noted", identity="act:api")
    acts = harness.state.activity.list(harness.ctx(), type="changelog.add")["activities"]
    assert acts and acts[0]["target"] == "act:api"
    assert any(ch == "pd:changelog" for ch, _ in harness.delivered)


def test_blank_summary_and_unknown_session_are_refused(harness):
    with pytest.raises(OpError) as info:
        harness.state.changelog.add(harness.ctx(), summary="   ")
    assert (info.value.code, info.value.field) == ("missing_field", "summary")
    with pytest.raises(OpError) as info:
        harness.state.changelog.add(harness.ctx(), summary="x", sessionId="session-nope")
    assert (info.value.code, info.value.field) == ("not_found", "sessionId")
    assert harness.state.changelog.list(harness.ctx())["count"] == 0


@pytest.mark.parametrize("args,field,code", [
    ({}, "summary", "missing_field"),
    ({"summary": "x", "type": "party"}, "type", "invalid_argument"),
    ({"summary": "x", "identity": "a:b:c:d"}, "identity", "invalid_identity"),
    ({"summary": "x" * 501}, "summary", "invalid_argument"),
    ({"summary": "x", "metadata": []}, "metadata", "invalid_argument"),
])
def test_add_validator_names_the_field(args, field, code):
    with pytest.raises(OpError) as info:
        VALIDATORS["changelog.add"](args)
    assert (info.value.field, info.value.code) == (field, code)


def test_the_table_is_bounded(make_harness):
    h = make_harness(changelog_max=100)
    for i in range(230):
        h.state.changelog.add(h.ctx(), summary=f"e{i}", identity="cap:x")
    h.store.commit()
    total = h.store.read_one("SELECT COUNT(*) FROM changelog")[0]
    assert 100 <= total <= 200
