"""The core's dispatch in-process (no sockets): fire-and-forget frames and their decode cache."""

from __future__ import annotations

import asyncio
import os

import pytest

from pdcore import protocol as P
from pdcore.config import load_config
from pdcore.core import Connection, Core
from tests.unit.fakes import FakeTransport, core_on_fake_connection


@pytest.fixture
def core(tmp_path):
    with core_on_fake_connection(tmp_path, ipc_rate_limit=0) as (c, conn, _transport, _loop):
        yield c, conn


def test_repeated_heartbeat_frames_each_run_the_handler(core):
    c, conn = core
    frame = P.encode(P.REQUEST, 0, {"action": "heartbeat", "id": "agent-ff"})
    conn.data_received(frame * 50)
    agents = c.state.agents
    assert agents.by_id["agent-ff"] is not None
    before = agents.heartbeats
    conn.data_received(frame * 50)
    assert agents.heartbeats == before + 50
    assert c.stats["ops"] == 100 and c.stats["errors"] == 0
    assert len(c._ff_cache) == 1


def test_only_valid_scalar_fire_and_forget_payloads_are_cached(core):
    c, conn = core
    bad = P.encode(P.REQUEST, 0, {"action": "heartbeat", "id": "bad id!"})
    nested = P.encode(P.REQUEST, 0, {"action": "msg.publish", "channel": "c", "payload": {"k": [1]}})
    not_ff = P.encode(P.REQUEST, 0, {"action": "port.claim", "id": "a:b"})
    conn.data_received(bad + nested + not_ff)
    assert c._ff_cache == {}
    assert c.stats["errors"] == 1 and c.stats["ff_dropped"] == 1


def test_an_overboard_agent_naming_itself_in_an_actor_field_is_refused(tmp_path):
    """SPEC §12 strict mode: `{"owner": "bad1"}` is as much bad1's write as `{"agentId": "bad1"}`."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    c = Core(load_config(tmp_path, ipc_rate_limit=0, arbiter_strict=True))
    try:
        c.state.load()
        conn = Connection(c, True)
        conn.connection_made(FakeTransport())
        from pdcore.state.base import Ctx
        ctx = Ctx(c.state.clock(), source="internal")
        c.state.agents.register(ctx, id="bad1")
        c.state.arbiter.record(ctx, "PID_SQUATTING", "squatted", "bad1", "app:api")
        c.state.arbiter.flush()
        assert c.state.arbiter.is_overboard("bad1")
        calls = [
            {"action": "lock.acquire", "name": "l", "owner": "bad1"},
            {"action": "tuple.out", "fields": ["x"], "writtenBy": "bad1"},
            {"action": "msg.publish", "channel": "c", "payload": "hi", "sender": "bad1"},
            {"action": "inbox.send", "id": "qa", "content": "hi", "from": "bad1"},
        ]
        conn.data_received(b"".join(P.encode(P.REQUEST, i + 1, call) for i, call in enumerate(calls)))
        replies = [item for frame in conn.out for item in P.FrameDecoder().feed(frame)]
        assert [(t, conv) for t, conv, _ in replies] == [(P.REFUSE, i + 1) for i in range(len(calls))]
        assert {P.unpack_payload(body)["code"] for _, _, body in replies} == {"agent_overboard"}
        assert "l" not in c.state.locks.locks and not c.state.tuples.by_id
        assert c.state.channels.history(ctx, "c")["messages"] == []
        conn.out.clear()
        conn.data_received(P.encode(P.REQUEST, 9, {"action": "agent.register", "id": "bad1"})
                           + P.encode(P.REQUEST, 10, calls[0]))  # registering again brings it back on board
        assert [t for frame in conn.out for t, _, _ in P.FrameDecoder().feed(frame)] == [P.INFORM_DONE] * 2
        assert c.state.locks.locks["l"].owner == "bad1"
        # A fleet runner's report about a run of an overboard agent is not that agent's write.
        c.state.arbiter.record(ctx, "PID_SQUATTING", "squatted again", "bad1", "app:api")
        c.state.arbiter.flush()
        assert c.state.arbiter.is_overboard("bad1")
        conn.out.clear()
        report = {"action": "spawn.report", "id": "run-1", "state": "running", "agentId": "bad1",
                  "backend": "custom", "runnerPid": os.getpid()}
        conn.data_received(P.encode(P.REQUEST, 11, report))
        replies = [item for frame in conn.out for item in P.FrameDecoder().feed(frame)]
        assert [t for t, _, _ in replies] == [P.INFORM_DONE], [P.unpack_payload(b) for _, _, b in replies]
    finally:
        c.store.close()
        loop.close()
        asyncio.set_event_loop(None)


def test_a_burst_is_served_in_turns_while_its_reading_pauses(core):
    c, conn = core
    per_turn = c.config.ipc_frames_per_turn
    frame = P.encode(P.REQUEST, 0, {"action": "heartbeat", "id": "agent-turns"})
    conn.data_received(frame * (per_turn * 3 + 5))
    assert c.stats["ops"] == per_turn and not conn.transport.reading  # the rest waits for its turns
    for turn in range(2, 5):
        c._serve_turns()  # what the loop runs once per pass while frames wait
        assert c.stats["ops"] == min(per_turn * turn, per_turn * 3 + 5)
    assert conn.transport.reading and not conn.waiting_turn
