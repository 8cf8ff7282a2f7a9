"""The fleet supervisor's state machine with real short-lived children (SPEC.md §11, STYLE.md supervisord).

STOPPED -> STARTING -> RUNNING -> EXITED; failures go to BACKOFF and respawn while under
max_respawns, then FATAL (the circuit breaker, a state); stop/timeout kill the whole tree.
"""

import time

import psutil
import pytest

from fleet.supervisor import TRANSITIONS, InvalidTransition, Process, Program, State

FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "kill_grace_s": 0.5}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settle(process: Process, timeout: float = 10.0) -> None:
    assert process.wait(timeout), f"{process.name} still {process.state} after {timeout}s"


def poll_until(process: Process, state: State, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while process.state != state:
        assert time.monotonic() < deadline, f"still {process.state}, wanted {state}"
        process.poll()
        time.sleep(0.01)


def path_of(process: Process) -> list[str]:
    return [f"{old}>{new}" for _, old, new, _ in process.transitions]


def skipping_running(path: list[str]) -> list[str]:
    """The path as if every child exited before a poll saw it up (a quick `exit 3` may or may not be seen)."""
    return [p.replace("RUNNING>", "STARTING>") for p in path if p != "STARTING>RUNNING"]


def test_every_transition_is_declared_and_checked():
    process = Process(["true"])
    with pytest.raises(InvalidTransition):
        process._to(State.RUNNING)
    assert TRANSITIONS[State.EXITED] == frozenset() and TRANSITIONS[State.FATAL] == frozenset()
    assert State.STARTING in TRANSITIONS[State.BACKOFF]


def test_a_run_that_exits_zero_is_exited_with_success(tmp_path):
    log = tmp_path / "qa.log"
    process = Process(["sh", "-c", "echo checked the commit; sleep 0.2"], log_path=log)
    process.start()
    poll_until(process, State.RUNNING)
    settle(process)
    assert path_of(process) == ["STOPPED>STARTING", "STARTING>RUNNING", "RUNNING>EXITED"]
    assert (process.outcome, process.exit_code, process.attempts) == ("success", 0, 1)
    text = log.read_text()
    assert "checked the commit" in text and "attempt 1 starting" in text and "exited with code 0" in text


def test_a_failure_without_respawn_is_exited_with_its_exit_code():
    process = Process(["sh", "-c", "exit 3"], **FAST)
    process.start()
    settle(process)
    assert path_of(process)[-1].endswith(">EXITED")
    assert (process.state, process.outcome, process.exit_code, process.respawns) == (State.EXITED, "failure", 3, 0)


def test_respawn_with_backoff_until_the_circuit_breaker_opens():
    seen: list[tuple[State, State]] = []
    process = Process(["sh", "-c", "exit 3"], respawn=True, max_respawns=2, on_transition=lambda p, a, b:
                      seen.append((a, b)), **FAST)
    program = Program("qa")
    program.add(process)
    deadline = time.monotonic() + 10
    while program.processes and time.monotonic() < deadline:
        program.poll()
        time.sleep(0.005)
    assert skipping_running(path_of(process)) == ["STOPPED>STARTING", "STARTING>BACKOFF", "BACKOFF>STARTING",
                                                  "STARTING>BACKOFF", "BACKOFF>STARTING", "STARTING>FATAL"]
    assert seen == [(State(a), State(b)) for a, b in (p.split(">") for p in path_of(process))]
    assert (process.attempts, process.respawns, process.exit_code) == (3, 2, 3)
    assert "circuit breaker open after 2 respawns" in process.reason
    assert program.state == State.FATAL and program.failed == 1
    assert "circuit breaker open" in program.refusal()
    program.reset()
    assert program.state == State.STOPPED and program.refusal() is None


def test_backoff_doubles_on_the_injected_clock():
    clock = FakeClock()
    process = Process(["sh", "-c", "exit 1"], respawn=True, max_respawns=3, backoff_s=1.0, backoff_max_s=3.0,
                      clock=clock)
    process.start()
    poll_until(process, State.BACKOFF)
    assert process.backoff_until == clock.now + 1.0
    process.poll()
    assert process.state == State.BACKOFF  # no time passed: no respawn
    clock.now += 1.0
    process.poll()
    assert process.state == State.STARTING and process.respawns == 1
    poll_until(process, State.BACKOFF)
    assert process.backoff_until == clock.now + 2.0
    clock.now += 2.0
    process.poll()
    poll_until(process, State.BACKOFF)
    assert process.backoff_until == clock.now + 3.0  # capped at backoff_max_s


def test_a_command_that_cannot_start_fails_with_127_and_respawns_too():
    process = Process(["/nonexistent/agent-cli"], respawn=True, max_respawns=1, **FAST)
    process.start()
    settle(process)
    assert (process.state, process.outcome, process.exit_code, process.attempts) == (State.FATAL, "spawn_error", 127, 2)


def test_a_timeout_kills_the_run_and_counts_as_a_failure():
    process = Process(["sh", "-c", "sleep 30"], timeout_s=0.2, **FAST)
    started = time.monotonic()
    process.start()
    settle(process)
    assert (process.state, process.outcome) == (State.EXITED, "timeout")
    assert time.monotonic() - started < 5
    assert "timed out after 0.2s" in process.reason


def test_stop_kills_the_whole_tree():
    process = Process(["sh", "-c", "sleep 30 & sleep 30; wait"], **FAST)
    process.start()
    poll_until(process, State.RUNNING)
    time.sleep(0.1)
    tree = [process.pid] + [c.pid for c in psutil.Process(process.pid).children(recursive=True)]
    assert len(tree) >= 3
    process.stop()
    settle(process)
    assert (process.state, process.outcome) == (State.STOPPED, "killed")
    time.sleep(0.1)
    alive = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_a_child_ignoring_sigterm_gets_sigkill_after_the_grace():
    process = Process(["sh", "-c", "trap '' TERM; sleep 30"], kill_grace_s=0.3)
    process.start()
    poll_until(process, State.RUNNING)
    stopped_at = time.monotonic()
    process.stop()
    settle(process)
    assert process.state == State.STOPPED and process.exit_code == -9
    assert time.monotonic() - stopped_at >= 0.3


def test_stop_during_backoff_ends_the_run_without_respawning():
    process = Process(["sh", "-c", "exit 2"], respawn=True, max_respawns=5, backoff_s=30)
    process.start()
    poll_until(process, State.BACKOFF)
    process.stop()
    assert (process.state, process.outcome, process.attempts) == (State.STOPPED, "killed", 1)


def test_a_singleton_refuses_overlap_and_others_may_overlap():
    single = Program("qa", singleton=True)
    single.add(Process(["sh", "-c", "sleep 0.3"]))
    assert single.refusal() == "singleton: a run is still active"
    many = Program("docs")
    many.add(Process(["sh", "-c", "sleep 0.3"]))
    assert many.refusal() is None
    many.add(Process(["sh", "-c", "exit 0"]))
    deadline = time.monotonic() + 10
    while (single.processes or many.processes) and time.monotonic() < deadline:
        single.poll()
        many.poll()
        time.sleep(0.01)
    assert (single.succeeded, many.succeeded, many.started) == (1, 2, 2)
    assert single.state == State.EXITED and single.refusal() is None


def test_a_run_starts_once():
    process = Process(["true"])
    process.start()
    with pytest.raises(InvalidTransition):
        process.start()
    settle(process)
