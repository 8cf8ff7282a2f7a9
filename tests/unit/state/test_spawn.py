"""Fleet and spawn records in the core (SPEC.md §11): spawns, runner reports, fleets, salvage of failed runs."""

import pytest

from pdcore.errors import OpError
from pdcore.state.spawn import CHANNEL, status_of


class Conn:
    def __init__(self, id: int) -> None:
        self.id = id


def fleet_events(harness, event: str) -> list[dict]:
    return [m["message"] for ch, m in harness.delivered if ch == CHANNEL and m["message"].get("event") == event]


def test_spawn_waits_until_exactly_one_runner_claims_it(harness):
    sp = harness.state.spawn
    made = sp.create(harness.ctx(), task="echo hi", backend="custom", cwd="/tmp", timeout=5000)
    agent_id = made["agentId"]
    assert (made["state"], made["status"], made["runnerAttached"]) == ("PENDING", "pending", False)
    assert fleet_events(harness, "spawn.requested")[0]["agentId"] == agent_id
    claimed = sp.claim(harness.ctx(conn=Conn(1)), id=agent_id)
    assert claimed["spec"] == {"cwd": "/tmp", "timeout": 5000} and claimed["spawn"]["state"] == "STARTING"
    with pytest.raises(OpError) as info:
        sp.claim(harness.ctx(conn=Conn(2)), id=agent_id)
    assert info.value.code == "already_claimed"
    sp.report(harness.ctx(conn=Conn(1)), id=agent_id, state="RUNNING", pid=4242)
    done = sp.report(harness.ctx(conn=Conn(1)), id=agent_id, state="EXITED", outcome="success", exitCode=0)
    assert (done["spawn"]["status"], done["spawn"]["exitCode"], done["spawn"]["pid"]) == ("completed", 0, 4242)
    listed = sp.list(harness.ctx())
    assert listed["count"] == 1 and listed["agents"][0]["agentId"] == agent_id
    assert sp.list(harness.ctx(), active=True)["count"] == 0


@pytest.mark.parametrize("args,field", [
    ({"task": "x", "backend": "claud"}, "backend"),
    ({"task": "x", "backend": "ollama"}, "model"),
    ({"task": "   "}, "task"),
    ({"task": "x", "cwd": "relative/dir"}, "cwd"),
    ({"task": "x", "env": {"BAD NAME": "v"}}, "env"),
])
def test_create_refuses_bad_input_naming_the_field(harness, args, field):
    with pytest.raises(OpError) as info:
        harness.state.spawn.create(harness.ctx(), **args)
    assert info.value.field == field


def test_claude_is_accepted_for_claude_cli(harness):
    assert harness.state.spawn.create(harness.ctx(), task="review", backend="claude")["backend"] == "claude-cli"


def test_kill_stops_a_waiting_spawn_at_once_and_asks_the_runner_for_a_running_one(harness):
    sp = harness.state.spawn
    waiting = sp.create(harness.ctx(), task="sleep 1", backend="custom")["agentId"]
    killed = sp.kill(harness.ctx(), agentId=waiting)
    assert killed["runs"][0]["state"] == "STOPPED" and killed["runs"][0]["status"] == "killed"
    running = sp.create(harness.ctx(), task="sleep 100", backend="custom")["agentId"]
    conn = Conn(7)
    sp.claim(harness.ctx(conn=conn), id=running)
    sp.report(harness.ctx(conn=conn), id=running, state="RUNNING", pid=1)
    sp.kill(harness.ctx(), agentId=running)
    assert fleet_events(harness, "spawn.kill")[-1]["ids"] == [running]
    again = sp.report(harness.ctx(conn=conn), id=running, state="RUNNING")
    assert again["killRequested"] is True
    assert sp.fleet_report(harness.ctx(conn=conn), runner="daemon")["killRequested"] == [running]
    sp.report(harness.ctx(conn=conn), id=running, state="STOPPED", exitCode=-15)
    with pytest.raises(OpError) as info:
        sp.kill(harness.ctx(), agentId=running)
    assert info.value.code == "invalid_state"


