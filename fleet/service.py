"""The daemon-managed fleet runner (`python -m fleet`): registered fleets and ad-hoc spawns.

The supervisor starts it beside the core and the HTTP server. It is an IPC client of the core
and holds no state the core lacks: on start, on every report interval and after a reconnect it
asks the core (`fleet.report` as the daemon runner) which fleets are registered and which
spawns wait, then starts what is missing and stops what was unregistered. Events on `pd:fleet`
(`fleet.registered`, `fleet.down`, `fleet.run`, `spawn.requested`, `spawn.kill`) make it act at
once; the periodic reconciliation catches whatever was missed while it or the core was away.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

from fleet import paths
from fleet.backends import build_argv
from fleet.link import CoreLink, Listener
from fleet.orphans import reap_orphans
from fleet.runner import FleetConflict, FleetRunner
from fleet.runs import RunBook, RunPlan
from fleet.schema import load_fleet
from fleet.supervisor import Program
from pdcore.config import Config
from pdcore.errors import OpError
from pdcore.state.spawn import CHANNEL as CONTROL_CHANNEL

log = logging.getLogger("pd.fleet.service")

RETRY_BROKEN_S = 30.0  # a registered fleet whose file does not validate is read again this often


class SpawnRunner:
    """Ad-hoc spawns (`POST /spawn`): one Program per spawned agent."""

    def __init__(self, link: CoreLink, config: Config) -> None:
        self.link = link
        self.config = config
        self.book = RunBook(link, config)
        self.programs: dict[str, Program] = {}

    def take(self, run_id: str) -> bool:
        """Claim a waiting spawn (exactly one runner wins) and start it."""
        try:
            reply = self.link.call("spawn.claim", id=run_id, runnerPid=os.getpid())
        except OpError as err:
            if err.code not in ("already_claimed", "not_found"):
                log.warning("event=spawn.claim_refused id=%s error=%r", run_id, err.message)
            return False
        if not reply:
            return False
        spawn, spec = reply["spawn"], reply.get("spec") or {}
        agent_id = spawn["agentId"]
        timeout = spec.get("timeout")
        plan = RunPlan(
            run_id=spawn["id"], agent_id=agent_id, backend=spawn["backend"], argv=[], cwd=spec.get("cwd") or
            str(Path.home()), env={**os.environ, **(spec.get("env") or {})},
            log_path=paths.spawn_log(self.config.home, agent_id),
            timeout_s=timeout / 1000 if timeout else self.config.fleet_run_timeout_ms / 1000,
            model=spawn.get("model"), task=spawn.get("task") or "", identity=spawn.get("identity"),
            purpose=spawn.get("purpose") or "", trigger="spawn")
        try:
            plan.argv = build_argv(plan.backend, plan.task, plan.model, None, spec.get("files"))
        except ValueError as exc:
            self.link.call("spawn.report", id=plan.run_id, state="EXITED", outcome="spawn_error", reason=str(exc),
                           runnerPid=os.getpid())
            return False
        program = Program(agent_id)
        self.programs[agent_id] = program
        log.info("event=spawn.start id=%s backend=%s", plan.run_id, plan.backend)
        self.book.launch(program, plan)
        return True

    def tick(self) -> None:
        for agent_id, program in list(self.programs.items()):
            for process in program.poll():
                self.book.finish(process)
            if not program.processes:
                del self.programs[agent_id]
        self.book.heartbeat()

    def stop(self, wait_s: float) -> None:
        for program in self.programs.values():
            program.stop()
        deadline = time.monotonic() + wait_s
        while self.programs and time.monotonic() < deadline:
            self.tick()
            time.sleep(0.02)
        self.tick()


class FleetService:
    """Everything `python -m fleet` runs."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.link = CoreLink(config)
        self.inbox: queue.Queue = queue.Queue()
        self.fleets: dict[str, FleetRunner] = {}
        self.broken: dict[str, tuple[str, float]] = {}  # name -> (error, when to read again)
        self.spawns = SpawnRunner(self.link, config)
        self.control: Listener | None = None
        self._last_sync = 0.0
        self._orphans_checked = False  # a previous runner's children dealt with (fleet/orphans.py)

    # -- reconciliation with the core ------------------------------------------------------
    def sync(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_sync < self.config.fleet_report_interval_ms / 1000:
            return
        self._last_sync = now
        if not self._orphans_checked:
            # before anything starts: stop what a runner killed with kill -9 left running
            self._orphans_checked = reap_orphans(self.link, self.config)
            if not self._orphans_checked:
                return  # the core is away: start nothing yet
        try:
            reply = self.link.call("fleet.report", runner="daemon", runnerPid=os.getpid(),
                                   runs=self.spawns.book.active_ids())
        except OpError as err:
            log.warning("event=service.report_refused error=%r", err.message)
            return
        if reply is None:
            return
        registered = {row["name"]: row for row in reply.get("registered", [])}
        for name in list(self.fleets):
            if name not in registered:
                self._stop_fleet(name, "unregistered")
        for name in list(self.broken):
            if name not in registered:
                del self.broken[name]
        for name, row in registered.items():
            if name not in self.fleets:
                self._start_fleet(name, row)
        for run_id in reply.get("pending", []):
            self.spawns.take(run_id)
        if reply.get("killRequested"):
            self.spawns.book.stop_ids(reply["killRequested"])

    def _start_fleet(self, name: str, row: dict) -> None:
        broken = self.broken.get(name)
        if broken is not None and time.monotonic() < broken[1]:
            self._report_broken(name, row, broken[0])
            return
        result = load_fleet(row.get("file") or row["projectDir"])
        if not result.ok or result.spec is None or result.spec.name != name:
            problems = "; ".join(str(p) for p in result.errors) or f"the fleet file names another fleet, not {name}"
            self.broken[name] = (problems, time.monotonic() + RETRY_BROKEN_S)
            log.error("event=fleet.invalid fleet=%s problems=%r", name, problems)
            self._report_broken(name, row, problems)
            return
        self.broken.pop(name, None)
        runner = FleetRunner(result.spec, self.link, self.config, kind="daemon")
        try:
            runner.start(self.inbox, include_control=False)
        except FleetConflict as exc:
            log.error("event=fleet.conflict fleet=%s why=%r", name, str(exc))
            if runner.listener is not None:
                runner.listener.stop()
            return
        self.fleets[name] = runner

    def _report_broken(self, name: str, row: dict, problems: str) -> None:
        try:
            self.link.call("fleet.report", runner="daemon", runnerPid=os.getpid(), name=name,
                           projectDir=row.get("projectDir"), agents=[], error=problems[:8000])
        except OpError:
            pass

    def _stop_fleet(self, name: str, why: str) -> None:
        runner = self.fleets.pop(name, None)
        if runner is not None:
            log.info("event=fleet.stopping fleet=%s why=%s", name, why)
            runner.stop()

    # -- events ----------------------------------------------------------------------------
    def dispatch(self, tag: str, kind: str, delivery: dict | None) -> None:
        if kind == "reconnected":
            runner = self.fleets.get(tag)
            if runner is not None:
                try:
                    runner.report(force=True)
                except FleetConflict as exc:
                    log.error("event=fleet.lost fleet=%s why=%r", tag, str(exc))
                    self._stop_fleet(tag, "lost")
            self.sync(force=True)
            return
        if not isinstance(delivery, dict):
            return
        if tag != "control":
            runner = self.fleets.get(tag)
            if runner is not None:
                runner.handle(delivery)
            return
        event = delivery.get("message") if isinstance(delivery.get("message"), dict) else {}
        what = event.get("event")
        if what == "fleet.registered":
            name = event.get("name")
            self.broken.pop(str(name), None)
            self._stop_fleet(str(name), "registered again")  # re-read the file
            self.sync(force=True)
        elif what == "spawn.requested" and self._orphans_checked:  # else the next sync takes it
            self.spawns.take(str(event.get("id")))
        elif what == "spawn.kill":
            self.spawns.book.stop_ids([*event.get("ids", []), event.get("agentId", "")])
        for runner in list(self.fleets.values()):
            runner.handle(delivery)
            if runner.stop_requested:
                self._stop_fleet(runner.spec.name, "pd fleet down")

    def tick(self) -> None:
        for name, runner in list(self.fleets.items()):
            try:
                runner.tick()
            except FleetConflict as exc:
                log.error("event=fleet.lost fleet=%s why=%r", name, str(exc))
                self._stop_fleet(name, "lost")
        self.spawns.tick()
        self.sync()

    def run(self, stop: threading.Event) -> None:
        self.control = Listener(self.config, [CONTROL_CHANNEL], self.inbox, "control")
        self.control.start()
        self.sync(force=True)  # reaps a previous runner's orphans first
        try:
            while not stop.is_set():
                try:
                    tag, kind, delivery = self.inbox.get(timeout=0.1)
                except queue.Empty:
                    pass
                else:
                    self.dispatch(tag, kind, delivery)
                self.tick()
                if not self.control.is_alive() and not stop.is_set():
                    self.control = Listener(self.config, [CONTROL_CHANNEL], self.inbox, "control")
                    self.control.start()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        if self.control is not None:
            self.control.stop()
        for name in list(self.fleets):
            self._stop_fleet(name, "shutdown")
        self.spawns.stop(self.config.fleet_kill_grace_ms / 1000 + 2)
        self.link.close()
