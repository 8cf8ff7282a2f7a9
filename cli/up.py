"""`.portdaddyrc` and the process side of `pd up` / `pd down` (SPEC.md §14, docs/projects.md).

The daemon never runs processes: this module, in the `pd` process, reads the project's
`.portdaddyrc`, orders its services by `needs` (a cycle is refused, named), and for each one
claims `{project}:{service}:{context}`, starts its command with `PORT` set, attaches the child's
pid to the claim (so the reaper releases the port when the process dies), waits until it is
healthy, and remembers what it started in `.portdaddy/up-{context}.json` beside the rc file.
`pd down` stops those processes (SIGTERM to the process group, SIGKILL after a grace) and
releases the claims. Output goes to `.portdaddy/logs/{service}.log`.
"""

from __future__ import annotations

import contextlib
import graphlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

RC_NAME = ".portdaddyrc"
STATE_DIR = ".portdaddy"
DEFAULT_CONTEXT = "main"
STARTED_BY = "pd up"
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ENV_NAME_RE = re.compile(r"[^A-Za-z0-9]+")
_SERVICE_KEYS = {"cmd", "port", "healthPath", "healthTimeout", "needs", "env", "cwd", "noPort", "metadata"}
_TOP_KEYS = {"project", "services", "portRange", "context"}


class RcError(ValueError):
    """A `.portdaddyrc` that cannot be used, with a sentence naming the field and the fix."""


@dataclass
class ServiceSpec:
    """One service of a `.portdaddyrc`."""

    name: str
    identity: str
    cmd: str | None = None
    port: int | None = None
    health_path: str | None = None
    health_timeout_ms: int | None = None
    needs: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = Path(".")
    no_port: bool = False
    metadata: dict | None = None


@dataclass
class ProjectSpec:
    """A parsed `.portdaddyrc`: the project, its context, its services in file order."""

    rc_path: Path
    project: str
    context: str
    port_range: str | None
    services: dict[str, ServiceSpec]

    @property
    def root(self) -> Path:
        return self.rc_path.parent

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def state_path(self) -> Path:
        return self.state_dir / f"up-{self.context}.json"

    def log_path(self, service: str) -> Path:
        return self.state_dir / "logs" / f"{service}.log"


# -- reading the rc file ------------------------------------------------------------------------
def find_rc(start: Path | None = None) -> Path | None:
    """The nearest `.portdaddyrc` in `start` (default: the working folder) or a folder above it."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / RC_NAME
        if candidate.is_file():
            return candidate
    return None


def _segment(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SEGMENT_RE.fullmatch(value):
        raise RcError(f"{where} must be 1-64 characters of A-Z a-z 0-9 . _ - (got {value!r})")
    return value


def _port_range(value: Any) -> str | None:
    if value is None:
        return None
    try:
        if isinstance(value, str):
            lo, _, hi = value.partition("-")
            lo_i, hi_i = int(lo), int(hi)
        elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
            lo_i, hi_i = value
        else:
            raise ValueError
    except ValueError:
        raise RcError("portRange must be [start, end] or \"start-end\"") from None
    if not 1 <= lo_i <= hi_i <= 65535:
        raise RcError("portRange must satisfy 1 <= start <= end <= 65535")
    return f"{lo_i}-{hi_i}"


def _service(name: str, raw: Any, project: str, context: str, root: Path) -> ServiceSpec:
    where = f"services.{name}"
    if isinstance(raw, str):
        raw = {"cmd": raw}
    if not isinstance(raw, dict):
        raise RcError(f"{where} must be an object like {{\"cmd\": \"npm run dev\", \"healthPath\": \"/health\"}}")
    unknown = sorted(set(raw) - _SERVICE_KEYS)
    if unknown:
        raise RcError(f"{where} has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_SERVICE_KEYS))}")
    cmd = raw.get("cmd")
    if cmd is not None and (not isinstance(cmd, str) or not cmd.strip()):
        raise RcError(f"{where}.cmd must be a shell command (text)")
    port = raw.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        raise RcError(f"{where}.port must be a port number 1-65535")
    health = raw.get("healthPath")
    if health is not None and (not isinstance(health, str) or not health.startswith("/")):
        raise RcError(f"{where}.healthPath must be an HTTP path starting with / (e.g. /health)")
    timeout = raw.get("healthTimeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
        raise RcError(f"{where}.healthTimeout must be a positive number of milliseconds")
    needs = raw.get("needs") or []
    if isinstance(needs, str):
        needs = [needs]
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise RcError(f"{where}.needs must be a list of service names")
    env = raw.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and k and "=" not in k for k in env):
        raise RcError(f"{where}.env must be an object of variable names to values")
    cwd = raw.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise RcError(f"{where}.cwd must be a folder path (relative to {RC_NAME})")
    no_port = raw.get("noPort", False)
    if not isinstance(no_port, bool):
        raise RcError(f"{where}.noPort must be true or false")
    metadata = raw.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise RcError(f"{where}.metadata must be an object")
    return ServiceSpec(
        name=name, identity=f"{project}:{name}:{context}", cmd=cmd, port=port, health_path=health,
        health_timeout_ms=timeout, needs=list(dict.fromkeys(needs)),
        env={k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()},
        cwd=(root / cwd).resolve() if cwd else root, no_port=no_port, metadata=metadata,
    )


def load_rc(path: Path, context: str | None = None) -> ProjectSpec:
    """Parse and check a `.portdaddyrc`; `context` overrides the file's (default `main`)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise RcError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise RcError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RcError(f"{path} must hold a JSON object with project and services")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise RcError(f"unknown top-level field(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}")
    project = _segment(data.get("project"), "project")
    ctx = _segment(context or data.get("context") or DEFAULT_CONTEXT, "context")
    services_raw = data.get("services")
    if not isinstance(services_raw, dict) or not services_raw:
        raise RcError("services must be an object of service name -> {cmd, port, healthPath, needs, env, cwd}")
    root = Path(path).resolve().parent
    services = {}
    for name, raw in services_raw.items():
        _segment(name, "a service name")
        services[name] = _service(name, raw, project, ctx, root)
    for svc in services.values():
        for need in svc.needs:
            if need not in services:
                raise RcError(f"services.{svc.name}.needs names {need!r}, which is not a service of this file "
                              f"(services: {', '.join(services)})")
            if need == svc.name:
                raise RcError(f"services.{svc.name}.needs names itself")
    spec = ProjectSpec(Path(path).resolve(), project, ctx, _port_range(data.get("portRange")), services)
    find_cycle_or_fail(spec)
    return spec


