"""The fleet's process supervisor: each agent run is a child process under a small state machine.

Like supervisord's `process.py`, a run (`Process`) moves through explicit states, and every
transition is checked against `TRANSITIONS`, recorded and announced:

    STOPPED --start--> STARTING --alive--> RUNNING --exit 0--> EXITED (success)
    STARTING/RUNNING --failed--> BACKOFF --delay--> STARTING   (respawn, while under max_respawns)
    STARTING/RUNNING --failed--> FATAL                         (respawns used up: circuit breaker open)
    STARTING/RUNNING --failed--> EXITED (failure)              (no respawn)
    any active --stop--> STOPPED                               (killed: SIGTERM, SIGKILL after a grace)

"Failed" is a non-zero exit, a timeout (the run is killed) or a command that cannot start.
An agent (`Program`) has a state too: its newest run's, except FATAL, which holds once a run
opened the circuit breaker, so no new run starts until `reset()` (a new `pd fleet up`).

Children run in their own session (so a stop reaches everything they started), with stdin
closed and stdout+stderr appended to the agent's log file. Nothing here blocks: `poll()` is
called from the runner's loop; `clock` is injectable.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import psutil

from pdcore.paths import rotate_log

log = logging.getLogger("pd.fleet.supervisor")


class State(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    EXITED = "EXITED"
    FATAL = "FATAL"


ACTIVE = frozenset({State.STARTING, State.RUNNING, State.BACKOFF})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.EXITED, State.BACKOFF, State.FATAL, State.STOPPED}),
    State.RUNNING: frozenset({State.EXITED, State.BACKOFF, State.FATAL, State.STOPPED}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED}),
    State.EXITED: frozenset(),
    State.FATAL: frozenset(),
}

Transition = Callable[["Process", State, State], None]


class InvalidTransition(RuntimeError):
    pass


def _signal_tree(pid: int, sig: int, leader: psutil.Process | None = None) -> None:
    """Signal a child, everything it started (psutil), and its whole session's process group.

    `leader`: the child as a psutil.Process already matched by pid and start time, for a process
    this runner did not start itself (a previous runner's orphan). psutil re-checks that identity
    before each signal, and the group is signalled only while that very process exists (it pins
    its group id), so a reused pid is never reached."""
    if leader is not None and not leader.is_running():
        return
    try:
        root = leader if leader is not None else psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        procs = []
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass
    if leader is not None and not leader.is_running():
        return
    try:
        os.killpg(pid, sig)  # the child leads its own session: this reaches re-parented grandchildren
    except OSError:
        pass


def _still_running(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            pass
    return out


def stop_orphans(leaders: list[psutil.Process], grace_s: float, poll_s: float = 0.05,
                 settle_s: float = 2.0) -> dict[int, str]:
    """Stop processes a previous runner started (each matched by pid and start time) as `Process.stop`
    does: SIGTERM to each one's tree and process group, SIGKILL to what is left after `grace_s`.

    They are not our children (we cannot wait for them), so "gone" means exited or a zombie.
    Returns leader pid -> "SIGTERM", "SIGKILL" or "survived SIGKILL"."""
    trees: dict[int, tuple[psutil.Process, list[psutil.Process]]] = {}
    for leader in leaders:
        try:
            members = [leader, *leader.children(recursive=True)] if leader.is_running() else []
        except psutil.Error:
            members = [leader]
        trees[leader.pid] = (leader, members)
        log.info("event=run.sigterm name=orphan pid=%s", leader.pid)
        _signal_tree(leader.pid, signal.SIGTERM, leader=leader)
    how = {pid: "SIGTERM" for pid in trees}
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_still_running(m) for _, m in trees.values()):
        time.sleep(poll_s)
    for pid, (leader, members) in trees.items():
        left = _still_running(members)
        if left:
            log.warning("event=run.sigkill name=orphan pid=%s", pid)
            _signal_tree(pid, signal.SIGKILL, leader=leader)
            for proc in left:  # members that left the leader's tree and group
                try:
                    proc.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            how[pid] = "SIGKILL"
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline and any(_still_running(m) for _, m in trees.values()):
        time.sleep(poll_s)
    for pid, (_, members) in trees.items():
        if _still_running(members):
            how[pid] = "survived SIGKILL"
    return how


class Process:
    """One agent run: a child process, respawned with backoff on failure, under the state machine."""

    def __init__(self, argv: list[str], *, name: str = "", cwd: str | Path | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None, timeout_s: float | None = None,
                 respawn: bool = False, max_respawns: int = 3, backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 kill_grace_s: float = 5.0, log_max_bytes: int | None = None,
                 clock: Callable[[], float] = time.monotonic, on_transition: Transition | None = None) -> None:
        self.argv = list(argv)
        self.name = name or os.path.basename(argv[0])
        self.cwd = str(cwd) if cwd is not None else None
        self.env = env
        self.log_path = Path(log_path) if log_path is not None else None
        self.timeout_s = timeout_s
        self.respawn = respawn
        self.max_respawns = max_respawns
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.kill_grace_s = kill_grace_s
        self.log_max_bytes = log_max_bytes
        self.clock = clock
        self.on_transition = on_transition
        self.state = State.STOPPED
        self.transitions: list[tuple[float, State, State, str]] = []
        self.pid: int | None = None
        self.pid_start: float | None = None  # psutil create_time: with pid it names this exact process
        self.exit_code: int | None = None
        self.outcome: str | None = None  # success | failure | timeout | spawn_error | killed
        self.reason: str | None = None
        self.attempts = 0
        self.respawns = 0
        self.started_at: float | None = None  # first attempt
        self.attempt_started_at: float | None = None
        self.ended_at: float | None = None
        self.backoff_until: float | None = None
        self._proc: psutil.Popen | None = None
        self._deadline: float | None = None
        self._kill_reason: str | None = None  # why we signalled it: timeout | killed
        self._kill_at: float | None = None  # when to escalate to SIGKILL

    # -- the state machine -----------------------------------------------------------------
    def _to(self, new: State, reason: str = "") -> None:
        old = self.state
        if new not in TRANSITIONS[old]:
            raise InvalidTransition(f"{self.name}: {old} -> {new} is not a transition")
        self.state = new
        self.transitions.append((self.clock(), old, new, reason))
        log.info("event=run.transition name=%s pid=%s from=%s to=%s reason=%r", self.name, self.pid, old, new, reason)
        if self.on_transition is not None:
            self.on_transition(self, old, new)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def finished(self) -> bool:
        return self.state in (State.EXITED, State.FATAL) or (self.state == State.STOPPED and self.attempts > 0)

    # -- starting --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the run (STOPPED -> STARTING)."""
        if self.state != State.STOPPED or self.attempts:
            raise InvalidTransition(f"{self.name}: a run starts once; it is {self.state}")
        self.started_at = self.clock()
        self._spawn()

    def _log_line(self, text: str) -> None:
        if self.log_path is None:
            return
        try:
            with open(self.log_path, "a") as fh:
                fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {self.name}: {text} ---\n")
        except OSError:
            pass

    def _spawn(self) -> None:
        self.attempts += 1
        self.pid = self.pid_start = self.exit_code = None
        self._kill_reason = self._kill_at = None
        self.attempt_started_at = self.clock()
        self._deadline = self.attempt_started_at + self.timeout_s if self.timeout_s else None
        out = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            rotate_log(self.log_path, self.log_max_bytes)
            self._log_line(f"attempt {self.attempts} starting")
            out = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps its own copy of the fd
        # No parent-death signal (prctl PR_SET_PDEATHSIG): it can only be set in the child between fork
        # and exec, i.e. in a preexec_fn, which is unsafe once the process has threads (the runner has
        # listener threads: a lock held by another thread at fork time can deadlock the child), and it
        # would fire when the forking *thread* exits, not the runner. A runner killed with kill -9
        # leaves its children running instead; the next runner stops them (fleet/orphans.py), knowing
        # each one by pid and start time.
        try:
            self._proc = psutil.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except (OSError, ValueError) as exc:
            self._proc = None
            self._to(State.STARTING, f"attempt {self.attempts}")
            self._log_line(f"could not start {self.argv[0]}: {exc}")
            self._failed("spawn_error", 127, f"could not start {self.argv[0]}: {exc}")
            return
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.pid = self._proc.pid
        try:
            self.pid_start = self._proc.create_time()  # not waited for yet, so readable even if it exited
        except psutil.Error:
            self.pid_start = None
        self._to(State.STARTING, f"attempt {self.attempts} pid {self.pid}")

    # -- watching --------------------------------------------------------------------------
    def poll(self) -> bool:
        """Advance the state machine; return True if the state changed."""
        before = (self.state, self.attempts)
        now = self.clock()
        if self.state in (State.STARTING, State.RUNNING):
            code = self._proc.poll() if self._proc is not None else None
            if code is not None:
                self._exited(code)
            else:
                if self.state == State.STARTING:
                    self._to(State.RUNNING, f"pid {self.pid} is up")
                if self._kill_at is not None and now >= self._kill_at:
                    log.warning("event=run.sigkill name=%s pid=%s", self.name, self.pid)
                    _signal_tree(self.pid, signal.SIGKILL)  # type: ignore[arg-type]
                    self._kill_at = None
                elif self._deadline is not None and now >= self._deadline and self._kill_reason is None:
                    self._terminate("timeout")
        elif self.state == State.BACKOFF and self.backoff_until is not None and now >= self.backoff_until:
            self.respawns += 1
            self._spawn()
        return (self.state, self.attempts) != before

    def _exited(self, code: int) -> None:
        self.exit_code = code
        self._proc = None
        self._log_line(f"attempt {self.attempts} exited with code {code} after "
                       f"{self.clock() - (self.attempt_started_at or 0):.1f}s")
        if self._kill_reason == "killed":
            self._finish(State.STOPPED, "killed", "killed")
        elif code == 0 and self._kill_reason is None:
            self._finish(State.EXITED, "success", "exit code 0")
        elif self._kill_reason == "timeout":
            self._failed("timeout", code, f"timed out after {self.timeout_s:g}s")
        else:
            self._failed("failure", code, f"exit code {code}")

    def _failed(self, outcome: str, code: int | None, reason: str) -> None:
        self.exit_code = code
        if self.respawn and self.respawns < self.max_respawns:
            delay = min(self.backoff_s * (2 ** self.respawns), self.backoff_max_s)
            self.backoff_until = self.clock() + delay
            self.outcome, self.reason = outcome, reason
            self._to(State.BACKOFF, f"{reason}; respawn {self.respawns + 1}/{self.max_respawns} in {delay:g}s")
        elif self.respawn:
            self._finish(State.FATAL, outcome, f"{reason}; circuit breaker open after {self.respawns} respawns")
        else:
            self._finish(State.EXITED, outcome, reason)

    def _finish(self, state: State, outcome: str, reason: str) -> None:
        self.outcome, self.reason = outcome, reason
        self.ended_at = self.clock()
        self.backoff_until = None
        self._to(state, reason)

    # -- stopping --------------------------------------------------------------------------
    def _terminate(self, why: str) -> None:
        self._kill_reason = why
        self._kill_at = self.clock() + self.kill_grace_s
        if self.pid is not None:
            log.info("event=run.sigterm name=%s pid=%s why=%s", self.name, self.pid, why)
            _signal_tree(self.pid, signal.SIGTERM)

    def stop(self) -> None:
        """Kill the run: SIGTERM now, SIGKILL after the grace; STOPPED once the child is gone."""
        if self.state == State.BACKOFF or (self.state == State.STOPPED and not self.attempts):
            self.attempts = self.attempts or 0
            if self.state == State.BACKOFF:
                self._finish(State.STOPPED, "killed", "killed while waiting to respawn")
            return
        if self.state in (State.STARTING, State.RUNNING) and self._kill_reason != "killed":
            self._terminate("killed")

    def wait(self, timeout: float, interval: float = 0.02) -> bool:
        """Poll until the run is finished or `timeout` seconds pass (for shutdown and tests)."""
        deadline = time.monotonic() + timeout
        while not self.finished:
            self.poll()
            if self.finished:
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
        return True


class Program:
    """One agent of a fleet: its active runs, counters, and its state (FATAL = circuit breaker open)."""

    def __init__(self, name: str, singleton: bool = False,
                 on_change: Callable[[Program, State, State], None] | None = None) -> None:
        self.name = name
        self.singleton = singleton
        self.on_change = on_change
        self.state = State.STOPPED
        self.processes: list[Process] = []
        self.last: Process | None = None
        self.history: deque[dict] = deque(maxlen=10)
        self.started = self.succeeded = self.failed = self.stopped = self.skipped = 0
        self.breaker_reason: str | None = None

    def refusal(self) -> str | None:
        """Why a new run may not start now, or None."""
        if self.state == State.FATAL:
            return f"circuit breaker open ({self.breaker_reason}); restart the fleet to reset it"
        if self.singleton and self.processes:
            return "singleton: a run is still active"
        return None

    def add(self, process: Process) -> None:
        """Adopt and start a run."""
        chained = process.on_transition

        def on_transition(proc: Process, old: State, new: State) -> None:
            if chained is not None:
                chained(proc, old, new)
            self._observe(proc, new)

        process.on_transition = on_transition
        self.processes.append(process)
        self.last = process
        self.started += 1
        process.start()

    def _observe(self, process: Process, new: State) -> None:
        if new == State.FATAL:
            self.breaker_reason = process.reason
            self._set(State.FATAL)
            return
        if self.state == State.FATAL:
            return
        if process is self.last or not any(p.active for p in self.processes if p is not process):
            self._set(new)

    def _set(self, new: State) -> None:
        old = self.state
        if old != new:
            self.state = new
            log.info("event=agent.transition name=%s from=%s to=%s", self.name, old, new)
            if self.on_change is not None:
                self.on_change(self, old, new)

    def poll(self) -> list[Process]:
        """Advance every run; return the runs that finished now (they leave `processes`)."""
        done = []
        for process in list(self.processes):
            process.poll()
            if process.finished:
                self.processes.remove(process)
                done.append(process)
                if process.outcome == "success":
                    self.succeeded += 1
                elif process.outcome == "killed":
                    self.stopped += 1
                else:
                    self.failed += 1
                self.history.append({"exitCode": process.exit_code, "outcome": process.outcome,
                                     "state": str(process.state), "respawns": process.respawns,
                                     "endedAt": time.time()})
        return done

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def reset(self) -> None:
        """Close the circuit breaker: FATAL -> STOPPED."""
        if self.state == State.FATAL:
            self.breaker_reason = None
            self._set(State.STOPPED)
