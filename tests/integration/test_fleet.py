"""Fleets and spawns against a real daemon (SPEC.md §11). Only the custom backend runs here: never a real LLM CLI.

The daemon-managed runner (`python -m fleet`) is used if the supervisor runs one; otherwise the
`fleet_runner` fixture starts one for this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from fleet.link import CoreLink
from fleet.runner import FleetRunner
from fleet.schema import load_fleet
from pdcore.errors import OpError

REPO = Path(__file__).resolve().parents[2]
GIT_ENV = {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com", "GIT_COMMITTER_NAME": "Ada",
           "GIT_COMMITTER_EMAIL": "ada@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def make_project(tmp_path: Path, fleet_yaml: str) -> Path:
    name = f"fl{uuid.uuid4().hex[:10]}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "pd-fleet.yml").write_text(fleet_yaml.replace("NAME", name))
    return folder


def fleet_running(client, name: str) -> dict | None:
    try:
        fleet = client.call("fleet.status", name=name)["fleet"]
    except OpError:
        return None
    return fleet if fleet["running"] else None


def final_run(client, agent_id: str) -> dict | None:
    runs = client.call("spawn.list", agentId=agent_id)["agents"]
    return runs[0] if runs and runs[0]["state"] in ("EXITED", "FATAL", "STOPPED") else None


class ForegroundFleet:
    """`pd fleet up` in a subprocess, its output in a file."""

    def __init__(self, daemon, folder: Path, **env: str) -> None:
        self.log_path = folder.parent / f"{folder.name}-up.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "fleet", "up"], cwd=folder,
                                     env={**daemon.env, **env}, stdout=self.log, stderr=self.log)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def close(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def fleet_runner(daemon):
    """The daemon's fleet runner: the supervisor's own if it runs one, else one started here."""
    try:
        supervisor = psutil.Process(daemon.supervisor_pid())
        own = [p for p in supervisor.children(recursive=True) if p.cmdline()[-2:] == ["-m", "fleet"]]
    except psutil.Error:
        own = []
    if own:
        yield own[0].pid
        return
    log = open(daemon.home / "fleet-runner-test.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "fleet"], env=daemon.env, cwd=REPO, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    yield proc.pid
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    log.close()


ECHO_FLEET = """
fleet:
  name: NAME
  agents:
    echoer:
      trigger: ping
      backend: custom
      prompt: echo "got {message} from {sender}" >> {project_dir}/out.txt
      on_success: publish pong
    crasher:
      trigger: crash
      backend: custom
      respawn: true
      max_respawns: 1
      prompt: echo crashing; exit 3
      on_failure: publish crashed
    taker:
      trigger: tuple:["job", "*"]
      backend: custom
      prompt: echo {message} >> {project_dir}/tuples.txt
  watchers:
    pong-logger:
      trigger: pong
      exec: echo "watched {message}" >> {project_dir}/watched.txt
