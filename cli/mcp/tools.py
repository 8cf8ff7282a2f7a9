"""The MCP tools, built from the op catalogue: names, categories, input schemas, descriptions.

Every tool is one catalogue operation seen through MCP: its JSON input schema is built from the
op's `Arg` list and its description from the op's summary and reply fields, so a tool cannot
drift from the operation it calls. The "magic" tools (SPEC.md §13) are the same operations under
the names agents know (`claim_port` is `port.claim`), listed in ONE table, `MAGIC`; a magic tool
whose operation is not in the catalogue is not offered. Every other operation gets a plain tool
named after it (`port.get` -> `port_get`). Nothing here talks to the daemon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pdcore.ops import CATALOGUE, Arg, Op
from pdcore.ops.schema import NAME_RE, SEGMENT_RE

SERVER_NAME = "port-daddy"

# -- JSON Schema for one argument ---------------------------------------------------------------
_STR_MAX = 1024  # the catalogue's default bounds for str / text (pdcore.ops.schema._checker)
_TEXT_MAX = 1 << 20
_SEG = SEGMENT_RE.pattern[1:-1]  # a segment, 1-64 characters (the core's own pattern)
_PSEG = rf"(?:{_SEG}\*?|\*)"  # a pattern segment: the same, optionally ending in *, or a lone *
IDENTITY_PATTERN = f"^{_SEG}(?::{_SEG}){{0,2}}$"
IDPATTERN_PATTERN = f"^{_PSEG}(?::{_PSEG}){{0,2}}$"  # no lookarounds: clients' regex engines differ


def arg_schema(arg: Arg) -> dict[str, Any]:
    """The JSON Schema of one catalogue argument (type, bounds, pattern, choices, default, doc)."""
    t = arg.type
    schema: dict[str, Any] = {}
    if t in ("str", "text"):
        schema = {"type": "string", "maxLength": arg.max_len or (_STR_MAX if t == "str" else _TEXT_MAX)}
    elif t == "name":
        schema = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NAME_RE.pattern}
    elif t == "identity":
        schema = {"type": "string", "maxLength": 194, "pattern": IDENTITY_PATTERN}
    elif t == "idpattern":
        schema = {"type": "string", "maxLength": 197, "pattern": IDPATTERN_PATTERN}
    elif t in ("int", "float"):
        schema = {"type": "integer" if t == "int" else "number"}
        if arg.min is not None:
            schema["minimum"] = arg.min
        if arg.max is not None:
            schema["maximum"] = arg.max
    elif t == "bool":
        schema = {"type": "boolean"}
    elif t == "dict":
        schema = {"type": "object"}
        if arg.max_len is not None:
            schema["maxProperties"] = arg.max_len
    elif t == "list":
        schema = {"type": "array"}
        if arg.max_len is not None:
            schema["maxItems"] = arg.max_len
    # "any": no type; the description says what it takes
    if arg.choices is not None:
        schema["enum"] = list(arg.choices)
    if arg.default is not None:
        schema["default"] = arg.default
    doc = arg.doc or _TYPE_DOCS.get(t, "")
    if doc:
        schema["description"] = doc
    return schema


_TYPE_DOCS = {
    "identity": "semantic identity project[:stack[:context]], e.g. myapp:api:main",
    "idpattern": "identity or pattern with * as a segment or a segment suffix (myapp:*, my*)",
    "name": "1-200 characters of A-Z a-z 0-9 . _ : / @ * -",
    "any": "any JSON value",
}


def input_schema(op: Op, renames: dict[str, str] | None = None, hide: tuple[str, ...] = (),
                 require: tuple[str, ...] = ()) -> dict[str, Any]:
    """The tool input schema of `op`: op arg names renamed by `renames` (op arg -> tool arg)."""
    renames = renames or {}
    props: dict[str, Any] = {}
    required: list[str] = []
    for arg in op.args:
        if arg.name in hide:
            continue
        name = renames.get(arg.name, arg.name)
        props[name] = arg_schema(arg)
        if arg.required or name in require:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


# -- categories (pd_discover) -------------------------------------------------------------------
CATEGORIES: dict[str, str] = {
    "magic": "one call does several things: start here",
    "session-lifecycle": "begin and end work, say who you are, catch up",
    "ports": "deterministic ports for semantic identities",
    "sessions": "sessions, phases and advisory file claims",
    "notes": "immutable, encrypted breadcrumbs",
    "locks": "hard mutual exclusion with fencing tokens",
    "messaging": "pub/sub channels",
    "agents": "agent registration, heartbeats and salvage of dead agents' work",
    "inbox": "durable direct messages between agents",
    "webhooks": "signed HTTP callbacks on events",
    "integration": "ready / needs signals between services",
    "dns": "DNS names for services",
    "briefing": "a markdown snapshot of a project for an arriving agent",
    "tunnels": "public tunnels to local services",
    "projects": "the projects registry",
    "changelog": "changelog entries",
    "activity": "the log of every state change",
    "system": "daemon health, version, metrics, config, waiting for services",
    "tuples": "Linda tuple space: shared typed memory and work queues",
    "pheromone": "decaying signals and the file heat map",
    "harbors": "named namespaces with members and capabilities",
    "fleet": "background agents: spawn, fleets",
    "arbiter": "invariant checks and recorded violations",
}

# Op name (exact) first, then the prefix before the first dot.
_CATEGORY_OF_OP = {"session.notes": "notes", "heartbeat": "agents", "sitrep": "session-lifecycle"}
_CATEGORY_OF_PREFIX = {
    "sugar": "session-lifecycle", "port": "ports", "session": "sessions", "files": "sessions",
    "note": "notes", "lock": "locks", "msg": "messaging", "agent": "agents", "salvage": "agents",
    "inbox": "inbox", "webhook": "webhooks", "integration": "integration", "dns": "dns",
    "briefing": "briefing", "tunnel": "tunnels", "project": "projects", "changelog": "changelog",
    "activity": "activity", "daemon": "system", "wait": "system", "service": "system", "tuple": "tuples",
    "pheromone": "pheromone", "harbor": "harbors", "fleet": "fleet", "spawn": "fleet", "arbiter": "arbiter",
}


def category_of(op_name: str) -> str:
    """The pd_discover category of an operation; an unknown prefix is its own category."""
    if op_name in _CATEGORY_OF_OP:
        return _CATEGORY_OF_OP[op_name]
    prefix = op_name.split(".", 1)[0]
    return _CATEGORY_OF_PREFIX.get(prefix, prefix)


# -- the magic table -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Magic:
    """A tool agents know by name, mapped to one catalogue operation.

    `ops`: candidate op names, the first one in the catalogue wins (ops still being written may
    land under either name); `renames`: op arg -> tool arg, on top of camelCase -> snake_case;
    `fill`: op args the server fills from the agent it remembers (after begin_session) when the
    caller gives none of them; `essential`: listed by default.
    """

    name: str
    ops: tuple[str, ...]
    when: str
    renames: dict[str, str] = field(default_factory=dict)
    hide: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    fill: tuple[str, ...] = ()
    essential: bool = True


@dataclass(frozen=True)
class Composite:
    """A magic tool that only reads: several read ops, their replies side by side under `parts` keys.

    Each part is (key, op name, fixed args). The tool's arguments are `args`, each passed to every
    part whose op declares it; their schema is taken from the first op that declares them.
    """

    name: str
    parts: tuple[tuple[str, str, dict[str, Any]], ...]
    args: tuple[str, ...]
    summary: str
    when: str
    essential: bool = True


MAGIC: tuple[Magic | Composite, ...] = (
    Magic("begin_session", ("sugar.begin",),
          "at the start of any task: registers you as an agent, starts your session and claims your files in "
          "one step. Later calls (add_note, whoami, end_session_full, acquire_lock) then know who you are.",
          fill=("agentId",)),
    Magic("end_session_full", ("sugar.done",),
          "when your task is done (status completed) or you give it up (status abandoned): writes the "
          "closing note, ends the session, releases its file claims and unregisters you.",
          fill=("agentId",)),
    Magic("whoami", ("sugar.whoami",), "to check which agent and session you are and what you hold.",
          fill=("agentId",)),
    Magic("catch_me_up", ("sitrep",),
          "when you arrive or come back: what happened recently (sessions, notes, dead agents, salvage, "
          "file conflicts, activity)."),
    Magic("sitrep", ("sitrep",), "same as catch_me_up (the CLI's name).", essential=False),
    Composite("swarm_awareness",
              (("agents", "agent.list", {"active": True}), ("sessions", "session.list", {"status": "active"}),
               ("fileClaims", "files.list", {})),
              ("project",),
              "Who else is working here: live agents, active sessions and every file claim.",
              "before touching shared files, or when a file claim reports a conflict."),
    Magic("file_heat", ("pheromone.files",),
          "to see which files and folders agents are fighting over before you edit them."),
    Magic("talk_to_agent", ("inbox.send",),
          "to send a direct message to one agent (kept in its inbox until cleared); a fleet agent may be "
          "named bare (qa for myapp:fleet:qa): the reply's agentId says who got it. Use messaging for "
          "broadcasts.",
          renames={"id": "agent_id"}, hide=("message",), require=("content",), fill=("from",)),
    Magic("claim_port", ("port.claim",),
          "whenever you start a service: the same identity always gets the same port, on every machine.",
          renames={"id": "identity"}),
    Magic("release_port", ("port.release",), "when a service stops for good, to free its port.",
          renames={"id": "identity"}),
    Magic("list_services", ("port.list",), "to find which services run where (pattern myapp:*)."),
    Magic("add_note", ("note.quick",),
          "to leave a breadcrumb others (and you, later) can trust: progress, decision, blocker, "
          "question, handoff. Notes can never be edited or deleted.",
          fill=("agentId",)),
    Magic("acquire_lock", ("lock.acquire",),
          "for hard mutual exclusion around a critical section (migrations, deploys, shared files); "
          "advisory file claims are for negotiation, locks are for safety. Without ttl the lock lasts "
          "as long as this MCP server's connection to the daemon.",
          fill=("owner",)),
    Magic("release_lock", ("lock.release",),
          "when your critical section is over; the owner defaults as in acquire_lock (your agent).",
          fill=("owner",), essential=False),
    Magic("spawn_agent", ("spawn.start", "spawn.create", "spawn"),
          "to hand a task to a background AI agent that runs on its own."),
    Magic("fleet_status", ("fleet.list",), "to see the background agents, their fleets and their runs."),
)

# Plain tools keep the op name with dots -> underscores, except the names the seed made known.
PLAIN_NAMES = {"tuple.rd": "tuple_read", "tuple.in": "tuple_take", "files.who_owns": "who_owns_file",
               "service.wait": "wait_for_service"}

DISCOVER = "pd_discover"
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake(name: str) -> str:
    """agentId -> agent_id."""
    return _CAMEL.sub(r"_\1", name).lower()


def plain_name(op_name: str) -> str:
    """The plain tool name of an operation."""
    return PLAIN_NAMES.get(op_name, op_name.replace(".", "_").replace("-", "_"))


# -- the built tools -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    key: str
    op: str
    fixed: dict[str, Any]
    passes: tuple[str, ...]  # tool args this op declares


@dataclass(frozen=True)
class ToolSpec:
    """One MCP tool: what the server lists and how a call becomes operation calls."""

    name: str
    description: str
    input_schema: dict[str, Any]
    categories: tuple[str, ...]
    essential: bool
    op: str | None = None  # the operation (None for composites and pd_discover)
    arg_map: dict[str, str] = field(default_factory=dict)  # tool arg -> op arg
    fill: tuple[str, ...] = ()  # op args filled from the remembered agent
    parts: tuple[Part, ...] = ()
    local: str | None = None  # a project-side action run by the MCP server itself (like the CLI's)

    def signature(self) -> str:
        """`claim_port(identity*, port, ...)`: the arguments at a glance, * = required."""
        required = set(self.input_schema.get("required", ()))
        args = [f"{n}{'*' if n in required else ''}" for n in self.input_schema.get("properties", {})]
        return f"{self.name}({', '.join(args)})"

    @property
    def op_field(self) -> dict[str, str]:
        """op arg -> tool arg, to name a refused field the way the caller spelled it."""
        return {v: k for k, v in self.arg_map.items()}


# Writing pd-fleet.yml and the git hook is done in the project, not by the daemon (as `pd fleet
# init` does): the MCP server runs it itself. It is the one tool that is not an operation.
FLEET_INIT = ToolSpec(
    name="fleet_init",
    description=("Set up a fleet of background agents in a project folder: writes a starter pd-fleet.yml "
                 "(its name is the folder's name) and installs the git post-commit hook that publishes "
                 "git:committed.\nUse it: once per project, before `pd fleet up`.\nReturns: {projectDir, file, "
                 "fileAction, hook, hookAction, notes}."),
    input_schema={"type": "object", "additionalProperties": False, "properties": {
        "project_dir": {"type": "string", "description": "the project folder (default: the server's folder)"},
        "force": {"type": "boolean", "description": "overwrite an existing pd-fleet.yml"},
        "hook": {"type": "boolean", "description": "install the git post-commit hook (default true)"}}},
    categories=("magic", "fleet"), essential=True, local="fleet_init")


def describe(op: Op, when: str | None = None, category: str | None = None) -> str:
    """What the tool does, when to use it, what it returns; from the op's summary and reply."""
    lines = [op.summary]
    if when:
        lines.append(f"Use it {when}")
    elif category in CATEGORIES:
        lines.append(f"Area: {category} ({CATEGORIES[category]}).")
    if op.parks:
        lines.append("It may wait in the daemon for up to `wait` ms (no polling).")
    if op.reply:
        lines.append(f"Returns: {', '.join(op.reply)}.")
    if op.errors:
        lines.append(f"Refusals: {', '.join(op.errors)}; each names the field and the fix.")
    return "\n".join(lines)


