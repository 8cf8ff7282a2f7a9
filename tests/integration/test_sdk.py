"""The SDK: IPC first, then HTTP over daemon.sock, then TCP; reconnects after the core restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from pdcore.client import AsyncClient, Client
from pdcore.errors import OpError


def test_falls_back_from_ipc_to_unix_http_to_tcp(daemon, tmp_path):
    ident = f"sdk{uuid.uuid4().hex[:8]}:api"
    port = daemon.client().port_claim(id=ident)["port"]
    cfg = daemon.config
    no_ipc = dataclasses.replace(cfg, ipc=tmp_path / "absent.ipc", shm_enabled=False)
    c = Client(no_ipc)
    assert not c._use_ipc()
    assert c.port_claim(id=ident)["port"] == port  # over daemon.sock
    tcp_only = dataclasses.replace(no_ipc, sock=tmp_path / "absent.sock")
    assert Client(tcp_only).port_claim(id=ident)["port"] == port  # over 127.0.0.1:PORT


def test_async_client_has_the_same_answers(daemon):
    ident = f"sdk{uuid.uuid4().hex[:8]}:web"
    port = daemon.client().port_claim(id=ident)["port"]

    async def run() -> list[int]:
        async with AsyncClient(daemon.config) as ac:
            replies = await asyncio.gather(*(ac.port_claim(id=ident) for _ in range(20)))
            return [r["port"] for r in replies]

    assert asyncio.run(run()) == [port] * 20


def test_sync_client_reconnects_after_the_core_restarts(fresh_daemon):
    c = fresh_daemon.client(connect_retry_s=10)
    port = c.port_claim(id="sdk:reconnect")["port"]
    fresh_daemon.kill_core()
    assert c.port_claim(id="sdk:reconnect")["port"] == port


def test_a_home_without_a_daemon_never_talks_to_another_homes_daemon_over_tcp(daemon, tmp_path):
    """TCP is the last fallback, and the daemon on that port may serve another home: the client
    checks which home it serves before sending anything, so nothing lands in the wrong state."""
    other_home = tmp_path / "other-home"
    other_home.mkdir(mode=0o700)
    other = dataclasses.replace(daemon.config, home=other_home, ipc=other_home / "daemon.ipc",
                                sock=other_home / "daemon.sock", shm_enabled=False)
    with pytest.raises(OpError) as refused:
        Client(other, connect_retry_s=0).port_claim(id="wrong-home:api:main")
    assert refused.value.code == "unavailable" and "serves another home" in refused.value.message
    assert daemon.client().port_list(pattern="wrong-home:*")["count"] == 0  # nothing landed there


def test_a_burst_of_fire_and_forget_publishes_is_paced_not_dropped(daemon_factory):
    """The core drops fire-and-forget frames past ipc_rate_limit per connection; the SDK keeps
    under it (waiting past the burst), so a loop of publishes loses nothing."""
    import time

    d = daemon_factory(ipc_rate_limit=200)
    client = Client(d.config)
    channel = f"paced-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    for n in range(400):  # twice the rate: half of these were dropped before
        client.msg_publish(channel=channel, payload={"n": n})
    elapsed = time.monotonic() - started
    history = client.msg_history(channel=channel, limit=1000)
    assert [m["payload"]["n"] for m in history["messages"]] == list(range(400))
    counters = client.daemon_metrics()["counters"]
    assert counters.get("ff_dropped", 0) == 0 and counters.get("rate_limited", 0) == 0
    assert elapsed > 0.8  # (400 - 190) frames at 190/s: the SDK waited instead


def test_the_async_client_is_paced_too(daemon_factory):
    d = daemon_factory(ipc_rate_limit=200)
    channel = f"apaced-{uuid.uuid4().hex[:8]}"

    async def burst() -> None:
        client = AsyncClient(d.config)
        try:
            for n in range(300):
                await client.msg_publish(channel=channel, payload={"n": n})
            await client.daemon_health()
        finally:
            await client.close()

    asyncio.run(burst())
    sync = Client(d.config)
    assert len(sync.msg_history(channel=channel, limit=1000)["messages"]) == 300
    assert sync.daemon_metrics()["counters"].get("ff_dropped", 0) == 0