def test_a_failed_run_sends_its_agents_session_to_salvage(harness):
    state = harness.state
    began = state.sugar.begin(harness.ctx(), purpose="fleet app/qa: git:committed", identity="app:fleet:qa",
                              agentId="app:fleet:qa")
    sp = state.spawn
    sp.report(harness.ctx(conn=Conn(1)), id="run-1", state="STARTING", agentId="app:fleet:qa", backend="custom",
              fleet="app", agent="qa", sessionId=began["sessionId"])
    sp.report(harness.ctx(conn=Conn(1)), id="run-1", state="BACKOFF", outcome="failure", exitCode=3)
    assert state.agents.is_live("app:fleet:qa")  # a respawn is coming: not dead yet
    sp.report(harness.ctx(conn=Conn(1)), id="run-1", state="STARTING")
    sp.report(harness.ctx(conn=Conn(1)), id="run-1", state="FATAL", outcome="failure", exitCode=3, respawns=3)
    assert not state.agents.is_live("app:fleet:qa")
    pending = state.salvage.list(harness.ctx(), status="pending")
    assert [e["sessionId"] for e in pending["entries"]] == [began["sessionId"]]
    run = sp.get(harness.ctx(), agentId="run-1")["spawn"]
    assert (run["state"], run["status"], run["respawns"]) == ("FATAL", "failed", 3)


def test_a_successful_run_does_not_touch_the_agent(harness):
    state = harness.state
    state.sugar.begin(harness.ctx(), purpose="p", agentId="app:fleet:doc")
    state.spawn.report(harness.ctx(conn=Conn(1)), id="run-2", state="RUNNING", agentId="app:fleet:doc",
                       backend="custom")
    state.spawn.report(harness.ctx(conn=Conn(1)), id="run-2", state="EXITED", outcome="success", exitCode=0)
    assert state.agents.is_live("app:fleet:doc")


def test_a_finished_run_does_not_go_back(harness):
    sp = harness.state.spawn
    sp.report(harness.ctx(conn=Conn(1)), id="r", state="RUNNING", agentId="a", backend="custom")
    sp.report(harness.ctx(conn=Conn(1)), id="r", state="EXITED", outcome="success", exitCode=0)
    sp.report(harness.ctx(conn=Conn(1)), id="r", state="EXITED")  # a repeat is fine
    with pytest.raises(OpError) as info:
        sp.report(harness.ctx(conn=Conn(1)), id="r", state="RUNNING")
    assert info.value.code == "invalid_state"


def test_runs_and_registered_fleets_survive_a_restart(harness):
    sp = harness.state.spawn
    agent_id = sp.create(harness.ctx(), task="t", backend="custom")["agentId"]
    sp.fleet_register(harness.ctx(), name="app", projectDir="/src/app")
    harness.reopen()
    sp = harness.state.spawn
    assert sp.get(harness.ctx(), agentId=agent_id)["spawn"]["state"] == "PENDING"
    assert [f["name"] for f in sp.fleet_list(harness.ctx())["fleets"]] == ["app"]
    assert sp.fleet_report(harness.ctx(conn=Conn(3)), runner="daemon")["pending"] == [agent_id]


def test_one_runner_per_fleet(harness):
    sp = harness.state.spawn
    first = sp.fleet_report(harness.ctx(conn=Conn(1)), runner="foreground", runnerPid=11, name="app",
                            projectDir="/src/app", harbor="app:fleet", agents=[{"name": "qa", "state": "STOPPED"}])
    assert first["attached"] is True and first["fleet"]["running"] is True
    with pytest.raises(OpError) as info:
        sp.fleet_report(harness.ctx(conn=Conn(2)), runner="foreground", runnerPid=22, name="app")
    assert info.value.code == "fleet_running"
    with pytest.raises(OpError) as info:
        sp.fleet_register(harness.ctx(), name="app", projectDir="/src/app")
    assert info.value.code == "fleet_running"
    status = sp.fleet_status(harness.ctx(), name="app")["fleet"]
    assert (status["runner"]["pid"], status["agents"][0]["name"], status["managed"]) == (11, "qa", "foreground")
    harness.state.connection_closed(1)  # the first runner went away: the fleet is free
    assert fleet_events(harness, "fleet.stopped")[-1]["name"] == "app"
    sp.fleet_report(harness.ctx(conn=Conn(2)), runner="foreground", runnerPid=22, name="app")
    assert sp.fleet_status(harness.ctx(), name="app")["fleet"]["runner"]["pid"] == 22


def test_a_registered_fleet_is_the_daemons(harness):
    sp = harness.state.spawn
    made = sp.fleet_register(harness.ctx(), name="app", projectDir="/src/app", file="/src/app/pd-fleet.yml")
    assert made["registered"] is True and made["runnerAttached"] is False
    assert fleet_events(harness, "fleet.registered")[-1]["projectDir"] == "/src/app"
    with pytest.raises(OpError) as info:
        sp.fleet_report(harness.ctx(conn=Conn(1)), runner="foreground", runnerPid=1, name="app")
    assert info.value.code == "fleet_running"
    reply = sp.fleet_report(harness.ctx(conn=Conn(2)), runner="daemon", runnerPid=2)
    assert [r["name"] for r in reply["registered"]] == ["app"]
    sp.fleet_report(harness.ctx(conn=Conn(2)), runner="daemon", runnerPid=2, name="app", agents=[])
    assert sp.fleet_status(harness.ctx(), name="app")["fleet"]["managed"] == "daemon"
    down = sp.fleet_down(harness.ctx(), name="app")
    assert (down["unregistered"], down["stopping"]) == (True, True)
    assert fleet_events(harness, "fleet.down")[-1]["name"] == "app"
    with pytest.raises(OpError):  # the daemon runner holds an unregistered fleet no more
        sp.fleet_report(harness.ctx(conn=Conn(2)), runner="daemon", runnerPid=2, name="app")