"""


def test_a_triggered_custom_agent_runs_once_and_its_on_success_publication_arrives(daemon, tmp_path):
    folder = make_project(tmp_path, ECHO_FLEET)
    name, client = folder.name, daemon.client()
    harbor = f"{name}:fleet"
    pongs = client.subscribe(f"{harbor}:pong", f"{harbor}:crashed")
    up = ForegroundFleet(daemon, folder, PORT_DADDY_FLEET_RESPAWN_BACKOFF_MS="50")
    try:
        wait_for(lambda: fleet_running(client, name), what=f"fleet {name} to run\n{up.output()}")
        client.call("msg.publish", channel=f"{harbor}:ping", payload="hello", sender="tester")
        pong = pongs.next_message(timeout=15)
        assert pong is not None, up.output()
        assert pong["channel"] == f"{harbor}:pong" and pong["sender"] == f"{name}:fleet:echoer"
        finished = pong["message"]
        assert (finished["outcome"], finished["exitCode"], finished["agent"]) == ("success", 0, "echoer")
        time.sleep(0.3)
        assert (folder / "out.txt").read_text() == "got hello from tester\n"  # one run, templates filled
        run = client.call("spawn.list", fleet=name)["agents"][0]
        assert (run["state"], run["status"], run["agentId"], run["trigger"]) == \
            ("EXITED", "completed", f"{name}:fleet:echoer", f"{harbor}:ping")
        assert client.call("agent.list", identity=f"{name}:fleet:echoer")["count"] == 0  # done: unregistered
        assert "exited with code 0" in Path(run["logPath"]).read_text()
        watched = wait_for(lambda: (folder / "watched.txt").exists() and (folder / "watched.txt").read_text(),
                           what="the watcher of pong")
        assert watched.startswith("watched {") and '"outcome":"success"' in watched  # chained, JSON intact

        # a new tuple matching the harbor pattern sets the tuple-triggered agent off
        client.call("tuple.out", fields=["job", "build-42"], harbor=harbor)
        client.call("tuple.out", fields=["other", "x"], harbor=harbor)
        tuples = wait_for(lambda: (folder / "tuples.txt").exists() and (folder / "tuples.txt").read_text(),
                          what="the tuple-triggered run")
        assert "build-42" in tuples and tuples.count("\n") == 1

        # a crash respawns once, then the circuit breaker opens (FATAL); on_failure is published once
        client.call("msg.publish", channel=f"{harbor}:crash", payload="now")
        crashed = pongs.next_message(timeout=15)
        assert crashed is not None and crashed["channel"] == f"{harbor}:crashed", up.output()
        assert (crashed["message"]["state"], crashed["message"]["exitCode"]) == ("FATAL", 3)
        status = wait_for(lambda: next((a for a in fleet_running(client, name)["agents"]
                                        if a["name"] == "crasher" and a["state"] == "FATAL"), None),
                          what="crasher FATAL in status")
        assert (status["circuitBreaker"], status["failed"], status["respawns"]) == ("open", 1, 1)
        crash_run = client.call("spawn.list", fleet=name, agentId=f"{name}:fleet:crasher")["agents"][0]
        salvage = client.call("salvage.list", project=name)["entries"]
        assert [e["sessionId"] for e in salvage] == [crash_run["sessionId"]]  # its session went to salvage
        client.call("msg.publish", channel=f"{harbor}:crash", payload="again")  # breaker open: no run
        assert pongs.next_message(timeout=1.0) is None
        shown = daemon.pd("fleet", "status", cwd=folder)
        assert shown.returncode == 0 and "FATAL" in shown.stdout and "circuit breaker open for crasher" in shown.stdout

        down = daemon.pd("fleet", "down", cwd=folder)
        assert down.returncode == 0, down.stderr
        assert up.proc.wait(15) == 0
        assert fleet_running(client, name) is None
    finally:
        pongs.close()
        up.close()


def test_a_second_runner_for_a_running_fleet_is_refused(daemon, tmp_path):
    folder = make_project(tmp_path, "name: NAME\nagents:\n  a: {trigger: x, backend: custom, prompt: 'true'}\n")
    client = daemon.client()
    first = ForegroundFleet(daemon, folder)
    try:
        wait_for(lambda: fleet_running(client, folder.name), what="first runner")
        second = daemon.pd("fleet", "up", cwd=folder, timeout=30)
        assert second.returncode == 1 and "already" in second.stderr
        detach = daemon.pd("fleet", "up", "--detach", cwd=folder)
        assert detach.returncode == 1 and "foreground" in detach.stderr
    finally:
        first.close()


def epoch(*fields: int) -> float:
    return datetime(*fields).astimezone().timestamp()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_cron_agent_every_minute_runs_at_the_next_minute_on_an_injected_clock(daemon, tmp_path):
    folder = make_project(tmp_path, """
name: NAME
agents:
  ticker:
    schedule: "* * * * *"
    backend: custom
    prompt: echo tick >> {project_dir}/ticks.txt
