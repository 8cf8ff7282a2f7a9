"""Fleets and agent runs, the core's side of SPEC.md §11.

The core never runs a process. It keeps the records and talks to the fleet runner, an IPC
client (`python -m fleet`, started by the supervisor, or a foreground `pd fleet up`):

- A *run* (spawn record) is one agent run: an ad-hoc `POST /spawn` (its id is its agent id) or
  a run of a fleet agent. `spawn.create` records it PENDING and publishes `spawn.requested` on
  `pd:fleet`; the daemon's runner takes it with `spawn.claim` (exactly one taker), runs it and
  reports each transition of its supervisor state machine with `spawn.report`. A run that
  finishes failed (non-zero exit, timeout, circuit breaker open) or whose runner vanished has
  its agent declared dead here, so its session goes to salvage like any dead agent's.
- A *fleet* is registered for the daemon to run (`fleet.register`, durable) and is held by the
  one runner running it (`fleet.report`, ephemeral: re-sent every few seconds, dropped when the
  runner's IPC connection closes or it falls silent). A second runner for a fleet is refused.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from pdcore.choices import SPAWN_BACKENDS as BACKENDS
from pdcore.choices import SPAWN_OUTCOMES as OUTCOMES
from pdcore.choices import SPAWN_RUNNER_KINDS as RUNNER_KINDS
from pdcore.choices import SPAWN_STATES as STATES
from pdcore.errors import OpError
from pdcore.state.base import Ctx, Primitive
from pdcore.timers import Timer

CHANNEL = "pd:fleet"
BACKEND_ALIASES = {"claude": "claude-cli"}  # Port Daddy 3.8 spelling
ACTIVE = frozenset(("PENDING", "STARTING", "RUNNING", "BACKOFF"))
FINAL = frozenset(("EXITED", "FATAL", "STOPPED"))
FAILED = frozenset(("failure", "timeout", "spawn_error", "lost"))
FLEET_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_COLUMNS = ("id, agent_id, fleet, agent, backend, model, task, identity, purpose, spec, trigger_name, state, "
            "outcome, exit_code, pid, respawns, log_path, session_id, reason, kill_requested, created_at, "
            "started_at, ended_at, updated_at")


def normalize_backend(backend: str, field: str = "backend") -> str:
    """The canonical backend name, or a refusal naming the choices."""
    name = BACKEND_ALIASES.get(backend, backend)
    if name not in BACKENDS:
        raise OpError("invalid_argument", f"{field} {backend!r} is unknown; use one of {', '.join(BACKENDS)}", field)
    return name


def status_of(state: str, outcome: str | None) -> str:
    """The Port Daddy 3.8 status word of a run: pending, running, completed, failed or killed."""
    if state == "PENDING":
        return "pending"
    if state in ACTIVE:
        return "running"
    if outcome == "success":
        return "completed"
    if outcome == "killed" or (state == "STOPPED" and outcome is None):
        return "killed"
    return "failed"


class SpawnRun:
    """One agent run."""

    __slots__ = ("id", "agent_id", "fleet", "agent", "backend", "model", "task", "identity", "purpose", "spec",
                 "trigger", "state", "outcome", "exit_code", "pid", "respawns", "log_path", "session_id", "reason",
                 "kill_requested", "created_at", "started_at", "ended_at", "updated_at", "seen_at", "runner_key")

    def __init__(self, **kw: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, kw.get(name))
        self.respawns = self.respawns or 0
        self.kill_requested = bool(self.kill_requested)

    @classmethod
    def from_row(cls, row: tuple) -> SpawnRun:
        names = [c.strip() for c in _COLUMNS.split(",")]
        kw = dict(zip(names, row, strict=True))
        kw["trigger"] = kw.pop("trigger_name")
        kw["spec"] = json.loads(kw["spec"]) if kw["spec"] else {}
        return cls(**kw)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_dict(self) -> dict:
        spec = self.spec or {}
        return {
            "id": self.id,
            "agentId": self.agent_id,
            "fleet": self.fleet,
            "agent": self.agent,
            "backend": self.backend,
            "model": self.model,
            "task": self.task,
            "identity": self.identity,
            "purpose": self.purpose,
            "trigger": self.trigger,
            "cwd": spec.get("cwd"),
            "timeout": spec.get("timeout"),
            "state": self.state,
            "status": status_of(self.state, self.outcome),
            "outcome": self.outcome,
            "exitCode": self.exit_code,
            "pid": self.pid,
            "respawns": self.respawns,
            "pidStart": spec.get("pidStart"),
            "runnerPid": spec.get("runnerPid"),
            "runnerStart": spec.get("runnerStart"),
            "logPath": self.log_path,
            "sessionId": self.session_id,
            "reason": self.reason,
            "killRequested": self.kill_requested,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "endedAt": self.ended_at,
            "completedAt": self.ended_at,
            "updatedAt": self.updated_at,
        }


class Runner:
    """A fleet runner process seen by the core (ephemeral)."""

    __slots__ = ("key", "kind", "pid", "conn_id", "seen_at")

    def __init__(self, key: str, kind: str, pid: int | None, conn_id: Any, seen_at: int) -> None:
        self.key, self.kind, self.pid, self.conn_id, self.seen_at = key, kind, pid, conn_id, seen_at


class FleetLive:
    """What the runner holding a fleet last reported (ephemeral)."""

    __slots__ = ("name", "runner_key", "kind", "pid", "project_dir", "file", "harbor", "agents", "error",
                 "started_at", "reported_at")

    def __init__(self, **kw: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, kw.get(name))


class Spawns(Primitive):
    name = "spawn"
    load_order = 70

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.runs: dict[str, SpawnRun] = {}  # creation order
        self.fleets: dict[str, dict] = {}  # registered for the daemon: name -> row
        self.live: dict[str, FleetLive] = {}
        self.runners: dict[str, Runner] = {}
        self._sweep_timer: Timer | None = None

    # -- loading ---------------------------------------------------------------------------
    def load(self, now: int) -> None:
        for row in self.store.read(f"SELECT {_COLUMNS} FROM spawns ORDER BY created_at, rowid"):
            run = SpawnRun.from_row(row)
            run.seen_at = now  # its runner gets a full stale window to report again
            self.runs[run.id] = run
        for r in self.store.read("SELECT name, project_dir, file, registered_at, registered_by FROM fleets"):
            self.fleets[r[0]] = {"name": r[0], "projectDir": r[1], "file": r[2], "registeredAt": r[3],
                                 "registeredBy": r[4]}
        self._arm_sweep(now)

    def counts(self) -> dict[str, int]:
        active = sum(1 for r in self.runs.values() if r.active)
        return {"spawns_active": active, "fleets_registered": len(self.fleets), "fleets_running": len(self.live)}

    # -- helpers ---------------------------------------------------------------------------
    def _runner_live(self, key: str | None, now: int) -> Runner | None:
        runner = self.runners.get(key) if key else None
        if runner is None or now - runner.seen_at > self.config.fleet_runner_stale_ms:
            return None
        return runner

    def daemon_runner_attached(self, now: int) -> bool:
        return any(r.kind == "daemon" and now - r.seen_at <= self.config.fleet_runner_stale_ms
                   for r in self.runners.values())

    def _holder(self, name: str, now: int) -> FleetLive | None:
        live = self.live.get(name)
        if live is None:
            return None
        if self._runner_live(live.runner_key, now) is None:
            del self.live[name]
            return None
        return live

    def _fleet_view(self, name: str, now: int) -> dict:
        reg = self.fleets.get(name)
        live = self._holder(name, now)
        runs = [r for r in self.runs.values() if r.fleet == name and r.active]
        return {
            "name": name,
            "registered": reg is not None,
            "managed": "daemon" if reg is not None else (live.kind if live else None),
            "running": live is not None,
            "projectDir": (live.project_dir if live and live.project_dir else None) or (reg or {}).get("projectDir"),
            "file": (live.file if live and live.file else None) or (reg or {}).get("file"),
            "harbor": live.harbor if live else None,
            "runner": {"kind": live.kind, "pid": live.pid, "reportedAt": live.reported_at,
                       "startedAt": live.started_at} if live else None,
            "agents": list(live.agents or []) if live else [],
            "error": live.error if live else None,
            "activeRuns": len(runs),
            "registeredAt": (reg or {}).get("registeredAt"),
        }

    def _save(self, run: SpawnRun) -> None:
        self.store.write(
            f"INSERT INTO spawns ({_COLUMNS}) VALUES ({','.join('?' * 24)}) ON CONFLICT(id) DO UPDATE SET "
            "agent_id=excluded.agent_id, fleet=excluded.fleet, agent=excluded.agent, backend=excluded.backend, "
            "model=excluded.model, task=excluded.task, identity=excluded.identity, purpose=excluded.purpose, "
            "spec=excluded.spec, trigger_name=excluded.trigger_name, state=excluded.state, "
            "outcome=excluded.outcome, exit_code=excluded.exit_code, pid=excluded.pid, respawns=excluded.respawns, "
            "log_path=excluded.log_path, session_id=excluded.session_id, reason=excluded.reason, "
            "kill_requested=excluded.kill_requested, started_at=excluded.started_at, ended_at=excluded.ended_at, "
            "updated_at=excluded.updated_at",
            (run.id, run.agent_id, run.fleet, run.agent, run.backend, run.model, run.task, run.identity, run.purpose,
             json.dumps(run.spec) if run.spec else None, run.trigger, run.state, run.outcome, run.exit_code, run.pid,
             run.respawns, run.log_path, run.session_id, run.reason, int(run.kill_requested), run.created_at,
             run.started_at, run.ended_at, run.updated_at),
        )

    def _trim(self) -> None:
        """Keep at most spawn_history_max runs: the oldest finished ones go first."""
        excess = len(self.runs) - self.config.spawn_history_max
        if excess <= 0:
            return
        drop = []
        for run in self.runs.values():
            if len(drop) >= excess:
                break
            if not run.active:
                drop.append(run.id)
        for run_id in drop:
            del self.runs[run_id]
            self.store.write("DELETE FROM spawns WHERE id=?", (run_id,))

    def _event(self, ctx: Ctx, event: str, **fields: Any) -> None:
        self.root.publish(CHANNEL, {"event": event, **fields}, None, ctx.now)

    def _runs_of(self, agent_id: str) -> list[SpawnRun]:
        """The runs named by `agent_id`: the run of that id, else every run of that agent."""
        run = self.runs.get(agent_id)
        if run is not None:
            return [run]
        return [r for r in self.runs.values() if r.agent_id == agent_id]

    # -- spawn operations ------------------------------------------------------------------
    def create(self, ctx: Ctx, task: str, backend: str = "claude-cli", model: str | None = None,
               identity: str | None = None, purpose: str | None = None, cwd: str | None = None,
               workdir: str | None = None, env: dict | None = None, timeout: int | None = None,
               files: list | None = None, agentId: str | None = None) -> dict:
        """Record an ad-hoc agent run and ask the daemon's fleet runner to start it."""
        backend = normalize_backend(backend)
        text = task.strip()
        if not text:
            raise OpError("missing_field", "task must say what the agent should do (for custom: the shell command)",
                          "task")
        if backend == "ollama" and not model:
            raise OpError("missing_field", "model is required for backend ollama (e.g. llama3.2)", "model")
        directory = cwd or workdir
        if directory is not None and not directory.startswith("/"):
            raise OpError("invalid_argument", "cwd must be an absolute path (the folder the agent runs in)", "cwd")
        for key, value in (env or {}).items():
            if not isinstance(value, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(key)):
                raise OpError("invalid_argument", "env must map variable names to text values", "env")
        if files is not None and not all(isinstance(f, str) and f for f in files):
            raise OpError("invalid_argument", "files must be a list of paths", "files")
        agent_id = agentId or f"spawn-{secrets.token_hex(4)}"
        if any(r.active for r in self._runs_of(agent_id)) or agent_id in self.runs:
            raise OpError("conflict", f"a spawn named {agent_id} exists already; choose another agentId", "agentId")
        active = sum(1 for r in self.runs.values() if r.active and r.fleet is None)
        if active >= self.config.spawn_max_active:
            raise OpError("spawn_limit", f"{active} spawns are waiting or running already (spawn_max_active); "
                                         "kill some (pd spawn kill) or wait", "task")
        spec = {k: v for k, v in (("cwd", directory), ("env", env), ("timeout", timeout), ("files", files))
                if v is not None}
        run = SpawnRun(id=agent_id, agent_id=agent_id, backend=backend, model=model, task=text, identity=identity,
                       purpose=purpose or text[:80], spec=spec, trigger="spawn", state="PENDING",
                       created_at=ctx.now, updated_at=ctx.now, seen_at=ctx.now)
        self.runs[run.id] = run
        self._save(run)
        self._trim()
        self.root.activity.record(ctx, "spawn.create", agent_id, backend=backend, identity=identity)
        self._event(ctx, "spawn.requested", id=run.id, agentId=agent_id, backend=backend)
        attached = self.daemon_runner_attached(ctx.now)
        out = run.to_dict()
        message = (f"spawn {agent_id} requested; the fleet runner starts it now" if attached else
                   f"spawn {agent_id} recorded; it starts when the daemon's fleet runner is up (pd status)")
        return {**out, "agentId": agent_id, "spawn": out, "runnerAttached": attached, "message": message}

    def list(self, ctx: Ctx, active: bool | None = None, fleet: str | None = None, agentId: str | None = None,
             state: str | None = None, limit: int = 100) -> dict:
        """Runs, newest first."""
        found = []
        for run in reversed(self.runs.values()):
            if active and not run.active:
                continue
            if fleet is not None and run.fleet != fleet:
                continue
            if agentId is not None and run.agent_id != agentId:
                continue
            if state is not None and run.state != state.upper():
                continue
            found.append(run)
        return {"agents": [r.to_dict() for r in found[:limit]], "count": len(found)}

    def get(self, ctx: Ctx, agentId: str) -> dict:
        runs = self._runs_of(agentId)
        if not runs:
            raise OpError("not_found", f"no spawned agent {agentId}; `pd spawned` lists them", "agentId")
        latest = max(runs, key=lambda r: r.created_at)
        return {"spawn": latest.to_dict(), "runs": [r.to_dict() for r in runs[-20:]]}

    def kill(self, ctx: Ctx, agentId: str) -> dict:
        """Stop the active runs of an agent: a waiting one at once, a running one by its runner."""
        runs = [r for r in self._runs_of(agentId) if r.active]
        if not runs:
            if self._runs_of(agentId):
                raise OpError("invalid_state", f"{agentId} is not running any more (pd spawned shows how it ended)",
                              "agentId")
            raise OpError("not_found", f"no spawned agent {agentId}; `pd spawned` lists them", "agentId")
        signalled = []
        for run in runs:
            if run.state == "PENDING":
                run.state, run.outcome, run.reason = "STOPPED", "killed", "killed before it started"
                run.ended_at = ctx.now
            else:
                run.kill_requested = True
                signalled.append(run.id)
            run.updated_at = ctx.now
            self._save(run)
        self.root.activity.record(ctx, "spawn.kill", agentId, runs=[r.id for r in runs])
        if signalled:
            self._event(ctx, "spawn.kill", agentId=agentId, ids=signalled)
        return {"agentId": agentId, "killed": True, "runs": [r.to_dict() for r in runs],
                "message": f"{agentId}: {len(runs)} run(s) stopping"}

    def claim(self, ctx: Ctx, id: str, runnerPid: int | None = None) -> dict:
        """The daemon's runner takes a waiting spawn to run it; exactly one taker wins."""
        run = self.runs.get(id)
        if run is None:
            raise OpError("not_found", f"no spawn {id}", "id")
        if run.state != "PENDING":
            raise OpError("already_claimed", f"spawn {id} is {run.state} already", "id")
        run.state, run.updated_at, run.seen_at = "STARTING", ctx.now, ctx.now
        run.runner_key = self._runner_key(ctx, runnerPid)
        self._save(run)
        self._arm_sweep(ctx.now)
        return {"spawn": run.to_dict(), "spec": dict(run.spec or {})}

    def report(self, ctx: Ctx, id: str, state: str, agentId: str | None = None, backend: str | None = None,
               fleet: str | None = None, agent: str | None = None, model: str | None = None,
               task: str | None = None, identity: str | None = None, purpose: str | None = None,
               trigger: str | None = None, outcome: str | None = None, exitCode: int | None = None,
               pid: int | None = None, respawns: int | None = None, logPath: str | None = None,
               sessionId: str | None = None, reason: str | None = None, runnerPid: int | None = None,
               pidStart: float | None = None, runnerStart: float | None = None) -> dict:
        """The runner reports a transition of a run's state machine (creating fleet runs on first sight).

        `pidStart` / `runnerStart` (psutil create_time) pin the child and the runner down exactly, so a
        later runner can tell the previous one's orphaned children from processes that reuse their pids
        (fleet/orphans.py). They live in the run's spec, so no column is needed."""
        state = state.upper()
        if state not in STATES or state == "PENDING":
            raise OpError("invalid_argument", f"state must be one of {', '.join(STATES[1:])}", "state")
        if outcome is not None and outcome not in OUTCOMES:
            raise OpError("invalid_argument", f"outcome must be one of {', '.join(OUTCOMES)}", "outcome")
        run = self.runs.get(id)
        if run is None:
            if not agentId or not backend:
                raise OpError("missing_field", "agentId and backend are required to report a new run", "agentId")
            backend = normalize_backend(backend)
            run = SpawnRun(id=id, agent_id=agentId, backend=backend, fleet=fleet, agent=agent, model=model,
                           task=task, identity=identity, purpose=purpose, trigger=trigger, spec={},
                           state="STARTING", created_at=ctx.now)
            self.runs[id] = run
            new = True
        else:
            new = False
            if not run.active:
                if run.state == state:
                    return {"spawn": run.to_dict(), "killRequested": False}
                raise OpError("invalid_state", f"run {id} ended already ({run.state})", "state")
        before = None if new else run.state
        run.state = state
        if pid is not None or (runnerPid and runnerStart is not None):
            spec = dict(run.spec or {})
            if pid is not None:  # a (new) process: its start time comes with it (none: never signalled)
                spec["pidStart"] = pidStart
            if runnerPid and runnerStart is not None:
                spec["runnerPid"], spec["runnerStart"] = runnerPid, runnerStart
            run.spec = spec
        for attr, value in (("outcome", outcome), ("exit_code", exitCode), ("pid", pid), ("respawns", respawns),
                            ("log_path", logPath), ("session_id", sessionId), ("reason", reason)):
            if value is not None:
                setattr(run, attr, value)
        if state in ("RUNNING", "STARTING") and run.started_at is None:
            run.started_at = ctx.now
        if state in FINAL:
            run.ended_at = ctx.now
            if state == "STOPPED" and run.outcome is None:
                run.outcome = "killed"
        run.updated_at = run.seen_at = ctx.now
        run.runner_key = self._runner_key(ctx, runnerPid)
        self._save(run)
        if new:
            self._trim()
        if state != before:
            self._on_transition(ctx, run, before)
        return {"spawn": run.to_dict(), "killRequested": run.kill_requested and run.active}

    def _on_transition(self, ctx: Ctx, run: SpawnRun, before: str | None) -> None:
        fields = {"id": run.id, "agentId": run.agent_id, "fleet": run.fleet, "agent": run.agent,
                  "state": run.state, "outcome": run.outcome, "exitCode": run.exit_code}
        if run.state in ("STARTING", "BACKOFF", "FATAL", "EXITED", "STOPPED") or before is None:
            self.root.activity.record(ctx, f"spawn.{run.state.lower()}", run.agent_id, actor=run.agent_id,
                                      run=run.id, fleet=run.fleet, outcome=run.outcome, exitCode=run.exit_code,
                                      respawns=run.respawns, reason=run.reason)
        self._event(ctx, "spawn.state", **fields)
        if run.state in FINAL and run.outcome in FAILED:
            self._declare_dead(ctx, run)
        self._arm_sweep(ctx.now)

    def _declare_dead(self, ctx: Ctx, run: SpawnRun) -> None:
        """A failed run's agent is dead: the reaper's hooks send its session to salvage."""
        agents = getattr(self.root, "agents", None)
        agent = agents.get_agent(run.agent_id) if agents is not None else None
        if agent is None or agent.dead_at is not None:
            return
        detail = f"exit code {run.exit_code}" if run.exit_code is not None else run.outcome
        agents.mark_dead(ctx, agent, f"fleet run {run.id} {run.state.lower()}: {detail}")

    def _runner_key(self, ctx: Ctx, pid: int | None) -> str | None:
        if ctx.conn is not None:
            return f"conn:{ctx.conn.id}"
        return f"pid:{pid}" if pid else None

    # -- losing runs whose runner went away ------------------------------------------------
    def _arm_sweep(self, now: int) -> None:
        if self._sweep_timer is None and any(r.active and r.state != "PENDING" for r in self.runs.values()):
            self._sweep_timer = self.root.timers.add(now + self.config.fleet_runner_stale_ms, self._sweep)

    def _sweep(self) -> None:
        """A started run not heard of for two stale windows was lost with its runner: end it, salvage it."""
        self._sweep_timer = None
        now = self.root.clock()
        cutoff = now - 2 * self.config.fleet_runner_stale_ms
        ctx = Ctx(now, source="internal")
        for run in list(self.runs.values()):
            if run.active and run.state != "PENDING" and (run.seen_at or 0) < cutoff:
                run.state, run.outcome, run.ended_at, run.updated_at = "STOPPED", "lost", now, now
                run.reason = "its fleet runner stopped reporting"
                self._save(run)
                self._on_transition(ctx, run, "RUNNING")
        self._arm_sweep(now)

    # -- fleet operations ------------------------------------------------------------------
    @staticmethod
    def _check_fleet_name(name: str) -> None:
        if not FLEET_NAME_RE.match(name):
            raise OpError("invalid_name", "name must be the project folder's name: 1-64 characters of "
                                          "A-Z a-z 0-9 . _ -", "name")

    def fleet_register(self, ctx: Ctx, name: str, projectDir: str, file: str | None = None) -> dict:
        """Have the daemon's fleet runner run a project's fleet (it survives the terminal closing)."""
        self._check_fleet_name(name)
        if not projectDir.startswith("/"):
            raise OpError("invalid_argument", "projectDir must be the absolute path of the project folder",
                          "projectDir")
        holder = self._holder(name, ctx.now)
        if holder is not None and holder.kind != "daemon":
            raise OpError("fleet_running", f"fleet {name} runs in the foreground already (pid {holder.pid}); "
                                           f"stop it (Ctrl-C or pd fleet down {name}) first", "name")
        existing = name in self.fleets
        row = {"name": name, "projectDir": projectDir, "file": file,
               "registeredAt": self.fleets[name]["registeredAt"] if existing else ctx.now,
               "registeredBy": ctx.agent_id}
        self.fleets[name] = row
        self.store.write("INSERT INTO fleets (name, project_dir, file, registered_at, registered_by) VALUES "
                         "(?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET project_dir=excluded.project_dir, "
                         "file=excluded.file", (name, projectDir, file, row["registeredAt"], ctx.agent_id))
        self.root.activity.record(ctx, "fleet.register", name, projectDir=projectDir)
        self._event(ctx, "fleet.registered", name=name, projectDir=projectDir, file=file)
        attached = self.daemon_runner_attached(ctx.now)
        message = (f"fleet {name} registered; the daemon's fleet runner runs it" if attached else
                   f"fleet {name} registered; it starts when the daemon's fleet runner is up (pd status)")
        return {"fleet": self._fleet_view(name, ctx.now), "registered": True, "existing": existing,
                "runnerAttached": attached, "message": message}

    def fleet_down(self, ctx: Ctx, name: str) -> dict:
        """Stop a fleet: forget its registration and tell whichever runner holds it to stop."""
        holder = self._holder(name, ctx.now)
        registered = self.fleets.pop(name, None) is not None
        if not registered and holder is None:
            raise OpError("not_found", f"fleet {name} is neither registered nor running", "name")
        if registered:
            self.store.write("DELETE FROM fleets WHERE name=?", (name,))
        self.root.activity.record(ctx, "fleet.down", name, registered=registered)
        self._event(ctx, "fleet.down", name=name)
        return {"name": name, "unregistered": registered, "stopping": holder is not None,
                "message": f"fleet {name} {'stopping' if holder is not None else 'unregistered'}"}

    def fleet_list(self, ctx: Ctx) -> dict:
        names = sorted(set(self.fleets) | {n for n in list(self.live) if self._holder(n, ctx.now) is not None})
        return {"fleets": [self._fleet_view(n, ctx.now) for n in names], "count": len(names)}

    def fleet_status(self, ctx: Ctx, name: str) -> dict:
        if name not in self.fleets and self._holder(name, ctx.now) is None:
            raise OpError("not_found", f"fleet {name} is not running (start it with pd fleet up)", "name")
        return {"fleet": self._fleet_view(name, ctx.now)}

    def fleet_run(self, ctx: Ctx, name: str, agent: str) -> dict:
        """Ask the runner holding a fleet to run one agent now (a manual trigger)."""
        holder = self._holder(name, ctx.now)
        if holder is None:
            raise OpError("not_found", f"fleet {name} is not running (start it with pd fleet up)", "name")
        known = {a.get("name") for a in holder.agents or [] if isinstance(a, dict)}
        if known and agent not in known:
            raise OpError("not_found", f"fleet {name} has no agent {agent} (it has {', '.join(sorted(known))})",
                          "agent")
        self._event(ctx, "fleet.run", name=name, agent=agent, by=ctx.agent_id)
        return {"name": name, "agent": agent, "requested": True, "message": f"asked fleet {name} to run {agent}"}

    def fleet_report(self, ctx: Ctx, runner: str = "foreground", runnerPid: int | None = None,
                     name: str | None = None, projectDir: str | None = None, file: str | None = None,
                     harbor: str | None = None, agents: list | None = None, runs: list | None = None,
                     error: str | None = None, stopped: bool = False) -> dict:
        """A runner says it is alive and, with `name`, that it runs that fleet (or stopped running it)."""
        if runner not in RUNNER_KINDS:
            raise OpError("invalid_argument", f"runner must be one of {', '.join(RUNNER_KINDS)}", "runner")
        key = self._runner_key(ctx, runnerPid)
        if key is None:
            raise OpError("missing_field", "runnerPid is required when not reporting over IPC", "runnerPid")
        now = ctx.now
        if name is not None:
            self._check_fleet_name(name)
            holder = self._holder(name, now)
            if stopped:
                if holder is not None and holder.runner_key == key:
                    del self.live[name]
                    self._event(ctx, "fleet.stopped", name=name, runner=runner, pid=runnerPid)
            else:
                if holder is not None and holder.runner_key != key:
                    raise OpError("fleet_running", f"fleet {name} is run already by a {holder.kind} runner "
                                                   f"(pid {holder.pid}); pd fleet down {name} first", "name")
                if runner == "foreground" and name in self.fleets:
                    raise OpError("fleet_running", f"fleet {name} is registered for the daemon to run; "
                                                   f"pd fleet down {name} first, or use pd fleet up --detach", "name")
                if runner == "daemon" and name not in self.fleets:
                    raise OpError("not_found", f"fleet {name} is not registered any more", "name")
                if holder is None:
                    holder = self.live[name] = FleetLive(name=name, runner_key=key, kind=runner, pid=runnerPid,
                                                         started_at=now)
                    self.root.activity.record(ctx, "fleet.up", name, runner=runner, pid=runnerPid)
                    self._event(ctx, "fleet.up", name=name, runner=runner, pid=runnerPid)
                for attr, value in (("project_dir", projectDir), ("file", file), ("harbor", harbor),
                                    ("agents", agents)):
                    if value is not None:
                        setattr(holder, attr, value)
                holder.error = error
                holder.reported_at = now
        prior = self.runners.get(key)
        self.runners[key] = Runner(key, runner, runnerPid, ctx.conn.id if ctx.conn is not None else None, now)
        for run_id in runs or ():
            run = self.runs.get(run_id) if isinstance(run_id, str) else None
            if run is not None and run.active:
                run.seen_at, run.runner_key = now, key
        out: dict[str, Any] = {"attached": bool(name) and not stopped, "runnerKnown": prior is not None}
        if name is not None and not stopped:
            out["fleet"] = self._fleet_view(name, now)
        if runner == "daemon":
            out["registered"] = [dict(r) for r in self.fleets.values()]
            out["pending"] = [r.id for r in self.runs.values() if r.state == "PENDING"]
        out["killRequested"] = [r.id for r in self.runs.values()
                                if r.active and r.kill_requested and r.runner_key == key]
        return out

    def declared_identities(self, agent_name: str) -> set[str]:
        """The agent ids running fleets declare for their agents called `agent_name`."""
        return {spec["identity"] for live in self.live.values() for spec in live.agents or ()
                if isinstance(spec, dict) and spec.get("name") == agent_name and isinstance(spec.get("identity"), str)}

    # -- hooks -----------------------------------------------------------------------------
    def on_connection_closed(self, conn_id: Any) -> None:
        """A runner's connection closed: it holds no fleet any more."""
        key = f"conn:{conn_id}"
        if self.runners.pop(key, None) is None:
            return
        now = self.root.clock()
        ctx = Ctx(now, source="internal")
        for name, live in list(self.live.items()):
            if live.runner_key == key:
                del self.live[name]
                self._event(ctx, "fleet.stopped", name=name, runner=live.kind, pid=live.pid,
                            reason="runner connection closed")


PRIMITIVE = Spawns