@pytest.mark.parametrize("name", ["my app", "a/b", "x" * 65])
def test_fleet_names_are_folder_names(harness, name):
    with pytest.raises(OpError) as info:
        harness.state.spawn.fleet_register(harness.ctx(), name=name, projectDir="/src")
    assert info.value.code == "invalid_name"


def test_a_silent_runners_runs_are_lost_and_salvaged(make_harness):
    harness = make_harness(fleet_runner_stale_ms=1000)
    state = harness.state
    state.sugar.begin(harness.ctx(), purpose="p", agentId="app:fleet:qa")
    state.spawn.report(harness.ctx(conn=Conn(1)), id="run-9", state="RUNNING", agentId="app:fleet:qa",
                       backend="custom")
    harness.advance(1500)
    assert state.spawn.get(harness.ctx(), agentId="run-9")["spawn"]["state"] == "RUNNING"
    harness.advance(1500)
    run = state.spawn.get(harness.ctx(), agentId="run-9")["spawn"]
    assert (run["state"], run["outcome"]) == ("STOPPED", "lost")
    assert not state.agents.is_live("app:fleet:qa")


def test_history_keeps_the_newest_runs(make_harness):
    harness = make_harness(spawn_history_max=3)
    sp = harness.state.spawn
    for i in range(5):
        sp.report(harness.ctx(conn=Conn(1)), id=f"r{i}", state="EXITED", agentId="a", backend="custom",
                  outcome="success")
        harness.clock.advance(1)
    assert [r["id"] for r in sp.list(harness.ctx())["agents"]] == ["r4", "r3", "r2"]


def test_manual_run_needs_a_running_fleet_with_that_agent(harness):
    sp = harness.state.spawn
    with pytest.raises(OpError):
        sp.fleet_run(harness.ctx(), name="app", agent="qa")
    sp.fleet_report(harness.ctx(conn=Conn(1)), runner="foreground", runnerPid=1, name="app",
                    agents=[{"name": "qa"}])
    assert sp.fleet_run(harness.ctx(), name="app", agent="qa")["requested"] is True
    assert fleet_events(harness, "fleet.run")[-1] == {"event": "fleet.run", "name": "app", "agent": "qa", "by": None}
    with pytest.raises(OpError) as info:
        sp.fleet_run(harness.ctx(), name="app", agent="nope")
    assert info.value.field == "agent"


def test_status_words_match_port_daddy_3_8():
    assert [status_of(s, o) for s, o in [("PENDING", None), ("RUNNING", None), ("BACKOFF", "failure"),
                                         ("EXITED", "success"), ("EXITED", "timeout"), ("FATAL", "failure"),
                                         ("STOPPED", "killed")]] == \
        ["pending", "running", "running", "completed", "failed", "failed", "killed"]


def test_report_pins_the_child_and_the_runner_by_start_time_across_a_restart(harness):
    sp = harness.state.spawn
    agent_id = sp.create(harness.ctx(), task="sleep 60", backend="custom", cwd="/tmp")["agentId"]
    sp.claim(harness.ctx(conn=Conn(1)), id=agent_id)
    run = sp.report(harness.ctx(conn=Conn(1)), id=agent_id, state="RUNNING", pid=4242, pidStart=1234.5,
                    runnerPid=77, runnerStart=99.25)["spawn"]
    assert (run["pid"], run["pidStart"], run["runnerPid"], run["runnerStart"]) == (4242, 1234.5, 77, 99.25)
    harness.reopen()
    again = next(a for a in harness.state.spawn.list(harness.ctx(), active=True)["agents"] if a["agentId"] == agent_id)
    assert (again["pidStart"], again["runnerPid"], again["runnerStart"]) == (1234.5, 77, 99.25)
    # a new process without a start time is never taken for the old one
    moved = harness.state.spawn.report(harness.ctx(conn=Conn(1)), id=agent_id, state="RUNNING", pid=5151)["spawn"]
    assert (moved["pid"], moved["pidStart"]) == (5151, None)
