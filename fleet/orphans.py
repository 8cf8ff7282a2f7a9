"""Cleaning up after a fleet runner that died: its agents' processes are stopped, their runs lost.

A runner killed with `kill -9` cannot stop its children, and nothing else reaches them: each
leads its own session. Left alone they would run on unsupervised (no heartbeats, no timeout,
no log framing) while the restarted runner starts the same agents again, doubling the work.

So every run record carries what names its child exactly: the child's pid and start time
(psutil create_time) and the runner's pid and start time (`spawn.report` with `pidStart` and
`runnerStart`). When a runner starts, before it fires any trigger, it asks the core for the
active runs (`spawn.list`) and, for each run whose runner is gone (no process with that pid
and that start time, or a zombie):

- a child still alive with the same start time has its tree and process group stopped
  (SIGTERM, SIGKILL after `fleet_kill_grace_ms`: `fleet.supervisor.stop_orphans`), logged
  `event=fleet.orphan_reaped`;
- either way the run is reported STOPPED with outcome `lost`, as the core's sweep records a
  run of a silent runner, so its agent is declared dead and its session goes to salvage.

A pid whose start time differs belongs to another process now and is never signalled. Runs
of a runner that is alive (another `pd fleet up`, or this one) are not touched; a run without
a recorded runner start time (recorded before this existed) is left to the core's sweep.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import psutil

from fleet.link import CoreLink
from fleet.supervisor import stop_orphans
from pdcore.config import Config
from pdcore.errors import OpError
from pdcore.procs import same_start

log = logging.getLogger("pd.fleet.orphans")

LIST_LIMIT = 10_000


def same_process(pid: Any, start: Any) -> psutil.Process | None:
    """The process `pid` if it is still the one that started at `start` (a reused pid is not), else None."""
    if not isinstance(pid, int) or pid <= 0 or not isinstance(start, (int, float)):
        return None
    try:
        proc = psutil.Process(pid)
        if not same_start(proc.create_time(), float(start)):
            return None
        return proc
    except (psutil.Error, ValueError, OverflowError):
        return None


def runner_alive(pid: Any, start: Any) -> bool:
    """Is the runner that recorded a run still running (same pid, same start time, not a zombie)?"""
    proc = same_process(pid, start)
    if proc is None:
        return False
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap_orphans(link: CoreLink, config: Config, fleet: str | None = None) -> bool:
    """Stop the children that dead runners left running (of `fleet`, or of every fleet and spawn) and
    record their runs lost. Return False when the core could not be asked (try again before starting
    anything), True otherwise."""
    try:
        reply = link.call("spawn.list", active=True, fleet=fleet, limit=LIST_LIMIT)
    except OpError as err:
        log.warning("event=fleet.orphans_unchecked fleet=%s error=%r", fleet, err.message)
        return True
    if reply is None:
        return False
    orphans: list[tuple[dict, psutil.Process | None]] = []
    for run in reply.get("agents") or []:
        if not isinstance(run, dict) or run.get("state") == "PENDING":
            continue
        runner_pid, runner_start = run.get("runnerPid"), run.get("runnerStart")
        if runner_start is None or runner_alive(runner_pid, runner_start):
            continue  # recorded before start times were (the core's sweep), or its runner still runs it
        orphans.append((run, same_process(run.get("pid"), run.get("pidStart"))))
    if not orphans:
        return True
    how = stop_orphans([proc for _, proc in orphans if proc is not None], config.fleet_kill_grace_ms / 1000)
    me = os.getpid()
    for run, proc in orphans:
        runner = f"its fleet runner (pid {run.get('runnerPid')}) died"
        if proc is None:
            reason = f"{runner}; its agent process had ended"
        else:
            stopped = how.get(proc.pid, "SIGTERM")
            reason = f"{runner}; its agent process {proc.pid} was left running and was stopped ({stopped})"
            log.warning("event=fleet.orphan_reaped run=%s agent=%s fleet=%s pid=%d signal=%r dead_runner_pid=%s",
                        run.get("id"), run.get("agentId"), run.get("fleet"), proc.pid, stopped, run.get("runnerPid"))
        try:
            link.call("spawn.report", id=run["id"], state="STOPPED", outcome="lost", reason=reason, runnerPid=me)
        except OpError as err:
            if err.code != "invalid_state":  # it ended meanwhile: nothing to record
                log.warning("event=fleet.orphan_report_refused run=%s error=%r", run.get("id"), err.message)
        if proc is None:
            log.info("event=fleet.orphan_lost run=%s agent=%s why=%r", run.get("id"), run.get("agentId"), reason)
    return True