def _magic_spec(m: Magic, catalogue: dict[str, Op]) -> ToolSpec | None:
    op = next((catalogue[name] for name in m.ops if name in catalogue), None)
    if op is None:
        return None
    renames = {a.name: m.renames.get(a.name, snake(a.name)) for a in op.args if a.name not in m.hide}
    return ToolSpec(
        name=m.name, description=describe(op, m.when), essential=m.essential, op=op.name,
        input_schema=input_schema(op, renames, m.hide, m.require),
        categories=("magic", category_of(op.name)),
        arg_map={tool: op_arg for op_arg, tool in renames.items()},
        fill=tuple(f for f in m.fill if any(a.name == f for a in op.args)),
    )


def _composite_spec(c: Composite, catalogue: dict[str, Op]) -> ToolSpec | None:
    if any(op_name not in catalogue for _, op_name, _ in c.parts):
        return None
    props: dict[str, Any] = {}
    parts = []
    for key, op_name, fixed in c.parts:
        op = catalogue[op_name]
        declared = {a.name: a for a in op.args}
        for name in c.args:
            if name in declared and name not in props:
                props[name] = arg_schema(declared[name])
        parts.append(Part(key, op_name, fixed, tuple(n for n in c.args if n in declared)))
    keys = ", ".join(key for key, _, _ in c.parts)
    description = f"{c.summary}\nUse it {c.when}\nReturns: {keys} (each as its own list operation returns it)."
    return ToolSpec(name=c.name, description=description, essential=c.essential, categories=("magic",),
                    input_schema={"type": "object", "properties": props, "additionalProperties": False},
                    parts=tuple(parts))


