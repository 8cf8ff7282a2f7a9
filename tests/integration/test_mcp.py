"""`pd mcp` as an MCP client sees it: the real server as a subprocess, spoken to with the mcp SDK."""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from pathlib import Path

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

REPO = Path(__file__).resolve().parents[2]


def mcp_client(env: dict, *args: str, mode: str = "auto") -> Client:
    params = StdioServerParameters(command=sys.executable, args=["-m", "cli.main", "mcp", *args], env=env,
                                   cwd=str(REPO))
    return Client(params, mode=mode, read_timeout_seconds=30)


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def uid() -> str:
    return uuid.uuid4().hex[:8]


def test_default_lists_the_essential_tools_and_full_lists_every_tool(daemon):
    async def main():
        async with mcp_client(daemon.env) as client:
            default = {t.name for t in (await client.list_tools()).tools}
        async with mcp_client(daemon.env, "--full") as client:
            tools = (await client.list_tools()).tools
        return default, {t.name: t for t in tools}

    default, full = anyio.run(main)
    assert {"begin_session", "end_session_full", "whoami", "catch_me_up", "swarm_awareness", "file_heat",
            "talk_to_agent", "claim_port", "release_port", "list_services", "add_note", "acquire_lock",
            "pd_discover"} <= default
    assert "port_get" not in default and "tuple_out" not in default
    assert default < set(full)
    assert {"port_get", "tuple_out", "tuple_read", "tuple_take", "tuple_scan", "tuple_count",
            "release_lock"} <= set(full)
    claim = full["claim_port"]
    assert claim.input_schema["required"] == ["identity"]
    assert claim.input_schema["properties"]["port"] == {"type": "integer", "minimum": 1, "maximum": 65535,
                                                        "description": "preferred port"}
    assert "Returns: port" in claim.description


def test_claim_port_gives_the_sdk_port_and_list_services_and_the_resource_show_it(daemon):
    identity = f"mcp{uid()}:api:main"

    async def main():
        async with mcp_client(daemon.env) as client:
            claimed = await client.call_tool("claim_port", {"identity": identity})
            listed = await client.call_tool("list_services", {"pattern": identity.split(":")[0] + ":*"})
            resource = await client.read_resource("port-daddy://services")
            unlisted = await client.call_tool("port_get", {"id": identity})  # callable though not listed
            return claimed, listed, resource, unlisted

    claimed, listed, resource, unlisted = anyio.run(main)
    assert not claimed.is_error, text_of(claimed)
    port = claimed.structured_content["port"]
    assert daemon.client().port_claim(id=identity)["port"] == port
    assert json.loads(text_of(claimed))["port"] == port
    assert not listed.is_error
    assert [(s["id"], s["port"]) for s in listed.structured_content["services"]] == [(identity, port)]
    services = json.loads(resource.contents[0].text)["services"]
    assert any(s["id"] == identity and s["port"] == port for s in services)
    assert not unlisted.is_error and unlisted.structured_content["service"]["port"] == port


def test_bad_arguments_get_an_error_result_naming_the_field(daemon):
    async def main():
        async with mcp_client(daemon.env) as client:
            return (await client.call_tool("claim_port", {"identity": "not an identity!"}),
                    await client.call_tool("claim_port", {}),
                    await client.call_tool("claim_port", {"identity": "a:b", "port": "high"}),
                    await client.call_tool("claim_port", {"identity": "a:b", "colour": "red"}),
                    await client.call_tool("no_such_tool", {}))

    bad_identity, missing, bad_port, unknown_arg, unknown_tool = anyio.run(main)
    assert bad_identity.is_error and bad_identity.structured_content["field"] == "identity"
    assert text_of(bad_identity).startswith("identity ")
    assert missing.is_error and missing.structured_content["field"] == "identity"
    assert "identity" in text_of(missing)
    assert bad_port.is_error and "port" in text_of(bad_port)
    assert unknown_arg.is_error and "colour" in text_of(unknown_arg)
    assert unknown_tool.is_error and "pd_discover" in text_of(unknown_tool)


