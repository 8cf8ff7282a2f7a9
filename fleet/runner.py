"""Running one fleet: triggers in, agent runs out (SPEC.md §11).

A `FleetRunner` owns one validated fleet. Deliveries from its subscription (trigger channels,
tuple channels, `pd:fleet` control events) and the passing of time (cron schedules) become run
requests; a request starts a run unless the agent is disabled, its circuit breaker is open, it
is a singleton with a run active, or the fleet's hourly budget is spent (then it is skipped and
counted), or the fleet's `max_concurrent_spawns` runs are active (then it waits in a bounded
queue). Everything happens on the caller's thread through `handle()` and `tick()`; listener
threads only queue deliveries.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet import paths
from fleet.backends import build_argv
from fleet.link import CoreLink, Listener
from fleet.orphans import reap_orphans
from fleet.runs import RunBook, RunPlan
from fleet.schema import AgentSpec, FleetSpec
from fleet.supervisor import Program
from fleet.triggers import CronSchedule, matches, scoped_channel
from fleet.variables import event_values, git_state, render, render_shell, trigger_context
from pdcore.config import Config
from pdcore.errors import OpError
from pdcore.state.spawn import CHANNEL as CONTROL_CHANNEL

log = logging.getLogger("pd.fleet.runner")


class FleetConflict(RuntimeError):
    """Another runner holds this fleet (or the daemon was asked to run it)."""


@dataclass
class Request:
    """Why a run should start."""

    trigger: str  # the channel, "schedule", "start" or "manual"
    channel: str | None = None  # the fleet-local channel name, for {channel}
    message: Any = None
    sender: str | None = None
    at: float = field(default_factory=time.time)


class AgentRuntime:
    """One agent (or watcher) of a running fleet."""

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.program = Program(spec.name, singleton=spec.singleton)
        self.schedule = CronSchedule(spec.schedule) if spec.schedule else None
        self.next_due: float | None = None
        self.last_run_at: float | None = None

    def status(self, log_path: Path) -> dict:
        program, last = self.program, self.program.last
        return {
            **self.spec.summary(),
            "state": str(program.state),
            "active": len(program.processes),
            "runs": program.started,
            "succeeded": program.succeeded,
            "failed": program.failed,
            "stopped": program.stopped,
            "skipped": program.skipped,
            "respawns": last.respawns if last else 0,
            "lastExitCode": last.exit_code if last else None,
            "lastOutcome": last.outcome if last else None,
            "lastReason": last.reason if last else None,
            "lastRunAt": int(self.last_run_at * 1000) if self.last_run_at else None,
            "nextRunAt": int(self.next_due * 1000) if self.next_due else None,
            "circuitBreaker": "open" if program.breaker_reason and str(program.state) == "FATAL" else "closed",
            "logPath": str(log_path),
        }


class FleetRunner:
    """Runs one fleet's agents. `kind` is "foreground" (pd fleet up) or "daemon" (python -m fleet)."""

    def __init__(self, spec: FleetSpec, link: CoreLink, config: Config, kind: str = "foreground",
                 clock: Any = time.time) -> None:
        self.spec = spec
        self.link = link
        self.config = config
        self.kind = kind
        self.clock = clock
        self.book = RunBook(link, config)
        self.agents: dict[str, AgentRuntime] = {a.name: AgentRuntime(a) for a in spec.programs()}
        self._changed = False  # an agent changed state since the last report: report at the next tick
        for runtime in self.agents.values():
            runtime.program.on_change = self._on_agent_change
        self.queue: deque[tuple[AgentRuntime, Request]] = deque()
        self.started_at: deque[float] = deque()  # run starts in the last hour, for max_spawns_per_hour
        self.max_concurrent = spec.max_concurrent_spawns or config.fleet_max_concurrent_default
        self.stop_requested = False
        self.error: str | None = None
        self._last_report = 0.0
        self.listener: Listener | None = None

    # -- identity of the fleet's channels --------------------------------------------------
    def channels(self) -> list[str]:
        """The real channels this fleet listens to (its triggers)."""
        found: dict[str, None] = {}
        for runtime in self.agents.values():
            trig = runtime.spec.trigger
            if trig is not None and runtime.spec.enabled:
                found.setdefault(trig.real_channel(self.spec.harbor), None)
        return list(found)

    def log_path(self, name: str) -> Path:
        return paths.agent_log(self.config.home, self.spec.name, name)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, inbox: queue.Queue | None = None, include_control: bool = True) -> None:
        """Subscribe (into `inbox`), attach to the core as this fleet's runner, create the harbor,
        arm the schedules and queue the run_on_start runs. Attaching comes after subscribing, so a
        fleet the core shows as running hears every trigger published from then on."""
        if inbox is not None:
            self.start_listener(inbox, include_control)
        self.report(force=True, even_if_deaf=True)  # raises FleetConflict when another runner holds the fleet
        # before any trigger fires: stop the runs a dead runner of this fleet left running (kill -9)
        reap_orphans(self.link, self.config, fleet=self.spec.name)
        try:
            self.link.call("harbor.create", name=self.spec.harbor,
                           channels=[scoped_channel(self.spec.harbor, c) for c in self.spec.channels],
                           metadata={"fleet": self.spec.name, "projectDir": str(self.spec.project_dir)})
        except OpError as err:
            log.warning("event=harbor.create_refused harbor=%s error=%r", self.spec.harbor, err.message)
        for runtime in self.agents.values():
            if runtime.spec.kind == "agent" and runtime.spec.enabled:
                try:
                    self.link.call("harbor.enter", name=self.spec.harbor, agentId=runtime.spec.identity,
                                   identity=runtime.spec.identity)
                except OpError as err:
                    log.warning("event=harbor.enter_refused harbor=%s agent=%s error=%r", self.spec.harbor,
                                runtime.spec.identity, err.message)
        now = self.clock()
        for runtime in self.agents.values():
            if not runtime.spec.enabled:
                continue
            if runtime.schedule is not None:
                runtime.next_due = runtime.schedule.next_after(now)
            if runtime.spec.run_on_start:
                self.request(runtime, Request("start"))
        log.info("event=fleet.started fleet=%s harbor=%s agents=%d kind=%s", self.spec.name, self.spec.harbor,
                 len(self.agents), self.kind)

    def start_listener(self, inbox: queue.Queue, include_control: bool, wait_s: float = 10.0) -> None:
        patterns = self.channels() + ([CONTROL_CHANNEL] if include_control else [])
        if patterns:
            self.listener = Listener(self.config, patterns, inbox, self.spec.name)
            self.listener.start()
            if not self.listener.ready.wait(wait_s):
                log.warning("event=listener.not_ready fleet=%s waited_s=%g", self.spec.name, wait_s)

    def stop(self, wait_s: float | None = None) -> None:
        """Stop every run (SIGTERM, SIGKILL after the grace), wait for them, tell the core."""
        if self.listener is not None:
            self.listener.stop()
        for runtime in self.agents.values():
            runtime.program.stop()
        deadline = time.monotonic() + (wait_s if wait_s is not None else self.config.fleet_kill_grace_ms / 1000 + 2)
        while any(r.program.processes for r in self.agents.values()) and time.monotonic() < deadline:
            self.poll_runs()
            time.sleep(0.02)
        self.poll_runs()
        try:
            self.link.call("fleet.report", runner=self.kind, runnerPid=os.getpid(), name=self.spec.name,
                           stopped=True)
        except OpError:
            pass
        log.info("event=fleet.stopped fleet=%s", self.spec.name)

    # -- events ----------------------------------------------------------------------------
    def handle(self, delivery: dict) -> None:
        """One delivery from the subscription."""
        channel = delivery.get("channel")
        message = delivery.get("message")
        if channel == CONTROL_CHANNEL:
            self._control(message if isinstance(message, dict) else {})
            return
        harbor = self.spec.harbor
        for runtime in self.agents.values():
            trig = runtime.spec.trigger
            if trig is None or not matches(trig, harbor, channel, message):
                continue
            local = channel[len(harbor) + 1:] if channel.startswith(harbor + ":") else channel
            self.request(runtime, Request(channel, local, message, delivery.get("sender")))

    def _control(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "fleet.down" and event.get("name") == self.spec.name:
            self.stop_requested = True
        elif kind == "fleet.run" and event.get("name") == self.spec.name:
            runtime = self.agents.get(str(event.get("agent")))
            if runtime is not None:
                self.request(runtime, Request("manual", sender=event.get("by")), force=True)
        elif kind == "spawn.kill":
            self.book.stop_ids([*event.get("ids", []), event.get("agentId", "")])

    def request(self, runtime: AgentRuntime, req: Request, force: bool = False) -> bool:
        """Start a run now, queue it, or skip it; return True when it started or was queued."""
        spec = runtime.spec
        if not spec.enabled and not force:
            return False
        refusal = runtime.program.refusal()
        if refusal is None:
            refusal = self._over_budget()
        if refusal is not None:
            runtime.program.skipped += 1
            log.info("event=run.skipped fleet=%s agent=%s trigger=%s why=%r", self.spec.name, spec.name, req.trigger,
                     refusal)
            return False
        if spec.kind == "agent" and self._agents_active() >= self.max_concurrent:
            if len(self.queue) >= self.config.fleet_queue_max:
                runtime.program.skipped += 1
                log.warning("event=run.dropped fleet=%s agent=%s why=queue_full", self.spec.name, spec.name)
                return False
            self.queue.append((runtime, req))
            return True
        self._launch(runtime, req)
        return True

    def _over_budget(self) -> str | None:
        limit = self.spec.max_spawns_per_hour
        if not limit:
            return None
        now = self.clock()
        while self.started_at and self.started_at[0] < now - 3600:
            self.started_at.popleft()
        return f"max_spawns_per_hour ({limit}) reached" if len(self.started_at) >= limit else None

    def _agents_active(self) -> int:
        return sum(len(r.program.processes) for r in self.agents.values() if r.spec.kind == "agent")

    # -- starting a run --------------------------------------------------------------------
    def _agent_id(self, runtime: AgentRuntime) -> str:
        """The agent's identity, or identity.N for a second overlapping run (non-singleton)."""
        base = runtime.spec.identity
        taken = {self.book.plans[p].agent_id for p in runtime.program.processes if p in self.book.plans}
        if base not in taken:
            return base
        n = 2
        while f"{base}.{n}" in taken:
            n += 1
        return f"{base}.{n}"

    def plan(self, runtime: AgentRuntime, req: Request) -> RunPlan:
        """Fill the templates and decide the argv, folder and environment of one run."""
        spec, fleet = runtime.spec, self.spec
        values: dict[str, Any] = {"project": fleet.name, "project_dir": str(fleet.project_dir), "harbor": fleet.harbor,
                                  "fleet": fleet.name, "agent": spec.name, **git_state(fleet.project_dir)}
        event: dict[str, Any] = {}
        if req.channel is not None or req.message is not None:
            event = event_values(req.channel, req.message, req.sender)
            values.update(event)
        shell_env: dict[str, str] = {}
        if spec.backend == "custom":
            prompt, shell_env = render_shell(spec.prompt, values)  # values travel in the environment only
            shown = render(spec.prompt, values)
        else:
            prompt = render(spec.prompt, values)
            if event:
                prompt += trigger_context(values)
            shown = prompt
        cwd = Path(render(spec.cwd, values)) if spec.cwd else fleet.project_dir
        if not cwd.is_absolute():
            cwd = fleet.project_dir / cwd
        model = render(spec.model, values) if spec.model else None
        agent_id = self._agent_id(runtime)
        env = {**os.environ, **{k: render(v, values) for k, v in spec.env.items()}, **shell_env}
        env.update({
            "PD_FLEET": fleet.name, "PD_AGENT_NAME": spec.name, "PD_HARBOR": fleet.harbor,
            "PD_PROJECT_DIR": str(fleet.project_dir), "PD_TRIGGER": req.trigger,
            "PD_CHANNEL": str(event.get("channel", "")), "PD_SENDER": str(event.get("sender", "")),
            "PD_MESSAGE": str(event.get("message", "")), "PD_COMMIT": str(event.get("commit", "")),
            "PD_CHANGED_FILES": " ".join(event["changed_files"]) if isinstance(event.get("changed_files"), list)
            else str(event.get("changed_files", "")),
            "PD_TRIGGER_CONTEXT": trigger_context(values).strip() if event else "",
        })
        run_id = f"run-{secrets.token_hex(5)}"
        env["PD_RUN_ID"] = run_id
        return RunPlan(
            run_id=run_id, agent_id=agent_id, backend=spec.backend,
            argv=build_argv(spec.backend, prompt, model, spec.allowed_tools, spec.files), cwd=str(cwd), env=env,
            log_path=self.log_path(spec.name),
            timeout_s=spec.timeout_s or self.config.fleet_run_timeout_ms / 1000,
            respawn=spec.respawn, max_respawns=spec.max_respawns, fleet=fleet.name, agent=spec.name, model=model,
            task=shown, identity=spec.identity,
            purpose=f"fleet {fleet.name}/{spec.name}: {spec.description or req.trigger}", trigger=req.trigger,
            harbor=fleet.harbor, register=spec.kind == "agent",
            on_success=scoped_channel(fleet.harbor, spec.on_success) if spec.on_success else None,
            on_failure=scoped_channel(fleet.harbor, spec.on_failure) if spec.on_failure else None,
            event={k: v for k, v in event.items() if k in ("commit", "branch", "channel")},
        )

    def _launch(self, runtime: AgentRuntime, req: Request) -> None:
        plan = self.plan(runtime, req)
        runtime.last_run_at = self.clock()
        self.started_at.append(runtime.last_run_at)
        log.info("event=run.start fleet=%s agent=%s run=%s trigger=%s", self.spec.name, runtime.spec.name,
                 plan.run_id, req.trigger)
        self.book.launch(runtime.program, plan)

    def _on_agent_change(self, program: Program, old: Any, new: Any) -> None:
        self._changed = True

    # -- the loop's work -------------------------------------------------------------------
    def poll_runs(self) -> None:
        for runtime in self.agents.values():
            for process in runtime.program.poll():
                self.book.finish(process)

    def tick(self) -> None:
        """Advance runs, fire due schedules, start queued runs, heartbeat, report."""
        self.poll_runs()
        now = self.clock()
        for runtime in self.agents.values():
            if runtime.next_due is not None and now >= runtime.next_due and runtime.schedule is not None:
                runtime.next_due = runtime.schedule.next_after(now)
                self.request(runtime, Request("schedule"))
        while self.queue and self._agents_active() < self.max_concurrent:
            runtime, req = self.queue.popleft()
            if runtime.program.refusal() is None:
                self._launch(runtime, req)
            else:
                runtime.program.skipped += 1
        self.book.heartbeat()
        self.report(force=self._changed)
        if self.listener is not None and not self.listener.is_alive() and not self.listener.stopping.is_set():
            inbox = self.listener.inbox
            self.listener = Listener(self.config, self.listener.patterns, inbox, self.spec.name)
            self.listener.start()

    def status(self) -> list[dict]:
        return [r.status(self.log_path(name)) for name, r in self.agents.items()]

    def report(self, force: bool = False, even_if_deaf: bool = False) -> dict | None:
        """Tell the core this runner holds the fleet, with each agent's state (every report interval;
        `force`: now). While the listener is disconnected it only keeps its runs alive."""
        now = time.monotonic()
        if not force and now - self._last_report < self.config.fleet_report_interval_ms / 1000:
            return None
        self._last_report = now
        self._changed = False
        if self.listener is not None and not self.listener.connected.is_set() and not even_if_deaf:
            # deaf for now (the daemon restarting): keep our runs alive, claim the fleet once we hear again
            self.link.call("fleet.report", runner=self.kind, runnerPid=os.getpid(), runs=self.book.active_ids())
            return None
        try:
            reply = self.link.call("fleet.report", runner=self.kind, runnerPid=os.getpid(), name=self.spec.name,
                                   projectDir=str(self.spec.project_dir), file=str(self.spec.file),
                                   harbor=self.spec.harbor, agents=self.status(), runs=self.book.active_ids(),
                                   error=self.error)
        except OpError as err:
            if err.code in ("fleet_running", "not_found"):
                raise FleetConflict(err.message) from None
            raise
        if reply and reply.get("killRequested"):
            self.book.stop_ids(reply["killRequested"])
        return reply


def run_foreground(runner: FleetRunner, stop: threading.Event, on_status: Any = None) -> int:
    """Run a fleet in this process until `stop` is set or `pd fleet down` asks; return an exit code."""
    inbox: queue.Queue = queue.Queue()
    runner.start(inbox, include_control=True)
    code = 0
    try:
        while not stop.is_set() and not runner.stop_requested:
            try:
                tag, kind, delivery = inbox.get(timeout=0.1)
            except queue.Empty:
                pass
            else:
                if kind == "message" and isinstance(delivery, dict):
                    runner.handle(delivery)
                elif kind == "reconnected":
                    runner.report(force=True)
            try:
                runner.tick()
            except FleetConflict as exc:
                log.error("event=fleet.lost fleet=%s why=%r", runner.spec.name, str(exc))
                code = 1
                break
            if on_status is not None:
                on_status(runner)
    finally:
        runner.stop()
    return code
