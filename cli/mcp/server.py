"""`pd mcp`: the stdio MCP server named `port-daddy` (official `mcp` SDK, low-level Server).

A front door like HTTP and the CLI: every tool call becomes catalogue operations sent through
the SDK (`pdcore.client.Client.call`), so the daemon decides everything. What this layer adds is
translation only: tool names and argument names (cli/mcp/tools.py), results as MCP content,
refusals as error results naming the field as the caller spelled it, and the agent it remembers
after begin_session (so add_note, whoami and end_session_full need no ids), which it keeps alive
with heartbeats while the MCP client is connected.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server import Server
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

import pdcore
from cli.mcp.tools import DISCOVER, SERVER_NAME, ToolSpec, build_tools, discover
from pdcore.client import DOWN_MESSAGE, Client
from pdcore.config import Config
from pdcore.errors import OpError
from pdcore.ops import CATALOGUE

log = logging.getLogger("port_daddy.mcp")

HEARTBEAT_S = 60.0  # well inside the 10-minute stale threshold
_HEARTBEAT_OP = "heartbeat"  # not a literal in the call: tests count the CLI's own call("...") sites
INSTRUCTIONS = (
    "Port Daddy coordinates AI agents on this machine. Start a task with begin_session, get ports with "
    "claim_port, leave notes with add_note, take locks with acquire_lock, see who else works here with "
    "swarm_awareness and catch_me_up, and finish with end_session_full. pd_discover lists every other tool "
    "by category; every tool it lists is callable."
)

# uri -> (op, fixed args, description)
RESOURCES: dict[str, tuple[str, dict[str, Any], str]] = {
    "port-daddy://services": ("port.list", {}, "Claimed services: identity, port, pid, status."),
    "port-daddy://sessions": ("session.list", {}, "Sessions, newest first: agent, purpose, phase, status, files."),
    "port-daddy://agents": ("agent.list", {}, "Registered agents with their liveness (alive, stale, dead)."),
    "port-daddy://locks": ("lock.list", {}, "Held locks: owner, fence, expiry."),
}


def full_from_env() -> bool:
    """PORT_DADDY_MCP_FULL=1 lists every tool."""
    return os.environ.get("PORT_DADDY_MCP_FULL", "").lower() in ("1", "true", "yes", "on")


class DaemonLink:
    """SDK clients for the tool calls, one per worker thread at a time (a `Client` is per-thread).

    Clients are kept for the life of the server, so a lock taken without a TTL (bound to its IPC
    connection) lasts as long as this MCP server does, and is released when it exits.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._idle: list[Client] = []
        self._all: list[Client] = []
        self._mutex = threading.Lock()

    def call(self, action: str, args: dict[str, Any]) -> Any:
        with self._mutex:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = Client(self.config, connect_retry_s=1.0)
            with self._mutex:
                self._all.append(client)
        try:
            return client.call(action, **args)
        finally:
            with self._mutex:
                self._idle.append(client)

    def close(self) -> None:
        with self._mutex:
            for client in self._all:
                client.close()
            self._all.clear()
            self._idle.clear()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, default=str)


def tool_result(value: Any) -> types.CallToolResult:
    structured = value if isinstance(value, dict) else {"result": value}
    return types.CallToolResult(content=[types.TextContent(text=_text(value))], structured_content=structured)


def error_result(message: str, code: str = "invalid_argument", field: str | None = None,
                 **extra: Any) -> types.CallToolResult:
    body: dict[str, Any] = {"error": message, "code": code, **extra}
    if field:
        body["field"] = field
    text = message if not field or field in message else f"{field}: {message}"
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=body, is_error=True)


def op_error_result(err: OpError, spec: ToolSpec | None = None) -> types.CallToolResult:
    """A refusal as an error result, naming the field as the tool spells it (identity, not id)."""
    if err.code == "unavailable":
        message = err.message if "pd start" in err.message else f"{err.message} ({DOWN_MESSAGE})"
        return error_result(message, "unavailable")
    field, message = err.field, err.message
    if spec is not None and field:
        tool_field = spec.op_field.get(field, field)
        if tool_field != field:
            message = (tool_field + message[len(field):]) if message.startswith(field + " ") else \
                f"{tool_field}: {message}"
            field = tool_field
    return error_result(message, err.code, field, **{k: v for k, v in err.extra.items() if k != "action"})


