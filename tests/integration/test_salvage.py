"""Salvage against a live daemon: a killed agent process reaches the queue within the reaper
interval, a reused pid is not taken for the agent, concurrent claims have exactly one winner,
and the claim / complete / abandon / dismiss cycle through HTTP (both route names) and the CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

from pdcore.errors import OpError

REAPER_MS = 500


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def quick_reaper():
    """A daemon whose reaper checks pids every REAPER_MS (shared by this module's tests)."""
    from tests.conftest import Daemon

    d = Daemon(ipc_rate_limit=0, reaper_interval_ms=REAPER_MS).start()
    yield d
    d.stop()


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def _wait_for(predicate, timeout: float, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def _entry(daemon, agent: str, project: str | None = None) -> dict | None:
    path = "/salvage" + (f"?project={project}" if project else "")
    status, body = daemon.http("GET", path)
    assert status == 200
    return next((e for e in body["entries"] if e["agentId"] == agent), None)


def _dead_agent_with_work(daemon, project: str, files=("src/db/*.sql",)) -> str:
    """An agent whose process is killed while its session is open; returns once it is in salvage."""
    agent = unique("victim")
    proc = _sleeper()
    try:
        client = daemon.client()
        began = client.call("sugar.begin", purpose="migrating the schema", identity=f"{project}:db", agentId=agent,
                            pid=proc.pid, files=list(files))
        client.call("note.add", id=began["sessionId"], content="step 1 of 3 done", type="progress")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert _wait_for(lambda: _entry(daemon, agent), 10), "the dead agent never reached the salvage queue"
    return agent


def test_killed_agent_process_appears_in_salvage_within_the_reaper_interval(quick_reaper, tmp_path):
    d = quick_reaper
    agent, project = unique("child"), unique("proj")
    # a real agent: a shell that begins a session tied to itself, then works (sleeps)
    script = (f"{sys.executable} -m cli.main begin 'long task' --agent {agent} --identity {project} --pid shell "
              f"--files 'src/**' -q && echo READY && sleep 120")
    child = subprocess.Popen(["bash", "-c", script], env=d.env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        while True:
            line = child.stdout.readline()  # type: ignore[union-attr]
            assert line, f"the child exited before it was ready: {''.join(lines)}"
            lines.append(line)
            if line.strip() == "READY":
                break
        assert _entry(d, agent) is None
        os.killpg(child.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        entry = _wait_for(lambda: _entry(d, agent, project), REAPER_MS / 1000 + 1, step=0.01)
        elapsed = time.monotonic() - killed_at
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert entry is not None, "not in salvage within the reaper interval + 1 s"
    assert elapsed <= REAPER_MS / 1000 + 1
    assert entry["files"] == ["src/**"] and entry["purpose"] == "long task" and entry["reason"] == "process gone"
    res = d.pd("salvage", "--project", project)
    assert res.returncode == 0 and agent in res.stdout and "long task" in res.stdout


def test_a_reused_pid_is_not_taken_as_alive(fresh_daemon):
    d = fresh_daemon
    proc = _sleeper()
    try:
        client = d.client()
        impostor, honest = unique("reused"), unique("honest")
        client.call("sugar.begin", purpose="old incarnation", agentId=impostor, pid=proc.pid)
        client.call("sugar.begin", purpose="same process", agentId=honest, pid=proc.pid)
        # Make the record say the pid belonged to a process that started earlier: exactly what a pid
        # reused by a new process looks like. The core reloads it from the database on restart.
        db = sqlite3.connect(d.home / "state.db", timeout=10)
        try:
            db.execute("UPDATE agents SET pid_start = pid_start - 1000 WHERE id=?", (impostor,))
            db.commit()
        finally:
            db.close()
        d.kill_core()
        after = d.client()
        assert _wait_for(lambda: _entry(d, impostor), 10), "an agent on a reused pid was taken as alive"
        assert after.call("agent.get", id=impostor)["agent"]["status"] == "dead"
        time.sleep(0.2)
        assert after.call("agent.get", id=honest)["agent"]["status"] == "alive"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_sixteen_concurrent_claims_produce_exactly_one_winner(quick_reaper):
    d = quick_reaper
    dead = _dead_agent_with_work(d, unique("race"))
    claimers = [unique("claimer") for _ in range(16)]
    results: dict[str, object] = {}
    barrier = threading.Barrier(len(claimers))

    def claim(i: int, who: str) -> None:
        barrier.wait(timeout=10)
        if i % 2:
            status, body = d.http("POST", f"/salvage/claim/{dead}", {"claimedBy": who})
            results[who] = body if status == 200 else OpError(body["code"], body["error"])
        else:
            try:
                results[who] = d.client(transport="ipc").call("salvage.claim", agentId=dead, claimedBy=who)
            except OpError as exc:
                results[who] = exc

    threads = [threading.Thread(target=claim, args=(i, who)) for i, who in enumerate(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [who for who, r in results.items() if isinstance(r, dict)]
    losers = [r for r in results.values() if isinstance(r, OpError)]
    assert len(results) == 16 and len(winners) == 1
    assert all(e.code == "already_claimed" for e in losers)
    entry = _entry(d, dead)
    assert entry["status"] == "claimed" and entry["claimedBy"] == winners[0]
    owners = d.http("GET", "/files/who-owns?path=src/db/001.sql")[1]["owners"]
    assert [o["agentId"] for o in owners] == winners


def test_claim_abandon_complete_and_dismiss_through_both_route_names(quick_reaper):
    d = quick_reaper
    project = unique("cycle")
    dead = _dead_agent_with_work(d, project)
    rescuer = unique("rescuer")
    status, body = d.http("POST", f"/resurrection/claim/{dead}", {"claimedBy": rescuer})
    assert status == 200 and body["inheritedFiles"] == ["src/db/*.sql"]
    assert d.http("GET", f"/salvage/pending?project={project}")[1]["count"] == 0
    status, body = d.http("POST", f"/salvage/abandon/{dead}", {"claimedBy": rescuer})
    assert status == 200 and body["status"] == "pending"
    assert d.http("GET", f"/resurrection/pending?project={project}")[1]["count"] == 1
    assert d.http("POST", f"/salvage/complete/{dead}", {"claimedBy": rescuer})[1]["code"] == "invalid_state"
    d.http("POST", f"/salvage/claim/{dead}", {"claimedBy": rescuer})
    status, body = d.http("POST", f"/salvage/complete/{dead}", {"claimedBy": unique("other")})
    assert status == 409 and body["code"] == "not_owner"
    status, body = d.http("POST", f"/salvage/complete/{dead}", {"claimedBy": rescuer})
    assert status == 200 and body["status"] == "completed"
    assert _entry(d, dead) is None
    other = _dead_agent_with_work(d, project)
    status, body = d.http("DELETE", f"/salvage/{other}")
    assert status == 200 and body["dismissed"] == 1
    assert d.http("GET", f"/salvage?project={project}")[1]["count"] == 0
    assert d.http("GET", f"/salvage?project={project}&status=all")[1]["count"] == 2


def test_cli_salvage_and_the_begin_hint(quick_reaper, tmp_path):
    d = quick_reaper
    project = unique("hint")
    dead = _dead_agent_with_work(d, project)
    me = unique("me")
    env = {"PORT_DADDY_AGENT": me}
    res = d.pd("begin", "picking up", "--identity", project, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "salvage" in res.stdout and dead in res.stdout
    res = d.pd("salvage", "--project", project, env=env, cwd=tmp_path)
    assert res.returncode == 0 and dead in res.stdout and "step 1 of 3 done" in res.stdout
    res = d.pd("salvage", "claim", dead, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "src/db/*.sql" in res.stdout
    res = d.pd("salvage", "claim", dead, "--as", unique("late"), env=env, cwd=tmp_path)
    assert res.returncode == 1 and "claimed by" in res.stderr
    res = d.pd("salvage", "complete", dead, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = d.pd("salvage", "dismiss", dead, env=env, cwd=tmp_path)  # nothing open: idempotent, as 3.7
    assert res.returncode == 0 and "dismissed 0 entries" in res.stdout, res.stderr


def test_salvage_claim_with_no_agent_in_the_terminal_exits_1(quick_reaper, tmp_path):
    env = {k: v for k, v in quick_reaper.env.items() if k not in ("PORT_DADDY_AGENT", "PORT_DADDY_SESSION")}
    res = subprocess.run([sys.executable, "-m", "cli.main", "salvage", "claim", unique("gone")], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=30, start_new_session=True)
    assert res.returncode == 1 and "no agent in this terminal" in res.stderr, (res.returncode, res.stderr)
