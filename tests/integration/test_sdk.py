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
