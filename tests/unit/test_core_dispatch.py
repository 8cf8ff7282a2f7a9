"""The core's dispatch in-process (no sockets): fire-and-forget frames and their decode cache."""

from __future__ import annotations

import asyncio

import pytest

from pdcore import protocol as P
from pdcore.config import load_config
from pdcore.core import Connection, Core


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


@pytest.fixture
def core(tmp_path):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    c = Core(load_config(tmp_path, ipc_rate_limit=0))
    c.state.load()
    conn = Connection(c, True)
    conn.connection_made(FakeTransport())
    yield c, conn
    c.store.close()
    loop.close()
    asyncio.set_event_loop(None)


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
