"""pd-fleet.yml: finding it, reading it, and validating every key (SPEC.md §11).

Validation collects every problem instead of stopping at the first, and each problem names the
key at fault and the fix (`agents.qa.backend: unknown backend 'claud'. Fix: use one of ...`).
Errors stop `pd fleet up`; warnings are printed and do not.
"""

from __future__ import annotations

import difflib
import graphlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleet import backends
from fleet.triggers import Trigger, channel_matches_name, cron_problem, parse_trigger
from fleet.variables import HARBOR_VARS, IDENTITY_VARS, RUN_VARS, render, unknown_variables
from pdcore.errors import OpError
from pdcore.ops.schema import NAME_RE, check_identity

FLEET_FILES = ("pd-fleet.yml", "pd-fleet.yaml", ".portdaddy/fleet.yml", ".portdaddy/fleet.yaml")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PUBLISH_RE = re.compile(r"^publish\s+(\S+)\s*$")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

FLEET_KEYS = ("name", "harbor", "limits", "agents", "watchers", "channels", "description", "version")
LIMIT_KEYS = ("max_concurrent_spawns", "max_spawns_per_hour")
AGENT_KEYS = ("trigger", "schedule", "backend", "model", "prompt", "allowedTools", "cwd", "env", "timeout",
              "enabled", "run_on_start", "singleton", "respawn", "max_respawns", "on_success", "on_failure",
              "identity", "description", "files")
WATCHER_KEYS = ("trigger", "exec", "cwd", "env", "timeout", "enabled", "description")
CHANNEL_KEYS = ("description", "consumers")
DEFAULT_HARBOR = "{project}:fleet"
DEFAULT_MAX_RESPAWNS = 3


@dataclass
class Problem:
    """One thing wrong with a fleet file: the key, what is wrong, how to fix it."""

    key: str
    message: str
    fix: str = ""
    level: str = "error"  # error | warning

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" + (f". Fix: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict:
        return {"key": self.key, "message": self.message, "fix": self.fix, "level": self.level}


@dataclass
class AgentSpec:
    """One agent (or watcher) of a fleet, with defaults applied. Templates are not filled yet."""

    name: str
    prompt: str
    kind: str = "agent"  # agent | watcher
    trigger: Trigger | None = None
    schedule: str | None = None
    backend: str = "claude-cli"
    model: str | None = None
    allowed_tools: str | None = None
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    enabled: bool = True
    run_on_start: bool = False
    singleton: bool = False
    respawn: bool = False
    max_respawns: int = DEFAULT_MAX_RESPAWNS
    on_success: str | None = None  # fleet-local channel
    on_failure: str | None = None
    identity: str = ""
    description: str | None = None
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"name": self.name, "kind": self.kind, "trigger": self.trigger.text if self.trigger else None,
                "schedule": self.schedule, "backend": self.backend, "model": self.model, "enabled": self.enabled,
                "singleton": self.singleton, "respawn": self.respawn, "maxRespawns": self.max_respawns,
                "onSuccess": self.on_success, "onFailure": self.on_failure, "identity": self.identity}


@dataclass
class ChannelSpec:
    name: str
    description: str | None = None
    consumers: list[str] = field(default_factory=list)


@dataclass
class FleetSpec:
    """A validated fleet."""

    name: str
    project_dir: Path
    file: Path
    harbor: str
    agents: dict[str, AgentSpec] = field(default_factory=dict)
    watchers: dict[str, AgentSpec] = field(default_factory=dict)
    channels: dict[str, ChannelSpec] = field(default_factory=dict)
    max_concurrent_spawns: int | None = None
    max_spawns_per_hour: int | None = None
    description: str | None = None

    def programs(self) -> list[AgentSpec]:
        """Agents then watchers: everything the runner runs."""
        return [*self.agents.values(), *self.watchers.values()]


@dataclass
class LoadResult:
    """What `load_fleet` found: the spec (None when there are errors) and every problem."""

    file: Path | None
    project_dir: Path
    spec: FleetSpec | None
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return self.spec is not None and not self.errors


# -- finding the file ----------------------------------------------------------------------
def find_fleet_file(project_dir: Path) -> Path | None:
    """The fleet file of a project folder: the first of FLEET_FILES that exists."""
    for name in FLEET_FILES:
        path = project_dir / name
        if path.is_file():
            return path
    return None


def project_dir_of(file: Path) -> Path:
    """The project folder a fleet file belongs to (`.portdaddy/fleet.yml` -> its parent's parent)."""
    file = file.resolve()
    return file.parent.parent if file.parent.name == ".portdaddy" else file.parent


