import os
import subprocess
import sys

import pytest

from pdcore.errors import OpError
from pdcore.state import agents as agents_module

MIN = 60_000


def _child() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


def test_liveness_goes_alive_stale_dead_with_configured_thresholds(make_harness):
    h = make_harness(agent_stale_ms=10 * MIN, agent_dead_ms=20 * MIN)
    h.state.agents.register(h.ctx(), id="a1")
    status = lambda: h.state.agents.get(h.ctx(), id="a1")["agent"]["status"]  # noqa: E731
    assert status() == "alive"
    h.advance(10 * MIN)
    assert status() == "stale"
    h.advance(10 * MIN)
    assert status() == "dead"


def test_heartbeat_keeps_agent_alive_without_writing_sql(harness):
    ag = harness.state.agents
    ag.register(harness.ctx(), id="hb")
    harness.store.commit()
    writes = harness.store.writes
    heap_size = len(ag._heap)
    for _ in range(100):
        harness.clock.advance(1000)
        ag.heartbeat(harness.ctx(), id="hb")
    assert harness.store.writes == writes
    assert len(ag._heap) == heap_size  # a heartbeat never touches the reaper's heap
    assert ag.get(harness.ctx(), id="hb")["agent"]["lastHeartbeat"] == harness.clock.now


def test_heartbeat_for_unknown_agent_registers_it(harness):
    out = harness.state.agents.heartbeat(harness.ctx(), id="newcomer")
    assert out["registered"] is True
    assert harness.state.agents.get(harness.ctx(), id="newcomer")["agent"]["status"] == "alive"


def test_heartbeat_takes_agent_id_from_the_ipc_payload(harness):
    harness.state.agents.register(harness.ctx(), id="ctx-agent")
    harness.clock.advance(5000)
    harness.state.agents.heartbeat(harness.ctx(agent_id="ctx-agent"))
    assert harness.state.agents.get(harness.ctx(), id="ctx-agent")["agent"]["lastHeartbeat"] == harness.clock.now


def test_heartbeat_without_any_id_is_refused(harness):
    with pytest.raises(OpError) as exc:
        harness.state.agents.heartbeat(harness.ctx())
    assert exc.value.field == "id"


def test_reaper_declares_silent_agent_dead_and_announces_it(make_harness):
    h = make_harness(agent_dead_ms=20 * MIN)
    h.state.agents.register(h.ctx(), id="silent")
    h.advance(20 * MIN - 1)
    assert h.state.agents.by_id["silent"].dead_at is None
    h.advance(1)
    agent = h.state.agents.by_id["silent"]
    assert agent.dead_at == h.clock.now and agent.dead_reason == "no heartbeat"
    events = [m for ch, m in h.delivered if ch == "pd:agents" and m["message"]["event"] == "agent.dead"]
    assert events and events[0]["message"]["agentId"] == "silent"
    acts = h.state.activity.list(h.ctx(), type="agent.dead")["activities"]
    assert acts and acts[0]["target"] == "silent"


def test_heartbeats_postpone_death(make_harness):
    h = make_harness(agent_dead_ms=10_000, heartbeat_flush_ms=1000)
    h.state.agents.register(h.ctx(), id="busy")
    for _ in range(30):
        h.advance(5000)
        h.state.agents.heartbeat(h.ctx(), id="busy")
    assert h.state.agents.by_id["busy"].dead_at is None
    h.advance(10_000)
    assert h.state.agents.by_id["busy"].dead_at is not None


def test_a_reaper_tick_with_nothing_due_does_no_work(make_harness, monkeypatch):
    h = make_harness(agent_dead_ms=20 * MIN, reaper_interval_ms=5000)
    for i in range(500):
        h.state.agents.register(h.ctx(), id=f"quiet-{i}")
    ag = h.state.agents
    checked = []
    monkeypatch.setattr(agents_module, "process_alive", lambda *a: checked.append(a) or True)
    heap_before = list(ag._heap)
    for _ in range(20):  # 100 s of reaper intervals
        h.advance(5000)
    assert ag._heap == heap_before  # not one entry was looked at
    assert ag._timer_due == heap_before[0][0]  # the reaper sleeps until the first heartbeat deadline
    assert checked == []


def test_agent_whose_process_exits_is_dead_within_the_reaper_interval(make_harness):
    h = make_harness(reaper_interval_ms=1000)
    proc = _child()
    try:
        h.state.agents.register(h.ctx(), id="proc-agent", pid=proc.pid)
        h.advance(1000)
        assert h.state.agents.by_id["proc-agent"].dead_at is None
    finally:
        _kill(proc)
    h.advance(1000)
    agent = h.state.agents.by_id["proc-agent"]
    assert agent.dead_at is not None and agent.dead_reason == "process gone"


def test_a_reused_pid_is_not_taken_for_the_agent(make_harness):
    h = make_harness(reaper_interval_ms=1000)
    h.state.agents.register(h.ctx(), id="old-incarnation", pid=os.getpid())
    # the pid is alive, but it is a different process than the one registered (other start time)
    h.state.agents.by_id["old-incarnation"].pid_start -= 1000
    h.advance(1000)
    assert h.state.agents.by_id["old-incarnation"].dead_reason == "process gone"