def test_session_tools_remember_the_agent_from_begin_to_end(daemon):
    project = f"mcp{uid()}"
    lock = f"{project}-migrate"

    async def main():
        async with mcp_client(daemon.env, mode="legacy") as client:  # the pre-2026 handshake clients use
            begun = await client.call_tool("begin_session", {"purpose": "teach the MCP tests",
                                                             "identity": f"{project}:api"})
            note = await client.call_tool("add_note", {"content": "halfway", "type": "progress"})
            me = await client.call_tool("whoami", {})
            locked = await client.call_tool("acquire_lock", {"name": lock, "ttl": 60_000})
            aware = await client.call_tool("swarm_awareness", {"project": project})
            done = await client.call_tool("end_session_full", {"note": "done"})
            after = await client.call_tool("whoami", {})
            return begun, note, me, locked, aware, done, after

    begun, note, me, locked, aware, done, after = anyio.run(main)
    for result in (begun, note, me, locked, aware, done):
        assert not result.is_error, text_of(result)
    agent, session = begun.structured_content["agentId"], begun.structured_content["sessionId"]
    assert note.structured_content["sessionId"] == session
    assert me.structured_content["agentId"] == agent and me.structured_content["sessionId"] == session
    assert locked.structured_content["owner"] == agent
    assert any(s["id"] == session for s in aware.structured_content["sessions"]["sessions"])
    assert done.structured_content["sessionId"] == session
    assert after.structured_content.get("sessionId") != session
    notes = daemon.client().session_notes(id=session)["notes"]
    assert [n["content"] for n in notes][:1] == ["halfway"]
    daemon.client().lock_release(name=lock, owner=agent)


def test_discover_lists_a_category_and_says_when_one_is_empty(daemon):
    async def main():
        async with mcp_client(daemon.env) as client:
            return (await client.call_tool("pd_discover", {"category": "ports"}),
                    await client.call_tool("pd_discover", {"category": "tunnels"}),
                    await client.call_tool("pd_discover", {}),
                    await client.call_tool("pd_discover", {"category": "nope"}))

    ports, tunnels, overview, unknown = anyio.run(main)
    assert "claim_port(identity*" in text_of(ports) and "port_get(id*)" in text_of(ports)
    assert "none available in this version" in text_of(tunnels)
    assert overview.structured_content["categories"]["tuples"] >= 5
    assert unknown.is_error and unknown.structured_content["field"] == "category"


def test_a_daemon_that_is_down_gives_an_error_result_saying_how_to_start_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORT_DADDY_")}
    env.update({"PORT_DADDY_HOME": str(home), "PORT_DADDY_PORT": str(port), "PORT_DADDY_NO_AUTOSTART": "1",
                "PYTHONPATH": str(REPO)})

    async def main():
        async with mcp_client(env) as client:
            result = await client.call_tool("claim_port", {"identity": "down:api"})
            try:
                await client.read_resource("port-daddy://services")
                resource_error = None
            except MCPError as exc:
                resource_error = exc
            return result, resource_error

    result, resource_error = anyio.run(main)
    assert result.is_error and result.structured_content["code"] == "unavailable"
    assert "pd start" in text_of(result)
    assert resource_error is not None and "pd start" in resource_error.message
    assert not (home / "daemon.pid").exists()  # it did not start a daemon


def test_the_remembered_agent_is_kept_alive_with_heartbeats(daemon):
    import time

    from cli.mcp.server import PortDaddyMCP

    agent = f"mcp-hb-{uid()}"
    client = daemon.client()
    client.agent_register(id=agent)
    before = client.agent_get(id=agent)["agent"]["lastHeartbeat"]
    app = PortDaddyMCP(daemon.config)
    app.agent_id = agent
    app.start_heartbeats(interval=0.05)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and client.agent_get(id=agent)["agent"]["lastHeartbeat"] == before:
            time.sleep(0.05)
        assert client.agent_get(id=agent)["agent"]["lastHeartbeat"] > before
    finally:
        app.close()
        client.agent_unregister(id=agent)