def find_project(start: Path) -> Path | None:
    """The nearest folder at or above `start` holding a fleet file."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if find_fleet_file(folder) is not None:
            return folder
    return None


def parse_duration_s(value: Any) -> float:
    """A timeout: a number of seconds, or text such as 90s, 10m, 1h, 500ms."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = DURATION_RE.match(str(value))
        if not m:
            raise ValueError
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError
    return seconds


# -- validation ----------------------------------------------------------------------------
class _Checker:
    def __init__(self, project_dir: Path) -> None:
        self.project_dir = project_dir
        self.problems: list[Problem] = []

    def error(self, key: str, message: str, fix: str = "") -> None:
        self.problems.append(Problem(key, message, fix))

    def warn(self, key: str, message: str, fix: str = "") -> None:
        self.problems.append(Problem(key, message, fix, "warning"))

    def unknown_keys(self, where: str, data: dict, known: tuple[str, ...]) -> None:
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                fix = f"did you mean {close[0]!r}?" if close else f"remove it (known keys: {', '.join(known)})"
                self.error(f"{where}{key}", "unknown key", fix)

    def text(self, key: str, value: Any, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.error(key, "is required", "add it")
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.error(key, f"must be text, not {type(value).__name__}", "quote it")
            return None
        if required and not value.strip():
            self.error(key, "is empty", "write it")
            return None
        return value

    def boolean(self, key: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, not {value!r}", "write true or false")
            return default
        return value

    def count(self, key: str, value: Any, default: int | None, minimum: int) -> int | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.error(key, f"must be a whole number >= {minimum}, not {value!r}", f"write a number like {max(minimum, 3)}")
            return default
        return value

    def template(self, key: str, text: str, allowed: frozenset[str], where: str) -> None:
        for var in unknown_variables(text, allowed):
            close = difflib.get_close_matches(var, sorted(allowed), n=1)
            hint = f"did you mean {{{close[0]}}}? " if close else ""
            self.error(key, f"unknown template variable {{{var}}}",
                       f"{hint}{where} may use {', '.join('{' + v + '}' for v in sorted(allowed))}; "
                       f"write {{{{ and }}}} for literal braces")

    def publish(self, key: str, value: Any) -> str | None:
        text = self.text(key, value)
        if text is None:
            return None
        m = PUBLISH_RE.match(text.strip())
        if not m or not NAME_RE.match(m.group(1)) or "*" in m.group(1):
            self.error(key, f"{text!r} is not an action", 'write "publish CHANNEL" (e.g. publish qa:done)')
            return None
        return m.group(1)

    def env(self, key: str, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(key, "must be a mapping of NAME: value", "write env: {NAME: value}")
            return {}
        out = {}
        for name, v in value.items():
            if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                self.error(f"{key}.{name}", "is not an environment variable name", "use letters, digits and _")
                continue
            if isinstance(v, bool):
                v = "1" if v else "0"
            if not isinstance(v, (str, int, float)):
                self.error(f"{key}.{name}", "must be text", "quote it")
                continue
            out[name] = str(v)
            self.template(f"{key}.{name}", str(v), RUN_VARS, "env values")
        return out

    def timeout(self, key: str, value: Any) -> float | None:
        if value is None:
            return None
        try:
            return parse_duration_s(value)
        except ValueError:
            self.error(key, f"{value!r} is not a duration", "write seconds (600) or 90s, 10m, 1h")
            return None


def _merge_fleet_root(data: dict, c: _Checker) -> dict:
    """Keys sit under `fleet:` or at the root; both are merged (the same key twice is an error)."""
    if "fleet" not in data:
        return data
    inner = data.get("fleet")
    if not isinstance(inner, dict):
        c.error("fleet", "must be a mapping", "put name, harbor, agents ... under fleet:")
        return {}
    merged = dict(inner)
    for key, value in data.items():
        if key == "fleet":
            continue
        if key in merged:
            c.error(key, "is given both under fleet: and at the root", "keep one of them")
            continue
        merged[key] = value
    return merged


def _agent(c: _Checker, fleet_name: str, harbor: str, name: str, raw: Any) -> AgentSpec | None:
    key = f"agents.{name}"
    if not SEGMENT_RE.match(name):
        c.error(key, "an agent name is 1-64 characters of A-Z a-z 0-9 . _ -", "rename the agent")
        return None
    if not isinstance(raw, dict):
        c.error(key, "must be a mapping of settings", "give it at least trigger (or schedule) and prompt")
        return None
    c.unknown_keys(f"{key}.", raw, AGENT_KEYS)
    prompt = c.text(f"{key}.prompt", raw.get("prompt"), required=True) or ""
    spec = AgentSpec(name=name, prompt=prompt)
    if prompt:
        c.template(f"{key}.prompt", prompt, RUN_VARS, "a prompt")
    if raw.get("trigger") is not None:
        try:
            spec.trigger = parse_trigger(raw.get("trigger"))
        except ValueError as exc:
            c.error(f"{key}.trigger", str(exc), 'use a channel such as git:committed, or tuple:["task", "*"]')
    if raw.get("schedule") is not None:
        problem = cron_problem(raw.get("schedule"))
        if problem:
            c.error(f"{key}.schedule", problem, 'write five fields, e.g. "*/10 * * * *" (every 10 minutes)')
        else:
            spec.schedule = raw["schedule"].strip()
    spec.run_on_start = c.boolean(f"{key}.run_on_start", raw.get("run_on_start"), False)
    if raw.get("trigger") is None and raw.get("schedule") is None and not spec.run_on_start:
        c.error(key, "has neither trigger nor schedule, so it never runs",
                "add trigger: git:committed, or schedule: \"0 * * * *\", or run_on_start: true")
    backend = c.text(f"{key}.backend", raw.get("backend")) or "claude-cli"
    try:
        spec.backend = backends.normalize_backend(backend)
    except OpError:
        close = difflib.get_close_matches(backend, backends.BACKENDS, n=1)
        c.error(f"{key}.backend", f"unknown backend {backend!r}",
                (f"did you mean {close[0]!r}? " if close else "") + f"use one of {', '.join(backends.BACKENDS)}")
    spec.model = c.text(f"{key}.model", raw.get("model"))
    if spec.model:
        c.template(f"{key}.model", spec.model, RUN_VARS, "model")
    if spec.backend in backends.NEEDS_MODEL and not spec.model:
        c.error(f"{key}.model", f"is required for backend {spec.backend}", "add model: llama3.2 (any model you pulled)")
    tools = raw.get("allowedTools")
    if isinstance(tools, list) and all(isinstance(t, str) for t in tools):
        tools = ",".join(tools)
    spec.allowed_tools = c.text(f"{key}.allowedTools", tools)
    if spec.allowed_tools and spec.backend not in backends.TAKES_ALLOWED_TOOLS:
        c.warn(f"{key}.allowedTools", f"backend {spec.backend} does not take an allowed-tools list; it is ignored",
               "remove it, or use backend claude-cli")
    spec.cwd = c.text(f"{key}.cwd", raw.get("cwd"))
    if spec.cwd:
        c.template(f"{key}.cwd", spec.cwd, RUN_VARS, "cwd")
    spec.env = c.env(f"{key}.env", raw.get("env"))
    spec.timeout_s = c.timeout(f"{key}.timeout", raw.get("timeout"))
    spec.enabled = c.boolean(f"{key}.enabled", raw.get("enabled"), True)
    spec.singleton = c.boolean(f"{key}.singleton", raw.get("singleton"), False)
    spec.respawn = c.boolean(f"{key}.respawn", raw.get("respawn"), False)
    spec.max_respawns = c.count(f"{key}.max_respawns", raw.get("max_respawns"), DEFAULT_MAX_RESPAWNS, 0) or 0
    spec.on_success = c.publish(f"{key}.on_success", raw.get("on_success"))
    spec.on_failure = c.publish(f"{key}.on_failure", raw.get("on_failure"))
    spec.description = c.text(f"{key}.description", raw.get("description"))
    files = raw.get("files")
    if files is not None:
        if isinstance(files, list) and all(isinstance(f, str) for f in files):
            spec.files = files
        else:
            c.error(f"{key}.files", "must be a list of paths", "write files: [src/app.py]")
    identity = c.text(f"{key}.identity", raw.get("identity"))
    values = {"project": fleet_name, "project_dir": str(c.project_dir), "harbor": harbor, "fleet": fleet_name,
              "agent": name}
    if identity:
        c.template(f"{key}.identity", identity, IDENTITY_VARS, "an identity")
        spec.identity = render(identity, values)
    else:
        spec.identity = f"{fleet_name}:fleet:{name}"
    try:
        check_identity(spec.identity, "identity")
    except OpError:
        c.error(f"{key}.identity", f"{spec.identity!r} is not an identity",
                "write project[:stack[:context]], each part 1-64 of A-Z a-z 0-9 . _ -")
    if spec.enabled and spec.backend in backends.EXECUTABLES:
        exe = backends.EXECUTABLES[spec.backend]
        if shutil.which(exe) is None:
            c.warn(f"{key}.backend", f"{exe} is not on PATH here, so its runs will fail",
                   f"install {exe}, or use another backend")
    return spec


def _watcher(c: _Checker, name: str, raw: Any) -> AgentSpec | None:
    key = f"watchers.{name}"
    if not SEGMENT_RE.match(name):
        c.error(key, "a watcher name is 1-64 characters of A-Z a-z 0-9 . _ -", "rename the watcher")
        return None
    if not isinstance(raw, dict):
        c.error(key, "must be a mapping with trigger and exec", "write {trigger: CHANNEL, exec: COMMAND}")
        return None
    c.unknown_keys(f"{key}.", raw, WATCHER_KEYS)
    command = c.text(f"{key}.exec", raw.get("exec"), required=True) or ""
    if command:
        c.template(f"{key}.exec", command, RUN_VARS, "exec")
    spec = AgentSpec(name=name, prompt=command, kind="watcher", backend="custom")
    if raw.get("trigger") is None:
        c.error(f"{key}.trigger", "is required", "add trigger: CHANNEL")
    else:
        try:
            spec.trigger = parse_trigger(raw["trigger"])
        except ValueError as exc:
            c.error(f"{key}.trigger", str(exc), "use a channel such as git:committed")
    spec.cwd = c.text(f"{key}.cwd", raw.get("cwd"))
    spec.env = c.env(f"{key}.env", raw.get("env"))
    spec.timeout_s = c.timeout(f"{key}.timeout", raw.get("timeout"))
    spec.enabled = c.boolean(f"{key}.enabled", raw.get("enabled"), True)
    spec.description = c.text(f"{key}.description", raw.get("description"))
    return spec


def _cycle(agents: dict[str, AgentSpec]) -> list[str] | None:
    """A chain of on_success/on_failure publications that comes back to where it started, or None."""
    edges: dict[str, list[str]] = {}
    for a in agents.values():
        targets = []
        for channel in (a.on_success, a.on_failure):
            if channel:
                targets += [b.name for b in agents.values() if b.trigger and channel_matches_name(b.trigger, channel)]
        edges[a.name] = sorted(set(targets))
    try:  # graphlib reads edges as "depends on"; reversed, its cycle follows the publications
        graphlib.TopologicalSorter({a: edges[a] for a in sorted(edges)}).prepare()
    except graphlib.CycleError as exc:
        return list(reversed(exc.args[1]))
    return None


def validate_data(data: Any, project_dir: Path, file: Path) -> tuple[FleetSpec | None, list[Problem]]:
    """Validate parsed YAML; return the spec (None when there are errors) and every problem."""
    c = _Checker(project_dir)
    if not isinstance(data, dict):
        c.error("(file)", "must be a YAML mapping with name, harbor and agents", "see pd fleet init's starter file")
        return None, c.problems
    data = _merge_fleet_root(data, c)
    c.unknown_keys("", data, FLEET_KEYS)
    folder = project_dir.name
    name = c.text("name", data.get("name"))
    if name is None:
        c.error("name", "is required", f"add name: {folder} (the project folder's name)")
        name = folder
    elif name != folder:
        c.error("name", f"{name!r} must equal the project folder's name {folder!r} (fleets are matched to "
                        "projects by folder, so a different name never fires)", f"set name: {folder}")
    if not SEGMENT_RE.match(folder):
        c.error("name", f"the project folder's name {folder!r} is not usable in identities",
                "rename the folder to 1-64 characters of A-Z a-z 0-9 . _ -")
    harbor_template = c.text("harbor", data.get("harbor")) or DEFAULT_HARBOR
    c.template("harbor", harbor_template, HARBOR_VARS, "harbor")
    harbor = render(harbor_template, {"project": name, "project_dir": str(project_dir), "fleet": name})
    if not NAME_RE.match(harbor) or "*" in harbor:
        c.error("harbor", f"{harbor!r} is not a harbor name", 'write something like "{project}:fleet"')
    spec = FleetSpec(name=name, project_dir=project_dir, file=file, harbor=harbor,
                     description=c.text("description", data.get("description")))
    limits = data.get("limits")
    if limits is not None:
        if not isinstance(limits, dict):
            c.error("limits", "must be a mapping", "write limits: {max_concurrent_spawns: 3}")
        else:
            c.unknown_keys("limits.", limits, LIMIT_KEYS)
            spec.max_concurrent_spawns = c.count("limits.max_concurrent_spawns", limits.get("max_concurrent_spawns"),
                                                 None, 1)
            spec.max_spawns_per_hour = c.count("limits.max_spawns_per_hour", limits.get("max_spawns_per_hour"),
                                               None, 1)
    agents, watchers = data.get("agents"), data.get("watchers")
    if not agents and not watchers:  # watchers run on their own, so a watchers-only fleet does something
        c.warn("agents", "no agents or watchers are declared, so the fleet does nothing",
               "add agents (see pd fleet init) or watchers")
    if agents is not None and not isinstance(agents, dict):
        c.error("agents", "must be a mapping of agent name to settings", "write agents: {qa: {...}}")
    elif agents:
        for agent_name, raw in agents.items():
            agent = _agent(c, name, harbor, str(agent_name), raw)
            if agent is not None:
                spec.agents[agent.name] = agent
    if watchers is not None:
        if not isinstance(watchers, dict):
            c.error("watchers", "must be a mapping of watcher name to {trigger, exec}", "")
        else:
            for watcher_name, raw in watchers.items():
                watcher = _watcher(c, str(watcher_name), raw)
                if watcher is None:
                    continue
                if watcher.name in spec.agents:
                    c.error(f"watchers.{watcher.name}", "has the name of an agent", "rename one of them")
                    continue
                spec.watchers[watcher.name] = watcher
    channels = data.get("channels")
    if channels is not None:
        if not isinstance(channels, dict):
            c.error("channels", "must be a mapping of channel name to {description, consumers}", "")
        else:
            for channel_name, raw in channels.items():
                _channel(c, spec, str(channel_name), raw)
    for agent in spec.agents.values():
        for which, channel in (("on_success", agent.on_success), ("on_failure", agent.on_failure)):
            if channel and spec.channels and channel not in spec.channels:
                c.warn(f"agents.{agent.name}.{which}", f"publishes {channel}, which channels: does not declare",
                       f"add {channel} under channels: with its consumers")
    loop = _cycle(spec.agents)
    if loop:
        c.error("agents", f"on_success/on_failure chains form a cycle: {' -> '.join(loop)} (it would run forever)",
                f"break the chain: change the on_success of {loop[-2]} or the trigger of {loop[-1]}")
    errors = [p for p in c.problems if p.level == "error"]
    return (None if errors else spec), c.problems


def _channel(c: _Checker, spec: FleetSpec, name: str, raw: Any) -> None:
    key = f"channels.{name}"
    if not NAME_RE.match(name):
        c.error(key, "is not a channel name", "use A-Z a-z 0-9 . _ : / @ -")
        return
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        c.error(key, "must be a mapping with description and consumers", "")
        return
    c.unknown_keys(f"{key}.", raw, CHANNEL_KEYS)
    consumers = raw.get("consumers") or []
    if not isinstance(consumers, list) or not all(isinstance(x, str) for x in consumers):
        c.error(f"{key}.consumers", "must be a list of agent names", "write consumers: [qa]")
        consumers = []
    programs = {**spec.agents, **spec.watchers}
    for consumer in consumers:
        program = programs.get(consumer)
        if program is None:
            c.error(f"{key}.consumers", f"{consumer!r} is not an agent or watcher of this fleet",
                    f"use one of {', '.join(sorted(programs)) or '(none declared)'}")
        elif program.trigger is None or not channel_matches_name(program.trigger, name):
            c.warn(f"{key}.consumers", f"{consumer} does not have trigger: {name}, so it will not hear it",
                   f"set agents.{consumer}.trigger: {name}")
    spec.channels[name] = ChannelSpec(name, c.text(f"{key}.description", raw.get("description")), list(consumers))


def load_fleet(path: Path | str) -> LoadResult:
    """Read and validate the fleet file of a project folder (or a fleet file given directly)."""
    path = Path(path).expanduser()
    if path.is_dir():
        project_dir = path.resolve()
        file = find_fleet_file(project_dir)
        if file is None:
            return LoadResult(None, project_dir, None, [Problem(
                "(file)", f"no fleet file in {project_dir} (looked for {', '.join(FLEET_FILES)})",
                "run pd fleet init")])
    else:
        file = path.resolve()
        project_dir = project_dir_of(file)
    try:
        data = yaml.safe_load(file.read_text())
    except OSError as exc:
        return LoadResult(file, project_dir, None, [Problem("(file)", f"cannot read {file}: {exc.strerror}",
                                                            "check the path and permissions")])
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        return LoadResult(file, project_dir, None, [Problem("(file)", f"is not valid YAML{where}: {reason}",
                                                            "fix the indentation or quoting there")])
    spec, problems = validate_data(data, project_dir, file)
    return LoadResult(file, project_dir, spec, problems)
