"""A fleet runner killed with kill -9 leaves no orphaned agents: the restarted runner stops them (fleet/orphans.py).

The daemon's runner (`python -m fleet`, the supervisor's child) is killed; the supervisor starts a
new one, which stops the processes the dead one left running (same pid AND same start time only)
and records their runs lost, so their agents' sessions go to salvage. Only the custom backend runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil

from tests.integration.test_fleet import make_project, wait_for

REAP_WITHIN_S = 15.0


def runner_pids(daemon) -> list[int]:
    """The daemon's fleet runner(s): the supervisor's `python -m fleet` children."""
    try:
        children = psutil.Process(daemon.supervisor_pid()).children(recursive=False)
    except psutil.Error:
        return []
    out = []
    for child in children:
        try:
            if child.cmdline()[-2:] == ["-m", "fleet"] and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child.pid)
        except psutil.Error:
            pass
    return out


def kill_runner(daemon) -> int:
    """kill -9 the daemon's fleet runner; return the new runner's pid once the supervisor restarted it."""
    old = wait_for(lambda: runner_pids(daemon), what="the daemon's fleet runner")[0]
    os.kill(old, signal.SIGKILL)
    return wait_for(lambda: [p for p in runner_pids(daemon) if p != old], what="the restarted runner")[0]


def gone(pid: int) -> bool:
    """Exited (or a zombie nobody reaped yet: it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def run_of(client, run_id: str) -> dict:
    return client.call("spawn.get", agentId=run_id)["spawn"]


def sleeper() -> subprocess.Popen:
    """A process of the test's own, in its own session (so a group signal to it reaches nothing else)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL,
                            start_new_session=True)


def dead_process() -> tuple[int, float]:
    """The pid and start time of a process that has exited: a runner that died."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdin=subprocess.DEVNULL)
    start = psutil.Process(proc.pid).create_time()
    proc.kill()
    proc.wait(5)
    return proc.pid, start


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


SLEEPER_FLEET = """
name: NAME
agents:
  sleeper:
    trigger: go
    backend: custom
    prompt: |
      sleep 60 &
      echo $! > child.pid
      exec PYTHON -c 'import os, time; open("agent.pid", "w").write(str(os.getpid())); time.sleep(60)'
"""


def test_a_restarted_runner_stops_the_agents_its_killed_predecessor_left_running(fresh_daemon, tmp_path):
    folder = make_project(tmp_path, SLEEPER_FLEET.replace("PYTHON", sys.executable))
    name, client = folder.name, fresh_daemon.client()
    detach = fresh_daemon.pd("fleet", "up", "--detach", cwd=folder)
    assert detach.returncode == 0, detach.stderr
    wait_for(lambda: client.call("fleet.status", name=name)["fleet"]["running"], what="the daemon to run the fleet")
    client.call("msg.publish", channel=f"{name}:fleet:go", payload="work")
    agent_file, child_file = folder / "agent.pid", folder / "child.pid"
    wait_for(lambda: agent_file.exists() and agent_file.read_text() and child_file.exists() and child_file.read_text(),
             what="the agent to write its pids")
    agent_pid, child_pid = int(agent_file.read_text()), int(child_file.read_text())
    run = wait_for(lambda: [r for r in client.call("spawn.list", fleet=name)["agents"]
                            if r["state"] == "RUNNING" and r["pid"] == agent_pid], what="the run's record")[0]
    # the record names the child exactly: pid and start time, and the runner that started it
    assert abs(run["pidStart"] - psutil.Process(agent_pid).create_time()) < 0.01
    old_runner = runner_pids(fresh_daemon)[0]
    assert (run["runnerPid"], round(run["runnerStart"], 2)) == (old_runner,
                                                                round(psutil.Process(old_runner).create_time(), 2))

    killed_at = time.monotonic()
    new_runner = kill_runner(fresh_daemon)
    wait_for(lambda: gone(agent_pid) and gone(child_pid), timeout=REAP_WITHIN_S,
             what=f"the orphaned agent {agent_pid} and its child {child_pid} to be stopped\n{fresh_daemon.log_tail()}")
    assert time.monotonic() - killed_at < REAP_WITHIN_S
    ended = wait_for(lambda: (r := run_of(client, run["id"]))["state"] == "STOPPED" and r, what="the run's end")
    assert (ended["outcome"], ended["status"]) == ("lost", "failed"), ended
    assert f"fleet runner (pid {old_runner}) died" in ended["reason"] and "was stopped" in ended["reason"]
    log = fresh_daemon.log_tail(400)
    assert "event=fleet.orphan_reaped" in log and f"run={run['id']}" in log
    # recorded as a lost run is: the agent is declared dead, so its session's unfinished work goes to salvage
    entries = wait_for(lambda: client.call("salvage.list", project=name)["entries"], what="the salvage entry")
    assert entries[0]["agentId"] == f"{name}:fleet:sleeper"
    # the new runner runs the fleet again and nothing of the old run is left
    fleet = wait_for(lambda: (f := client.call("fleet.status", name=name)["fleet"])["running"] and f,
                     what="the new runner to run the fleet")
    assert fleet["runner"]["pid"] == new_runner and fleet["activeRuns"] == 0


def test_a_reused_pid_is_never_killed_only_the_same_process(fresh_daemon):
    client = fresh_daemon.client()
    wait_for(lambda: runner_pids(fresh_daemon), what="the daemon's fleet runner")
    reused, victim = sleeper(), sleeper()
    try:
        runner_pid, runner_start = dead_process()
        tag = uuid.uuid4().hex[:8]
        victim_start = psutil.Process(victim.pid).create_time()
        reused_start = psutil.Process(reused.pid).create_time()
        # runs of a runner that died: one names `reused` by pid but with another start time (its pid was
        # reused by our sleeper), the other names `victim` exactly (pid and start time)
        common = {"state": "RUNNING", "backend": "custom", "runnerPid": runner_pid, "runnerStart": runner_start}
        client.call("spawn.report", id=f"run-reused-{tag}", agentId=f"reused-{tag}", pid=reused.pid,
                    pidStart=reused_start - 3.0, **common)
        client.call("spawn.report", id=f"run-same-{tag}", agentId=f"same-{tag}", pid=victim.pid,
                    pidStart=victim_start, **common)
        # a run of a live runner (this test process) is not an orphan, even with its process alive
        client.call("spawn.report", id=f"run-live-{tag}", agentId=f"live-{tag}", pid=reused.pid,
                    pidStart=reused_start, state="RUNNING", backend="custom", runnerPid=os.getpid(),
                    runnerStart=psutil.Process().create_time())
        assert run_of(client, f"run-reused-{tag}")["pidStart"] == reused_start - 3.0

        kill_runner(fresh_daemon)
        same = wait_for(lambda: (r := run_of(client, f"run-same-{tag}"))["state"] == "STOPPED" and r,
                        timeout=REAP_WITHIN_S, what=f"the matching run to be reaped\n{fresh_daemon.log_tail()}")
        assert same["outcome"] == "lost" and "was stopped" in same["reason"]
        victim.wait(REAP_WITHIN_S)  # the process that matched was stopped
        other = wait_for(lambda: (r := run_of(client, f"run-reused-{tag}"))["state"] == "STOPPED" and r,
                         what="the reused-pid run to be recorded lost")
        assert other["outcome"] == "lost" and "had ended" in other["reason"], other
        assert reused.poll() is None, "a process whose start time did not match was killed"
        assert run_of(client, f"run-live-{tag}")["state"] == "RUNNING"  # its runner is alive
        log = fresh_daemon.log_tail(400)
        reaped = [line for line in log.splitlines() if "event=fleet.orphan_reaped" in line]
        assert any(f"run=run-same-{tag}" in line for line in reaped), log
        assert not any(f"run-reused-{tag}" in line or f"run-live-{tag}" in line for line in reaped)
        time.sleep(0.5)
        assert reused.poll() is None
    finally:
        stop(reused)
        stop(victim)