# -- ordering -----------------------------------------------------------------------------------
def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a] (a needs b ...), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(reversed(exc.args[1]))
    return None


def find_cycle_or_fail(spec: ProjectSpec) -> None:
    cycle = find_cycle({name: svc.needs for name, svc in spec.services.items()})
    if cycle:
        raise RcError(f"services depend on each other in a cycle: {' -> '.join(cycle)}; remove one of these needs")


def start_order(spec: ProjectSpec, only: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The services to start, dependencies first (Kahn's algorithm, ties in file order).

    With `only`, those services and everything they need, transitively.
    """
    services = spec.services
    if only:
        unknown = [n for n in only if n not in services]
        if unknown:
            raise RcError(f"no service {', '.join(unknown)} in {spec.rc_path.name} (services: {', '.join(services)})")
        wanted: set[str] = set()
        todo = list(only)
        while todo:
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo.extend(services[name].needs)
    else:
        wanted = set(services)
    pending = {n: {d for d in services[n].needs if d in wanted} for n in services if n in wanted}
    order: list[str] = []
    while pending:
        ready = [n for n in services if n in pending and not pending[n]]
        if not ready:  # load_rc refuses cycles; kept so a bad spec can never loop forever
            raise RcError(f"services depend on each other in a cycle among {', '.join(sorted(pending))}")
        for name in ready:
            order.append(name)
            del pending[name]
        for deps in pending.values():
            deps.difference_update(ready)
    return order


# -- what pd up started -------------------------------------------------------------------------
def load_state(spec: ProjectSpec) -> dict[str, dict]:
    """identity -> {name, pid, pidStart, port, log, startedAt}, as `pd up` left it."""
    try:
        data = json.loads(spec.state_path.read_text())
    except (OSError, ValueError):
        return {}
    services = data.get("services") if isinstance(data, dict) else None
    return services if isinstance(services, dict) else {}


def save_state(spec: ProjectSpec, services: dict[str, dict]) -> None:
    path = spec.state_path
    if not services:
        with contextlib.suppress(OSError):
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"project": spec.project, "context": spec.context, "services": services}, indent=2))
    os.replace(tmp, path)


def same_process(pid: int | None, started: float | None) -> bool:
    """Is `pid` still the process we started (same start time, not a zombie)?"""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) >= 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return False


# -- running ------------------------------------------------------------------------------------
def env_name(service: str) -> str:
    """`auth-api` -> `AUTH_API` (for the `{NAME}_PORT` / `{NAME}_URL` variables)."""
    return _ENV_NAME_RE.sub("_", service).strip("_").upper() or "SERVICE"


def service_env(svc: ServiceSpec, port: int | None, dep_ports: dict[str, int | None]) -> dict[str, str]:
    """The child's environment: ours, `{DEP}_PORT`/`{DEP}_URL` of its needs, its own env, then PORT."""
    env = dict(os.environ)
    for dep, dep_port in dep_ports.items():
        if dep_port:
            env[f"{env_name(dep)}_PORT"] = str(dep_port)
            env[f"{env_name(dep)}_URL"] = f"http://127.0.0.1:{dep_port}"
    env.update(svc.env)
    env["PORT_DADDY_SERVICE"] = svc.identity
    if port:
        env["PORT"] = str(port)
    return env


def start_process(svc: ServiceSpec, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Run the service's command in its own process group, output appended to its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- {stamp} pd up {svc.identity}: {svc.cmd} (PORT={env.get('PORT', '-')})\n".encode())
        log.flush()
        return subprocess.Popen(["/bin/sh", "-c", svc.cmd or ""], cwd=svc.cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def probe(port: int, health_path: str | None, timeout: float = 1.0) -> bool:
    """One health check: an HTTP GET answering below 400 on `health_path`, else a TCP connect."""
    if health_path is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                return True
        except OSError:
            return False
    import http.client  # here, not at the top: it is ~15 ms of imports the other `pd` commands skip

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", health_path, headers={"User-Agent": "pd-up-health"})
        return conn.getresponse().status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_healthy(proc: subprocess.Popen, port: int | None, health_path: str | None, timeout_ms: int,
                 interval: float = 0.1) -> tuple[bool, str]:
    """Wait until the service answers (or, without a port, stays up briefly); (ok, why not)."""
    deadline = time.monotonic() + timeout_ms / 1000
    settle = time.monotonic() + min(0.5, timeout_ms / 1000)
    while True:
        code = proc.poll()
        if code is not None:
            return False, f"exited with code {code} before it was healthy"
        if port is None:
            if time.monotonic() >= settle:
                return True, ""
        elif probe(port, health_path):
            return True, ""
        if time.monotonic() >= deadline:
            what = f"GET {health_path} on port {port}" if health_path and port else f"port {port}"
            return False, f"not healthy within {timeout_ms} ms ({what} never answered)"
        time.sleep(interval)


def stop_process(pid: int, started: float | None, grace_ms: int) -> str:
    """SIGTERM the service's process group, SIGKILL it after `grace_ms`: stopped | killed | gone."""
    if not same_process(pid, started):
        return "gone"
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return "gone"

    def signal_group(sig: int) -> None:
        try:
            os.killpg(pid, sig)  # started with start_new_session: its group id is its pid
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_ms / 1000)
        outcome = "stopped"
    except psutil.TimeoutExpired:
        signal_group(signal.SIGKILL)
        with contextlib.suppress(psutil.TimeoutExpired):
            proc.wait(timeout=5)
        outcome = "killed"
    except psutil.Error:
        outcome = "stopped"
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # anything the service left in its group
    return outcome


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -- pd up / pd down ------------------------------------------------------------------------------
Call = Callable[..., Any]


@dataclass
class UpResult:
    """What `pd up` did for one service."""

    name: str
    identity: str
    status: str  # started | running | claimed
    port: int | None = None
    pid: int | None = None
    log: str | None = None
    health_ms: int | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "identity": self.identity, "status": self.status, "port": self.port,
                "pid": self.pid, "log": self.log, "healthMs": self.health_ms}


class UpFailed(RuntimeError):
    """A service did not come up; everything this run started was stopped and released."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


def up(spec: ProjectSpec, call: Call, only: list[str] | None = None, timeout_ms: int = 30_000,
       grace_ms: int = 5000, say: Callable[[str], None] = lambda _: None) -> list[UpResult]:
    """Start the services (dependencies first), each healthy before the next; roll back on failure."""
    order = start_order(spec, only)
    state = load_state(spec)
    ports: dict[str, int | None] = {}
    results: list[UpResult] = []
    started_now: list[tuple[ServiceSpec, dict]] = []
    try:
        for name in order:
            svc = spec.services[name]
            log = spec.log_path(name)
            known = state.get(svc.identity)
            if known and same_process(known.get("pid"), known.get("pidStart")):
                ports[name] = known.get("port")
                results.append(UpResult(name, svc.identity, "running", known.get("port"), known["pid"],
                                        known.get("log")))
                say(f"{name}: already running (pid {known['pid']}, port {known.get('port') or '-'})")
                continue
            port = None
            if not svc.no_port:
                claim = call("port.claim", id=svc.identity, port=svc.port, range=spec.port_range, cmd=svc.cmd,
                             cwd=str(svc.cwd))
                port = claim["port"]
            ports[name] = port
            if not svc.cmd:
                results.append(UpResult(name, svc.identity, "claimed", port))
                say(f"{name}: claimed port {port} (no cmd to run)")
                continue
            env = service_env(svc, port, {dep: ports.get(dep) for dep in svc.needs})
            proc = start_process(svc, env, log)
            begun = time.monotonic()
            try:
                pid_start = psutil.Process(proc.pid).create_time()
            except psutil.Error:  # gone already (a zombie still answers, so this is rare)
                proc.wait()
                raise UpFailed(f"{name} ({svc.identity}) exited with code {proc.returncode} at once; see {log}",
                               log_tail(log)) from None
            entry = {"name": name, "pid": proc.pid, "pidStart": pid_start, "port": port, "log": str(log),
                     "startedAt": int(time.time() * 1000)}
            state[svc.identity] = entry
            started_now.append((svc, entry))
            save_state(spec, state)
            if port is not None:
                call("port.claim", id=svc.identity, pid=proc.pid,
                     metadata={**(svc.metadata or {}), "startedBy": STARTED_BY, "pidStart": pid_start,
                               "log": str(log), "rc": str(spec.rc_path)})
            say(f"{name}: started pid {proc.pid}" + (f" on port {port}" if port else "") + ", waiting for health")
            ok, why = wait_healthy(proc, port, svc.health_path, svc.health_timeout_ms or timeout_ms)
            if not ok:
                raise UpFailed(f"{name} ({svc.identity}) {why}; see {log}", log_tail(log))
            results.append(UpResult(name, svc.identity, "started", port, proc.pid, str(log),
                                    int((time.monotonic() - begun) * 1000)))
    except BaseException:
        for svc, entry in reversed(started_now):
            stop_process(entry["pid"], entry["pidStart"], grace_ms)
            state.pop(svc.identity, None)
            if not svc.no_port:
                with contextlib.suppress(BaseException):
                    call("port.release", id=svc.identity)
        save_state(spec, state)
        raise
    return results


def down(spec: ProjectSpec, call: Call, only: list[str] | None = None, grace_ms: int = 5000,
         say: Callable[[str], None] = lambda _: None) -> list[dict]:
    """Stop the services (dependents first) and release their claims."""
    if only:
        unknown = [n for n in only if n not in spec.services]
        if unknown:
            raise RcError(f"no service {', '.join(unknown)} in {spec.rc_path.name} "
                          f"(services: {', '.join(spec.services)})")
    order = [n for n in reversed(start_order(spec)) if not only or n in only]
    state = load_state(spec)
    out = []
    for name in order:
        svc = spec.services[name]
        entry = state.get(svc.identity)
        service = None
        if not svc.no_port:
            with contextlib.suppress(SystemExit):
                service = call("port.list", pattern=svc.identity)["services"]
            service = service[0] if service else None
        pid, pid_start = (entry.get("pid"), entry.get("pidStart")) if entry else (None, None)
        meta = (service or {}).get("metadata") or {}
        if pid is None and meta.get("startedBy") == STARTED_BY:  # state file lost: the claim remembers
            pid, pid_start = service.get("pid"), meta.get("pidStart")  # type: ignore[union-attr]
        outcome = stop_process(pid, pid_start, grace_ms) if pid else "not running"
        released = 0
        if service is not None:
            call("port.release", id=svc.identity)
            # The core may have released it first (it frees a claim whose pid exited): either way
            # the claim is no longer held, which is what `released` reports.
            released = 1
        state.pop(svc.identity, None)
        save_state(spec, state)
        if outcome != "not running" or released:
            say(f"{name}: {outcome}" + (f", released port {service['port']}" if released and service else ""))
        out.append({"name": name, "identity": svc.identity, "process": outcome, "pid": pid, "released": released,
                    "port": service["port"] if service else None})
    return out