""")
    result = load_fleet(folder)
    assert result.ok, result.problems
    clock = FakeClock(epoch(2030, 1, 15, 12, 0, 30))
    link = CoreLink(daemon.config)
    runner = FleetRunner(result.spec, link, daemon.config, clock=clock)
    try:
        runner.start()
        ticker = runner.agents["ticker"]
        assert ticker.next_due == epoch(2030, 1, 15, 12, 1, 0)
        clock.now = epoch(2030, 1, 15, 12, 0, 59)
        runner.tick()
        assert ticker.program.started == 0
        clock.now = epoch(2030, 1, 15, 12, 1, 0)
        runner.tick()
        assert ticker.program.started == 1 and ticker.next_due == epoch(2030, 1, 15, 12, 2, 0)
        wait_for(lambda: runner.tick() or not ticker.program.processes, what="the tick run to finish")
        assert (folder / "ticks.txt").read_text() == "tick\n"
        run = link.call("spawn.list", fleet=folder.name)["agents"][0]
        assert (run["trigger"], run["status"]) == ("schedule", "completed")
        clock.now = epoch(2030, 1, 15, 12, 1, 45)
        runner.tick()
        assert ticker.program.started == 1
        status = link.call("fleet.status", name=folder.name)["fleet"]["agents"][0]
        assert status["nextRunAt"] == int(epoch(2030, 1, 15, 12, 2, 0) * 1000)
    finally:
        runner.stop()
        link.close()


def git(folder: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=30)


def test_fleet_init_and_a_commit_publish_git_committed(daemon, tmp_path):
    folder = tmp_path / f"repo{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    env = {**daemon.env, **GIT_ENV}
    assert git(folder, "init", "-q", "-b", "main", env=env).returncode == 0
    init = daemon.pd("fleet", "init", cwd=folder)
    assert init.returncode == 0, init.stderr
    assert "hook installed" in init.stdout
    spec = load_fleet(folder).spec
    assert spec is not None and spec.name == folder.name  # the starter names the fleet after its folder
    client = daemon.client()
    commits = client.subscribe(f"{folder.name}:fleet:git:committed")
    try:
        (folder / "app.py").write_text("print('hi')\n")
        git(folder, "add", "app.py", env=env)
        done = git(folder, "commit", "-q", "-m", "first", env=env)
        assert done.returncode == 0 and done.stderr == ""
        head = git(folder, "rev-parse", "HEAD", env=env).stdout.strip()
        event = commits.next_message(timeout=15)
        assert event is not None, "no git:committed message"
        assert event["message"] == {"commit": head, "branch": "main", "author": "Ada <ada@example.com>",
                                    "subject": "first", "changed_files": ["app.py"]}
    finally:
        commits.close()
    # with the daemon down (no socket in this home) the hook passes silently and fast
    down_env = {**env, "PORT_DADDY_HOME": str(tmp_path / "no-daemon-here")}
    (folder / "b.py").write_text("x = 1\n")
    git(folder, "add", "b.py", env=down_env)
    started = time.monotonic()
    done = git(folder, "commit", "-q", "-m", "second", env=down_env)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert time.monotonic() - started < 2.0
    # init again keeps the edited file and does not add the hook twice
    again = daemon.pd("fleet", "init", cwd=folder)
    assert again.returncode == 0 and "kept" in again.stdout
    assert (folder / ".git" / "hooks" / "post-commit").read_text().count("port-daddy fleet (pd fleet init)") == 1


def test_a_detached_fleet_is_run_by_the_daemon_and_a_failure_goes_to_salvage(daemon, tmp_path, fleet_runner):
    folder = make_project(tmp_path, """
name: NAME
agents:
  failer:
    trigger: boom
    backend: custom
    prompt: echo failing on {message}; exit 3
    on_failure: publish failed