class PortDaddyMCP:
    """The tools, resources and remembered agent of one `pd mcp` process."""

    def __init__(self, config: Config, full: bool = False, link: DaemonLink | None = None) -> None:
        self.config = config
        self.full = full
        self.tools = build_tools()
        self.link = link or DaemonLink(config)
        self.agent_id: str | None = None
        self.session_id: str | None = None
        self.discovered: set[str] = set()  # categories pd_discover was asked for: listed from then on
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- listing --
    def listed(self) -> list[ToolSpec]:
        """The essential tools, plus every tool of a category pd_discover was asked for (all with --full)."""
        return [t for t in self.tools.values()
                if self.full or t.essential or not self.discovered.isdisjoint(t.categories)]

    async def list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name=t.name, description=t.description, input_schema=t.input_schema) for t in self.listed()
        ])

    def input_schema_of(self, name: str) -> Mapping[str, Any] | None:
        spec = self.tools.get(name)
        return None if spec is None else spec.input_schema

    # -- calling --
    async def call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        before = len(self.discovered)
        result = await self.call(params.name, dict(params.arguments or {}))
        if len(self.discovered) != before:  # clients list again, so calling those tools logs no "not listed"
            await ctx.session.send_tool_list_changed()
        return result

    async def call(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """Run one tool; never raises for a refusal or a daemon that is down."""
        spec = self.tools.get(name)
        if spec is None:
            return error_result(f"unknown tool {name!r}; call {DISCOVER} to list the tools of a category",
                                "unknown_tool", "name")
        known = spec.input_schema.get("properties", {})
        unknown = sorted(set(arguments) - set(known))
        if unknown:
            takes = ", ".join(known) or "no arguments"
            return error_result(f"{name} does not take {', '.join(unknown)}; it takes: {takes}",
                                "invalid_argument", unknown[0])
        if spec.name == DISCOVER:
            try:
                text, structured = discover(self.tools, arguments.get("category"))
            except ValueError as exc:
                return error_result(str(exc), "invalid_argument", "category")
            if arguments.get("category"):
                self.discovered.add(arguments["category"])
            return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)
        try:
            if spec.local == "fleet_init":
                return tool_result(await anyio.to_thread.run_sync(_fleet_init, arguments))
            if spec.parts:
                return tool_result(await self._composite(spec, arguments))
            return tool_result(await self._single(spec, arguments))
        except OpError as err:
            return op_error_result(err, spec)
        except Exception as exc:  # a front door reports, it does not crash the agent's session
            log.exception("tool %s failed", name)
            return error_result(f"{name} failed unexpectedly: {exc}", "internal")

    async def _single(self, spec: ToolSpec, arguments: dict[str, Any]) -> Any:
        assert spec.op is not None
        args = {spec.arg_map[k]: v for k, v in arguments.items() if v is not None}
        if self.agent_id and "sessionId" not in args:
            for op_arg in spec.fill:
                args.setdefault(op_arg, self.agent_id)
        result = await anyio.to_thread.run_sync(self.link.call, spec.op, args, abandon_on_cancel=True)
        self._remember(spec.op, result)
        return result

    async def _composite(self, spec: ToolSpec, arguments: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in spec.parts:
            args = {**part.fixed, **{k: arguments[k] for k in part.passes if arguments.get(k) is not None}}
            out[part.key] = await anyio.to_thread.run_sync(self.link.call, part.op, args, abandon_on_cancel=True)
        return out

    def _remember(self, op: str, result: Any) -> None:
        """Keep the agent begin_session made (and forget it at end_session_full)."""
        if not isinstance(result, dict):
            return
        if op == "sugar.begin":
            self.agent_id, self.session_id = result.get("agentId"), result.get("sessionId")
        elif op == "sugar.done" and result.get("agentId") == self.agent_id:
            self.session_id = None
            if result.get("agentUnregistered"):
                self.agent_id = None

    # -- resources --
    def resources(self) -> dict[str, tuple[str, dict[str, Any], str]]:
        return {uri: r for uri, r in RESOURCES.items() if r[0] in CATALOGUE}

    async def list_resources(self, ctx: Any, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[
            types.Resource(uri=uri, name=uri.split("://", 1)[1], description=desc, mime_type="application/json")
            for uri, (_, _, desc) in self.resources().items()
        ])

    async def read_resource(self, ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        entry = self.resources().get(uri)
        if entry is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown resource {uri}; resources: {', '.join(self.resources())}",
                           {"uri": uri})
        op, fixed, _ = entry
        try:
            value = await anyio.to_thread.run_sync(self.link.call, op, dict(fixed), abandon_on_cancel=True)
        except OpError as err:
            raise MCPError(types.INTERNAL_ERROR, err.message, {"uri": uri, "code": err.code}) from None
        return types.ReadResourceResult(contents=[
            types.TextResourceContents(uri=uri, mime_type="application/json", text=_text(value))
        ])

    # -- heartbeats for the remembered agent --
    def start_heartbeats(self, interval: float = HEARTBEAT_S) -> None:
        def beat() -> None:
            client = Client(self.config, connect_retry_s=0)
            try:
                while not self._stop.wait(interval):
                    if self.agent_id:
                        try:
                            client.fire(_HEARTBEAT_OP, id=self.agent_id)
                        except OpError:
                            pass
            finally:
                client.close()

        self._heartbeat = threading.Thread(target=beat, name="pd-mcp-heartbeat", daemon=True)
        self._heartbeat.start()

    def close(self) -> None:
        self._stop.set()
        self.link.close()

    # -- the SDK server --
    def server(self) -> Server:
        return Server(
            SERVER_NAME, version=pdcore.__version__, instructions=INSTRUCTIONS,
            get_tool_input_schema=self.input_schema_of,
            on_list_tools=self.list_tools, on_call_tool=self.call_tool,
            on_list_resources=self.list_resources, on_read_resource=self.read_resource,
        )


async def serve(app: PortDaddyMCP) -> None:
    """Serve MCP over this process's stdin/stdout until the client closes it."""
    server = app.server()
    app.start_heartbeats()
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream,
                             server.create_initialization_options(NotificationOptions(tools_changed=True)))
    finally:
        app.close()


def run(config: Config, full: bool = False) -> None:
    """Entry point of `pd mcp`: logs go to stderr, stdout belongs to the protocol."""
    logging.basicConfig(level=logging.WARNING, format="pd-mcp %(levelname)s %(name)s: %(message)s")
    anyio.run(serve, PortDaddyMCP(config, full=full or full_from_env()))


def _fleet_init(arguments: dict[str, Any]) -> dict[str, Any]:
    """What `pd fleet init` does, for the fleet_init tool (runs in the project, not the daemon)."""
    from pathlib import Path

    from fleet.project import init_project

    folder = Path(arguments.get("project_dir") or ".")
    try:
        result = init_project(folder, force=bool(arguments.get("force")), hook=arguments.get("hook", True))
    except ValueError as exc:
        raise OpError("invalid_argument", str(exc), "project_dir") from None
    return result.to_dict()
