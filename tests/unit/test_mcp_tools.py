"""The MCP tools are built from the op catalogue: schemas, names, categories, the magic table, and
how a call is translated (without a daemon: the SDK link is a fake)."""

from __future__ import annotations

import json
import re

import anyio
import jsonschema
import pytest
from click.testing import CliRunner

from cli.mcp import tools as T
from cli.mcp.install import merge_into, snippet
from pdcore.errors import OpError
from pdcore.ops import CATALOGUE, Arg, Op
from pdcore.ops.schema import NAME_RE, check_identity, check_identity_pattern


def test_every_arg_type_maps_to_its_json_schema_type():
    op = Op("demo.all", "demo.all", "Every type.", args=(
        Arg("s", "str"), Arg("t", "text", max_len=100), Arg("n", "name", required=True), Arg("i", "identity"),
        Arg("p", "idpattern"), Arg("k", "int", min=0, max=9, default=3), Arg("f", "float", min=0, max=1),
        Arg("b", "bool"), Arg("d", "dict", max_len=4), Arg("l", "list", max_len=16), Arg("a", "any", doc="anything"),
        Arg("c", "str", choices=("x", "y")),
    ))
    props = T.input_schema(op)["properties"]
    assert props["s"] == {"type": "string", "maxLength": 1024}
    assert props["t"] == {"type": "string", "maxLength": 100}
    assert props["n"]["type"] == "string" and props["n"]["pattern"] == NAME_RE.pattern
    assert props["i"]["type"] == "string" and props["p"]["type"] == "string"
    assert props["k"] == {"type": "integer", "minimum": 0, "maximum": 9, "default": 3}
    assert props["f"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert props["b"] == {"type": "boolean"}
    assert props["d"] == {"type": "object", "maxProperties": 4}
    assert props["l"] == {"type": "array", "maxItems": 16}
    assert props["a"] == {"description": "anything"}
    assert props["c"]["enum"] == ["x", "y"]
    assert T.input_schema(op)["required"] == ["n"]


@pytest.mark.parametrize("op_name", ["port.claim", "lock.acquire", "note.quick", "tuple.in", "harbor.create",
                                     "pheromone.spray", "session.start"])
def test_a_plain_tool_schema_is_the_op_arg_list(op_name):
    op = CATALOGUE[op_name]
    schema = T.input_schema(op)
    assert list(schema["properties"]) == [a.name for a in op.args]
    assert schema.get("required", []) == [a.name for a in op.args if a.required]
    assert schema["additionalProperties"] is False
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_schema_patterns_agree_with_the_core_validators():
    identity = re.compile(T.IDENTITY_PATTERN)
    pattern = re.compile(T.IDPATTERN_PATTERN)
    for text in ["myapp", "myapp:api", "my.app:api-2:main_x", "a:b:c:d", "", "a b", "a::b", ":a", "a:",
                 "x" * 65, "my*", "myapp:*", "*:*:main", "a*b"]:
        try:
            check_identity(text)
            ok = True
        except OpError:
            ok = False
        assert bool(identity.match(text)) == ok, text
        try:
            check_identity_pattern(text)
            ok = True
        except OpError:
            ok = False
        assert bool(pattern.match(text)) == ok, text


def test_every_tool_schema_is_valid_json_schema_and_accepts_its_required_args():
    for tool in T.build_tools().values():
        schema = tool.input_schema
        assert schema["type"] == "object", tool.name
        jsonschema.Draft202012Validator.check_schema(schema)
        assert tool.description, tool.name


def test_magic_tools_rename_op_args_for_agents():
    tools = T.build_tools()
    claim = tools["claim_port"]
    assert claim.op == "port.claim" and claim.arg_map["identity"] == "id"
    assert claim.input_schema["required"] == ["identity"]
    begin = tools["begin_session"]
    assert {"purpose", "identity", "agent_id", "type", "files"} <= set(begin.input_schema["properties"])
    assert begin.arg_map["agent_id"] == "agentId"
    talk = tools["talk_to_agent"]
    assert set(talk.input_schema["required"]) == {"agent_id", "content"}
    assert "message" not in talk.input_schema["properties"]
    assert tools["add_note"].arg_map["session_id"] == "sessionId"
    assert T.snake("keepAgent") == "keep_agent" and T.snake("ttlMs") == "ttl_ms"


def test_the_magic_table_only_offers_tools_whose_op_exists():
    tools = T.build_tools()
    for m in T.MAGIC:
        if isinstance(m, T.Magic):
            exists = any(name in CATALOGUE for name in m.ops)
        else:
            exists = all(op in CATALOGUE for _, op, _ in m.parts)
        assert (m.name in tools) == exists, m.name
    for tool in tools.values():
        assert tool.op is None or tool.op in CATALOGUE
        assert all(p.op in CATALOGUE for p in tool.parts)
        if tool.op:
            op_args = {a.name for a in CATALOGUE[tool.op].args}
            assert set(tool.arg_map.values()) <= op_args, tool.name
            assert set(tool.fill) <= op_args, tool.name


def test_a_missing_op_removes_its_magic_tool_and_its_plain_tool():
    smaller = {k: v for k, v in CATALOGUE.items() if k not in ("port.claim", "files.list")}
    tools = T.build_tools(smaller)
    assert "claim_port" not in tools and "port_claim" not in tools
    assert "swarm_awareness" not in tools  # one of its parts is gone
    assert "list_services" in tools


def test_a_magic_tool_takes_the_first_candidate_op_that_exists():
    fake = Op("spawn.create", "spawn.create", "Start a background agent.", args=(Arg("task", "text", required=True),))
    tools = T.build_tools({**CATALOGUE, fake.name: fake})
    assert tools["spawn_agent"].op == "spawn.create"
    assert "spawn_create" not in tools
    assert "fleet" in tools["spawn_agent"].categories


def test_every_op_is_reachable_by_a_tool_and_tool_names_are_unique():
    tools = T.build_tools()
    reached = {t.op for t in tools.values() if t.op}
    assert reached == set(CATALOGUE)
    assert len(tools) == len({t.name for t in tools.values()})
    assert {"tuple_out", "tuple_read", "tuple_take", "tuple_scan", "tuple_count"} <= set(tools)
    assert tools["tuple_read"].op == "tuple.rd" and tools["tuple_take"].op == "tuple.in"
    assert "port_claim" not in tools  # claim_port stands for it


def test_categories_come_from_the_op_name():
    assert T.category_of("port.claim") == "ports"
    assert T.category_of("session.notes") == "notes"
    assert T.category_of("files.who_owns") == "sessions"
    assert T.category_of("salvage.claim") == "agents"
    assert T.category_of("heartbeat") == "agents"
    assert T.category_of("sugar.begin") == "session-lifecycle"
    assert T.category_of("daemon.health") == "system"
    assert T.category_of("tuple.rd") == "tuples"
    assert T.category_of("spawn.start") == "fleet"
    assert T.category_of("gizmo.spin") == "gizmo"


def test_discover_lists_every_spec_category_and_says_when_one_is_empty():
    tools = T.build_tools()
    _, overview = T.discover(tools, None)
    assert list(overview["categories"])[:23] == list(T.CATEGORIES)
    text, listed = T.discover(tools, "ports")
    assert "claim_port(identity*" in text and any(t["name"] == "port_get" for t in listed["tools"])
    text, listed = T.discover(tools, "tunnels")
    assert "none available in this version" in text and listed["tools"] == []
    with pytest.raises(ValueError, match="unknown category"):
        T.discover(tools, "nope")


# -- the call translation, with a fake SDK link -------------------------------------------------
class FakeLink:
    def __init__(self, replies: dict | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.replies = replies or {}

    def call(self, action: str, args: dict) -> dict:
        self.calls.append((action, args))
        reply = self.replies.get(action, {})
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self) -> None:
        pass


def make_app(replies: dict | None = None, full: bool = False):
    from cli.mcp.server import PortDaddyMCP
    from pdcore.config import Config

    link = FakeLink(replies)
    return PortDaddyMCP(Config(), full=full, link=link), link


def test_a_refused_field_is_named_as_the_tool_spells_it():
    app, _ = make_app({"port.claim": OpError("invalid_identity", "id must be project[:stack[:context]]", "id")})
    result = anyio.run(app.call, "claim_port", {"identity": "x y"})
    assert result.is_error
    assert result.structured_content == {"error": "identity must be project[:stack[:context]]",
                                         "code": "invalid_identity", "field": "identity"}


def test_a_daemon_that_is_down_is_an_error_result_naming_pd_start():
    from pdcore.client import DOWN_MESSAGE

    app, _ = make_app({"port.list": OpError("unavailable", DOWN_MESSAGE)})
    result = anyio.run(app.call, "list_services", {})
    assert result.is_error and "pd start" in result.content[0].text


def test_begin_session_is_remembered_and_filled_into_later_calls():
    app, link = make_app({"sugar.begin": {"agentId": "agent-1", "sessionId": "s-1"},
                          "sugar.done": {"agentId": "agent-1", "sessionId": "s-1", "agentUnregistered": True}})
    anyio.run(app.call, "begin_session", {"purpose": "work"})
    anyio.run(app.call, "add_note", {"content": "hi"})
    anyio.run(app.call, "acquire_lock", {"name": "db"})
    anyio.run(app.call, "talk_to_agent", {"agent_id": "other", "content": "hello"})
    anyio.run(app.call, "add_note", {"content": "elsewhere", "session_id": "s-9"})
    anyio.run(app.call, "end_session_full", {})
    anyio.run(app.call, "whoami", {})
    assert link.calls == [
        ("sugar.begin", {"purpose": "work"}),
        ("note.quick", {"content": "hi", "agentId": "agent-1"}),
        ("lock.acquire", {"name": "db", "owner": "agent-1"}),
        ("inbox.send", {"id": "other", "content": "hello", "from": "agent-1"}),
        ("note.quick", {"content": "elsewhere", "sessionId": "s-9"}),
        ("sugar.done", {"agentId": "agent-1"}),
        ("sugar.whoami", {}),
    ]
    assert app.agent_id is None


def test_a_composite_tool_only_reads_and_passes_its_args_where_declared():
    app, link = make_app({"agent.list": {"agents": []}, "session.list": {"sessions": []}, "files.list": {"files": []}})
    result = anyio.run(app.call, "swarm_awareness", {"project": "myapp"})
    assert not result.is_error
    assert link.calls == [("agent.list", {"active": True}), ("session.list", {"status": "active", "project": "myapp"}),
                          ("files.list", {"project": "myapp"})]
    assert set(result.structured_content) == {"agents", "sessions", "fileClaims"}
    assert all(not CATALOGUE[op].durable for op, _ in link.calls)


def test_unknown_arguments_and_tools_are_refused_before_the_daemon():
    app, link = make_app()
    assert anyio.run(app.call, "claim_port", {"identity": "a", "colour": "red"}).is_error
    assert anyio.run(app.call, "nope", {}).is_error
    assert link.calls == []


def test_default_listing_is_the_essentials_and_full_is_everything(monkeypatch):
    from cli.mcp.server import full_from_env

    app, _ = make_app()
    listed = {t.name for t in app.listed()}
    assert "pd_discover" in listed and "claim_port" in listed and "port_get" not in listed
    full, _ = make_app(full=True)
    assert {t.name for t in full.listed()} == set(full.tools)
    monkeypatch.setenv("PORT_DADDY_MCP_FULL", "1")
    assert full_from_env()
    monkeypatch.setenv("PORT_DADDY_MCP_FULL", "0")
    assert not full_from_env()


def test_resources_are_offered_for_existing_ops():
    app, _ = make_app()
    assert set(app.resources()) == {"port-daddy://services", "port-daddy://sessions", "port-daddy://agents",
                                    "port-daddy://locks"}


# -- pd mcp install --------------------------------------------------------------------------------
def test_install_write_merges_into_mcp_json_keeping_other_entries(tmp_path):
    path = tmp_path / ".mcp.json"
    path.write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}, "keep": 1}))
    doc, changed = merge_into(path)
    assert changed
    on_disk = json.loads(path.read_text())
    assert on_disk == doc == {"mcpServers": {"other": {"command": "x"},
                                             "port-daddy": {"command": "pd", "args": ["mcp"]}}, "keep": 1}
    assert merge_into(path) == (doc, False)


def test_install_write_refuses_a_file_that_is_not_json(tmp_path):
    path = tmp_path / ".mcp.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        merge_into(path)
    assert path.read_text() == "{not json"


def test_pd_mcp_install_prints_the_snippet_and_writes_it(tmp_path, monkeypatch):
    from cli.main import cli

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    printed = runner.invoke(cli, ["mcp", "install", "--json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == snippet() == {"mcpServers": {"port-daddy": {"command": "pd", "args": ["mcp"]}}}
    written = runner.invoke(cli, ["mcp", "install", "--write"])
    assert written.exit_code == 0, written.output
    assert json.loads((tmp_path / ".mcp.json").read_text()) == snippet()


def test_fleet_init_tool_writes_the_fleet_file_in_the_project(tmp_path):
    import subprocess

    from cli.mcp.server import _fleet_init
    from cli.mcp.tools import build_tools

    assert build_tools()["fleet_init"].essential
    project = tmp_path / "myproj"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    out = _fleet_init({"project_dir": str(project)})
    assert out["fileAction"] == "written" and (project / "pd-fleet.yml").exists()
    assert "name: myproj" in (project / "pd-fleet.yml").read_text()