""")
    name, client = folder.name, daemon.client()
    failures = client.subscribe(f"{name}:fleet:failed")
    try:
        detach = daemon.pd("fleet", "up", "--detach", cwd=folder)
        assert detach.returncode == 0 and "registered" in detach.stdout, detach.stderr
        fleet = wait_for(lambda: fleet_running(client, name), what="the daemon runner to run the fleet")
        assert (fleet["managed"], fleet["registered"]) == ("daemon", True)
        client.call("msg.publish", channel=f"{name}:fleet:boom", payload="purpose")
        failed = failures.next_message(timeout=15)
        assert failed is not None and (failed["message"]["outcome"], failed["message"]["exitCode"]) == ("failure", 3)
        entries = wait_for(lambda: client.call("salvage.list", project=name)["entries"], what="salvage entry")
        assert entries[0]["agentId"] == f"{name}:fleet:failer" and "exit code 3" in entries[0]["reason"]
        logs = daemon.pd("fleet", "logs", "failer", cwd=folder)
        assert "failing on purpose" in logs.stdout
        down = daemon.pd("fleet", "down", name)
        assert down.returncode == 0, down.stderr
        wait_for(lambda: name not in [f["name"] for f in client.call("fleet.list")["fleets"]], what="fleet gone")
    finally:
        failures.close()


def test_spawn_runs_a_task_lists_it_and_kills_one(daemon, tmp_path, fleet_runner):
    client = daemon.client()
    status, body = daemon.http("POST", "/spawn", {"backend": "custom", "task": "echo spawned > out.txt",
                                                  "workdir": str(tmp_path), "identity": "spawntest:worker"})
    assert status == 200 and body["success"] and body["status"] == "pending", body
    agent_id = body["agentId"]
    run = wait_for(lambda: final_run(client, agent_id), what="the spawn to finish")
    assert (run["status"], run["exitCode"], run["identity"]) == ("completed", 0, "spawntest:worker")
    assert (tmp_path / "out.txt").read_text() == "spawned\n"
    status, listed = daemon.http("GET", "/spawn")
    assert status == 200 and agent_id in [a["agentId"] for a in listed["agents"]]

    slow = daemon.pd("spawn", "--backend", "custom", "--cwd", str(tmp_path), "sleep 30", "-q")
    assert slow.returncode == 0, slow.stderr
    slow_id = slow.stdout.strip()
    wait_for(lambda: client.call("spawn.get", agentId=slow_id)["spawn"]["state"] == "RUNNING", what="running")
    status, killed = daemon.http("DELETE", f"/spawn/{slow_id}")
    assert status == 200 and killed["agentId"] == slow_id
    run = wait_for(lambda: final_run(client, slow_id), what="the kill")
    assert (run["state"], run["status"]) == ("STOPPED", "killed")
    shown = daemon.pd("spawned", "--json")
    assert {a["agentId"]: a["status"] for a in json.loads(shown.stdout)["agents"]}[slow_id] == "killed"
    status, again = daemon.http("DELETE", f"/spawn/{slow_id}")
    assert status == 409 and again["code"] == "invalid_state"


def test_spawn_help_lists_the_options_of_pd_spawn_task(daemon):
    for args in (("spawn", "--help"), ("help", "spawn")):
        res = daemon.pd(*args)
        assert res.returncode == 0, res.stderr
        for option in ("--backend", "--model", "--identity", "--purpose", "--cwd", "--timeout", "--env", "--file",
                       "--agent-id", "kill", "logs"):
            assert option in res.stdout, (args, option, res.stdout)
        assert "TASK" in res.stdout.splitlines()[0]
    for bad in (("--env", "X", "echo", "hi"), ("--bogus", "x")):  # usage errors point at pd spawn's help
        res = daemon.pd("spawn", *bad)
        assert res.returncode == 2 and "Try 'pd spawn --help'" in res.stderr and "_start" not in res.stderr, res.stderr


@pytest.mark.parametrize("body,field", [
    ({"backend": "claud", "task": "x"}, "backend"),
    ({"backend": "ollama", "task": "x"}, "model"),
    ({"backend": "custom"}, "task"),
    ({"backend": "custom", "task": "x", "cwd": "rel"}, "cwd"),
])
def test_bad_spawns_are_refused_naming_the_field(daemon, body, field):
    status, reply = daemon.http("POST", "/spawn", body)
    assert status == 400 and reply["field"] == field, reply


def test_fleet_routes_refuse_bad_input(daemon):
    status, reply = daemon.http("POST", "/fleet/register", {"name": "bad name", "projectDir": "/x"})
    assert status == 400 and reply["field"] == "name"
    status, reply = daemon.http("POST", "/fleet/register", {"name": "ok", "projectDir": "relative"})
    assert status == 400 and reply["field"] == "projectDir"
    status, reply = daemon.http("GET", f"/fleet/nope{uuid.uuid4().hex[:6]}")
    assert status == 404
    status, reply = daemon.http("GET", "/fleet")
    assert status == 200 and "fleets" in reply


def test_validate_and_up_name_the_key_and_the_fix(daemon, tmp_path):
    folder = make_project(tmp_path, """
name: someone-else
agents:
  qa:
    trigger: git:committed
    backend: claud
    prompt: "review {comit}"
    schedule: "every minute"
""")
    checked = daemon.pd("fleet", "validate", cwd=folder)
    assert checked.returncode == 1
    text = checked.stdout
    assert f"set name: {folder.name}" in text
    assert "agents.qa.backend: unknown backend 'claud'" in text
    assert "agents.qa.prompt: unknown template variable {comit}" in text
    assert "agents.qa.schedule" in text
    up = daemon.pd("fleet", "up", cwd=folder)
    assert up.returncode == 1 and "not started" in up.stderr
    as_json = json.loads(daemon.pd("fleet", "validate", "--json", cwd=folder).stdout)
    assert as_json["ok"] is False and {p["key"] for p in as_json["problems"]} >= {"name", "agents.qa.backend"}


def test_a_foreground_fleet_survives_a_core_restart(fresh_daemon, tmp_path):
    folder = make_project(tmp_path, """
name: NAME
agents:
  echoer:
    trigger: ping
    backend: custom
    prompt: echo {message} >> {project_dir}/out.txt
""")
    name, client = folder.name, fresh_daemon.client()
    up = ForegroundFleet(fresh_daemon, folder)
    try:
        wait_for(lambda: fleet_running(client, name), what=f"fleet to run\n{up.output()}")
        client.call("msg.publish", channel=f"{name}:fleet:ping", payload="before")
        wait_for(lambda: (folder / "out.txt").exists(), what="the first run")
        fresh_daemon.kill_core()
        client.close()
        wait_for(lambda: fleet_running(client, name), what=f"the runner to re-attach\n{up.output()}")
        client.call("msg.publish", channel=f"{name}:fleet:ping", payload="after")
        wait_for(lambda: (folder / "out.txt").read_text() == "before\nafter\n", what=f"the second run\n{up.output()}")
        assert up.proc.poll() is None
    finally:
        up.close()