def _discover_spec(categories: list[str]) -> ToolSpec:
    return ToolSpec(
        name=DISCOVER, essential=True, categories=("magic",),
        description="List the tools of a category, with their arguments (* = required). Every tool listed is "
                    "callable even when your client did not list it. Use it when the tool you need is not in "
                    "your list. Without a category: the categories and how many tools each has.\n"
                    f"Categories: {', '.join(categories)}.",
        input_schema={"type": "object", "additionalProperties": False, "properties": {
            "category": {"type": "string", "enum": categories, "description": "the category to list"}}},
    )


def build_tools(catalogue: dict[str, Op] | None = None) -> dict[str, ToolSpec]:
    """Every tool, by name: the magic ones, pd_discover, then one plain tool per remaining op.

    An op that a single-op magic tool stands for gets no plain tool of its own (the magic tool is
    listed in the op's category too), so each operation is reachable once by its best name.
    """
    catalogue = CATALOGUE if catalogue is None else catalogue
    tools: dict[str, ToolSpec] = {}
    covered: set[str] = set()
    for m in MAGIC:
        spec = _magic_spec(m, catalogue) if isinstance(m, Magic) else _composite_spec(m, catalogue)
        if spec is not None:
            tools[spec.name] = spec
            if spec.op:
                covered.add(spec.op)
    names = list(CATEGORIES) + sorted({category_of(n) for n in catalogue} - set(CATEGORIES))
    tools[DISCOVER] = _discover_spec(names)
    tools[FLEET_INIT.name] = FLEET_INIT
    for op in catalogue.values():
        if op.name in covered:
            continue
        name = plain_name(op.name)
        if name in tools:  # a magic name took it: keep the op callable under a distinct name
            name = f"{name}_op"
        category = category_of(op.name)
        tools[name] = ToolSpec(
            name=name, description=describe(op, category=category), essential=False, op=op.name,
            input_schema=input_schema(op), categories=(category,), arg_map={a.name: a.name for a in op.args},
        )
    return tools