def test_dead_agents_pid_claims_are_released(make_harness):
    h = make_harness(reaper_interval_ms=1000)
    proc = _child()
    try:
        h.state.ports.claim(h.ctx(), id="dying:api", pid=proc.pid)
        h.state.agents.register(h.ctx(), id="dying", pid=proc.pid)
    finally:
        _kill(proc)
    h.advance(1000)
    assert h.state.agents.by_id["dying"].dead_at is not None
    assert h.state.ports.list(h.ctx(), pattern="dying:*")["count"] == 0


def test_dead_agent_is_told_to_other_primitives(harness, monkeypatch):
    seen = []
    monkeypatch.setattr(type(harness.state.salvage), "on_agent_dead",
                        lambda self, ctx, agent_id, pid: seen.append((agent_id, pid)), raising=True)
    harness.state.agents.register(harness.ctx(), id="told", pid=os.getpid())
    harness.state.agents.mark_dead(harness.ctx(), harness.state.agents.by_id["told"], "test")
    assert seen == [("told", os.getpid())]


def test_register_with_a_pid_that_is_not_running_is_refused(harness):
    proc = _child()
    _kill(proc)
    with pytest.raises(OpError) as exc:
        harness.state.agents.register(harness.ctx(), id="ghost", pid=proc.pid)
    assert exc.value.code == "invalid_argument" and exc.value.field == "pid"
    assert "ghost" not in harness.state.agents.by_id


def test_reregistering_updates_and_revives(harness):
    ag = harness.state.agents
    ag.register(harness.ctx(), id="re", purpose="first")
    ag.mark_dead(harness.ctx(), ag.by_id["re"], "test")
    out = ag.register(harness.ctx(), id="re", purpose="second")
    assert out["created"] is True
    agent = ag.get(harness.ctx(), id="re")["agent"]
    assert agent["purpose"] == "second" and agent["status"] == "alive"


def test_unregister_and_unknown_agent(harness):
    harness.state.agents.register(harness.ctx(), id="bye")
    assert harness.state.agents.unregister(harness.ctx(), id="bye")["unregistered"] is True
    with pytest.raises(OpError) as exc:
        harness.state.agents.get(harness.ctx(), id="bye")
    assert exc.value.code == "not_found"
    with pytest.raises(OpError):
        harness.state.agents.unregister(harness.ctx(), id="bye")


def test_list_active_leaves_out_the_dead(harness):
    ag = harness.state.agents
    ag.register(harness.ctx(), id="up")
    ag.register(harness.ctx(), id="down")
    ag.mark_dead(harness.ctx(), ag.by_id["down"], "test")
    assert [a["id"] for a in ag.list(harness.ctx(), active=True)["agents"]] == ["up"]
    assert ag.list(harness.ctx())["count"] == 2


def test_heartbeats_are_persisted_lazily_in_batches(make_harness):
    h = make_harness(heartbeat_flush_ms=5000)
    h.state.agents.register(h.ctx(), id="lazy")
    h.store.commit()
    h.clock.advance(3000)
    h.state.agents.heartbeat(h.ctx(), id="lazy")
    stamped = h.clock.now
    stored = lambda: h.store.read_one("SELECT last_heartbeat FROM agents WHERE id='lazy'")[0]  # noqa: E731
    assert stored() < stamped
    h.advance(5000)
    assert stored() == stamped


def test_restart_keeps_recent_agents_alive_and_gives_late_ones_a_grace(make_harness):
    h = make_harness(agent_dead_ms=20 * MIN, agent_restart_grace_ms=MIN, heartbeat_flush_ms=1000)
    h.state.agents.register(h.ctx(), id="steady")
    h.state.agents.register(h.ctx(), id="gone")
    h.advance(19 * MIN)
    h.state.agents.heartbeat(h.ctx(), id="steady")
    h.advance(1000)  # the heartbeat is flushed
    h.reopen()
    h.advance(2 * MIN)  # "gone" is past its threshold but gets the grace first
    ag = h.state.agents
    assert ag.by_id["steady"].dead_at is None
    assert ag.by_id["gone"].dead_at is not None


def test_restart_of_a_long_stopped_daemon_does_not_revive_the_dead(make_harness):
    h = make_harness(agent_dead_ms=MIN)
    h.state.agents.register(h.ctx(), id="was-dead")
    h.advance(MIN)
    assert h.state.agents.by_id["was-dead"].dead_at is not None
    h.reopen()
    assert h.state.agents.get(h.ctx(), id="was-dead")["agent"]["status"] == "dead"


def test_dead_agents_are_forgotten_after_retention(make_harness):
    h = make_harness(agent_dead_ms=MIN, agent_dead_retention_ms=10 * MIN)
    h.state.agents.register(h.ctx(), id="old")
    h.advance(MIN)
    h.advance(10 * MIN)
    assert "old" not in h.state.agents.by_id
    assert h.store.read_one("SELECT COUNT(*) FROM agents WHERE id='old'")[0] == 0
