"""Webhook secrets against a live daemon: never in state.db or its WAL in plain form, and
deliveries still signed with the same secret after the core is killed and restarted."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.integration.test_webhooks import Receiver, register, verify


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def database_bytes(db_path: Path) -> bytes:
    out = b""
    for path in (db_path, Path(f"{db_path}-wal")):
        if path.exists():
            out += path.read_bytes()
    return out


def test_secret_is_sealed_on_disk_and_signs_after_a_core_restart(daemon_factory, receiver):
    d = daemon_factory(ipc_rate_limit=0, webhook_allow_hosts="127.0.0.1")
    first, second = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    channel = f"sealed-{uuid.uuid4().hex[:8]}"
    hook = register(d, url=receiver.url(), events=["message.publish"], secret=first, filterPattern=channel)
    assert first not in str(hook)
    d.http("POST", f"/msg/{channel}", {"payload": "one"})
    (req,) = receiver.wait_for(1)
    assert verify(req, first)
    db_path = d.config.db_path
    assert first.encode() not in database_bytes(db_path)  # the reply came after the commit

    status, updated = d.http("PUT", f"/webhooks/{hook['id']}", {"secret": second})
    assert status == 200 and updated["webhook"]["hasSecret"] is True and second not in str(updated)
    on_disk = database_bytes(db_path)
    assert first.encode() not in on_disk and second.encode() not in on_disk

    d.kill_core()
    status, got = d.http("GET", f"/webhooks/{hook['id']}")
    assert status == 200 and got["webhook"]["hasSecret"] is True and got["webhook"]["secretError"] is None
    d.http("POST", f"/msg/{channel}", {"payload": "two"})
    _, after = receiver.wait_for(2)
    assert verify(after, second) and not verify(after, first)