def category_names(tools: dict[str, ToolSpec]) -> list[str]:
    """The SPEC's categories in order, then any a newer catalogue brought."""
    extra = sorted({c for t in tools.values() for c in t.categories} - set(CATEGORIES))
    return list(CATEGORIES) + extra


def discover(tools: dict[str, ToolSpec], category: str | None) -> tuple[str, dict[str, Any]]:
    """pd_discover's answer as (text, structured) for one category, or the list of categories.

    Raises ValueError for a category that does not exist.
    """
    names = category_names(tools)
    if not category:
        counts = {c: sum(1 for t in tools.values() if c in t.categories) for c in names}
        lines = [f"{c}: {counts[c] or 'none available in this version'} - {CATEGORIES.get(c, '')}".rstrip(" -")
                 for c in names]
        return "Categories (call pd_discover with one):\n" + "\n".join(lines), {"categories": counts}
    if category not in names:
        raise ValueError(f"unknown category {category!r}; categories: {', '.join(names)}")
    members = [t for t in tools.values() if category in t.categories]
    if not members:
        text = f"{category}: none available in this version."
        return text, {"category": category, "tools": []}
    lines = [f"- {t.signature()}: {t.description.splitlines()[0]}" for t in members]
    listed = [{"name": t.name, "signature": t.signature(), "description": t.description,
               "inputSchema": t.input_schema} for t in members]
    return f"{category} ({CATEGORIES.get(category, '')}):\n" + "\n".join(lines), {"category": category,
                                                                               "tools": listed}
