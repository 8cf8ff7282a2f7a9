"""Runs in flight: registration with the core, reports, heartbeats, and the end of each run.

For every run the runner (fleet agent or ad-hoc spawn):

1. registers the agent and starts its session (`sugar.begin`), enters the fleet harbor, and
   passes `PORT_DADDY_AGENT` / `PORT_DADDY_SESSION` to the child so its own `pd note` lands
   in that session;
2. starts the child under the supervisor and reports every transition (`spawn.report`);
3. heartbeats on the child's behalf while it runs (the child need not know Port Daddy);
4. when the run finishes: exit 0 ends the session (`sugar.done`, completed) and publishes
   `on_success`; a failure (after any respawns) is reported as such, so the core declares the
   agent dead and its session goes to salvage, and `on_failure` is published; a killed run's
   session ends abandoned.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fleet.link import CoreLink
from fleet.supervisor import Process, Program, State
from pdcore.config import Config
from pdcore.errors import OpError

log = logging.getLogger("pd.fleet.runs")

TASK_REPORT_MAX = 64 * 1024


@dataclass
class RunPlan:
    """Everything one run needs, decided before it starts."""

    run_id: str
    agent_id: str
    backend: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    log_path: Path
    timeout_s: float | None
    respawn: bool = False
    max_respawns: int = 0
    fleet: str | None = None
    agent: str | None = None
    model: str | None = None
    task: str = ""
    identity: str | None = None
    purpose: str = ""
    trigger: str = ""
    harbor: str | None = None
    on_success: str | None = None  # real channel names
    on_failure: str | None = None
    register: bool = True  # watchers run without an agent of their own
    event: dict[str, Any] = field(default_factory=dict)  # what set it off (for the publication)
    session_id: str | None = None
    started_wall: float = 0.0


class RunBook:
    """The runs a runner has in flight, keyed by their Process."""

    def __init__(self, link: CoreLink, config: Config, mono: Any = time.monotonic) -> None:
        self.link = link
        self.config = config
        self.mono = mono
        self.plans: dict[Process, RunPlan] = {}
        self._last_heartbeat = mono()
        self.pid = os.getpid()
        try:  # with the pid it names this runner exactly, so a later runner can tell it is gone
            self.start = psutil.Process(self.pid).create_time()
        except psutil.Error:
            self.start = None

    # -- starting --------------------------------------------------------------------------
    def launch(self, program: Program, plan: RunPlan) -> Process:
        """Register the agent, then start the run under `program`."""
        plan.started_wall = time.time()
        if plan.register:
            self._register(plan)
        cfg = self.config
        process = Process(plan.argv, name=f"{plan.fleet or 'spawn'}/{plan.agent or plan.agent_id}", cwd=plan.cwd,
                          env=plan.env, log_path=plan.log_path, timeout_s=plan.timeout_s, respawn=plan.respawn,
                          max_respawns=plan.max_respawns, backoff_s=cfg.fleet_respawn_backoff_ms / 1000,
                          backoff_max_s=cfg.fleet_respawn_backoff_max_ms / 1000,
                          kill_grace_s=cfg.fleet_kill_grace_ms / 1000, log_max_bytes=cfg.fleet_log_max_bytes,
                          on_transition=self._on_transition)
        self.plans[process] = plan
        program.add(process)
        return process

    def _register(self, plan: RunPlan) -> None:
        try:
            began = self.link.call("sugar.begin", purpose=plan.purpose or plan.task[:200] or plan.agent_id,
                                   identity=plan.identity, agentId=plan.agent_id, type=plan.backend,
                                   name=plan.agent or plan.agent_id, force=True,
                                   metadata={"fleet": plan.fleet, "agent": plan.agent, "run": plan.run_id,
                                             "trigger": plan.trigger})
        except OpError as err:
            log.warning("event=run.register_refused run=%s error=%r", plan.run_id, err.message)
            began = None
        if began:
            plan.session_id = began.get("sessionId")
        plan.env["PORT_DADDY_AGENT"] = plan.agent_id
        if plan.session_id:
            plan.env["PORT_DADDY_SESSION"] = plan.session_id
        if plan.harbor:  # every run (re-)enters: a dead agent left the harbor
            try:
                self.link.call("harbor.enter", name=plan.harbor, agentId=plan.agent_id, identity=plan.identity)
            except OpError as err:
                log.warning("event=harbor.enter_refused harbor=%s agent=%s error=%r", plan.harbor, plan.agent_id,
                            err.message)

    # -- reporting -------------------------------------------------------------------------
    def _on_transition(self, process: Process, old: State, new: State) -> None:
        plan = self.plans.get(process)
        if plan is None or not plan.register:
            return  # watchers are light per-message commands: their output is in their log only
        args: dict[str, Any] = {
            "id": plan.run_id, "state": str(new), "agentId": plan.agent_id, "backend": plan.backend,
            "fleet": plan.fleet, "agent": plan.agent, "model": plan.model, "task": plan.task[:TASK_REPORT_MAX],
            "identity": plan.identity, "purpose": plan.purpose[:2000] or None, "trigger": plan.trigger[:400] or None,
            "pid": process.pid, "pidStart": process.pid_start, "respawns": process.respawns,
            "logPath": str(plan.log_path), "sessionId": plan.session_id, "runnerPid": self.pid,
            "runnerStart": self.start,
        }
        if new in (State.BACKOFF, State.EXITED, State.FATAL, State.STOPPED):
            args.update(outcome=process.outcome, exitCode=process.exit_code, reason=(process.reason or "")[:2000])
        try:
            reply = self.link.call("spawn.report", **args)
        except OpError as err:
            log.warning("event=run.report_refused run=%s state=%s error=%r", plan.run_id, new, err.message)
            return
        if reply and reply.get("killRequested") and process.active:
            process.stop()

    # -- while running ---------------------------------------------------------------------
    def heartbeat(self, force: bool = False) -> None:
        """Heartbeat on behalf of every registered run still in flight, every fleet_heartbeat_interval_ms."""
        now = self.mono()
        if not force and now - self._last_heartbeat < self.config.fleet_heartbeat_interval_ms / 1000:
            return
        self._last_heartbeat = now
        for process, plan in self.plans.items():
            if plan.register and process.active:
                self.link.fire("heartbeat", agentId=plan.agent_id)

    def active_ids(self) -> list[str]:
        return [plan.run_id for process, plan in self.plans.items() if process.active]

    def stop_ids(self, ids: list[str] | set[str]) -> int:
        """Stop the runs with these run ids (a kill request); return how many."""
        wanted = set(ids)
        n = 0
        for process, plan in self.plans.items():
            if (plan.run_id in wanted or plan.agent_id in wanted) and process.active:
                process.stop()
                n += 1
        return n

    # -- finishing -------------------------------------------------------------------------
    def finish(self, process: Process) -> RunPlan | None:
        """A run is over: end its session and publish on_success / on_failure."""
        plan = self.plans.pop(process, None)
        if plan is None:
            return None
        duration_ms = int((time.time() - plan.started_wall) * 1000)
        outcome = process.outcome or "failure"
        if plan.register:
            self._end_session(plan, process, outcome, duration_ms)
        channel = plan.on_success if outcome == "success" else (plan.on_failure if outcome != "killed" else None)
        if channel:
            payload = {"event": "fleet.run.finished", "fleet": plan.fleet, "agent": plan.agent,
                       "agentId": plan.agent_id, "runId": plan.run_id, "outcome": outcome,
                       "exitCode": process.exit_code, "state": str(process.state), "durationMs": duration_ms,
                       "trigger": plan.trigger, **{k: v for k, v in plan.event.items() if k in ("commit", "branch") and v}}
            try:
                self.link.call("msg.publish", channel=channel, payload=payload, sender=plan.agent_id)
            except OpError as err:
                log.warning("event=run.publish_refused run=%s channel=%s error=%r", plan.run_id, channel, err.message)
        log.info("event=run.finished run=%s agent=%s outcome=%s exit=%s duration_ms=%d", plan.run_id, plan.agent_id,
                 outcome, process.exit_code, duration_ms)
        return plan

    def _end_session(self, plan: RunPlan, process: Process, outcome: str, duration_ms: int) -> None:
        """Success ends the session completed, a kill abandoned; a failure was declared dead by the core."""
        if outcome in ("success", "killed"):
            status = "completed" if outcome == "success" else "abandoned"
            note = (f"fleet run {plan.run_id} {'finished' if outcome == 'success' else 'was killed'} "
                    f"(exit code {process.exit_code}) after {duration_ms / 1000:.1f}s; log: {plan.log_path}")
            try:
                self.link.call("sugar.done", agentId=plan.agent_id, sessionId=plan.session_id, note=note,
                               status=status, noteType="progress" if outcome == "success" else "handoff")
            except OpError as err:
                if err.code not in ("not_found", "session_ended"):
                    log.warning("event=run.done_refused run=%s error=%r", plan.run_id, err.message)
