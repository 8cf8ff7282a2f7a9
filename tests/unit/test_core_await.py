"""The core's park-until-resolved mechanism (Await) in-process: what team ops stand on."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest

from pdcore import protocol as P
from pdcore.core import Core, _Entry
from pdcore.errors import OpError
from pdcore.ops import CATALOGUE
from pdcore.state import Await, Park
from tests.unit.fakes import FakeTransport, core_on_fake_connection


@pytest.fixture
def core(tmp_path):
    with core_on_fake_connection(tmp_path, ipc_rate_limit=0) as made:
        yield made


def _install(c: Core, handler) -> None:
    op = CATALOGUE["team.status"]
    c._entries["test.await"] = _Entry(op, handler, lambda payload: {})


def _replies(transport: FakeTransport) -> list[tuple[int, int, dict]]:
    decoder = P.FrameDecoder(1 << 20)
    out = []
    for type_, conv_id, body in decoder.feed(b"".join(transport.written)):
        out.append((type_, conv_id, msgpack.unpackb(body, raw=False)))
    return out


def _now() -> int:
    return int(time.time() * 1000)


def test_an_awaited_call_is_answered_with_its_continuation_once_it_resolves(core):
    c, conn, transport, loop = core

    async def ack(value: int) -> int:
        await asyncio.sleep(0.01)
        return value

    _install(c, lambda ctx: Await(ack(41), _now() + 5000, then=lambda v: {"value": v + 1}))
    conn.data_received(P.encode(P.REQUEST, 7, {"action": "test.await"}))
    loop.run_until_complete(asyncio.sleep(0))
    assert _replies(transport) == []  # parked: nothing answered before the call resolves
    loop.run_until_complete(asyncio.sleep(0.05))
    [(type_, conv_id, body)] = _replies(transport)
    assert (type_, conv_id, body["result"]) == (P.INFORM_DONE, 7, {"value": 42})
    assert not conn.parked


def test_an_awaited_call_past_its_deadline_gets_on_timeout_and_never_its_late_outcome(core):
    c, conn, transport, loop = core

    async def never() -> None:
        await asyncio.sleep(10)

    late = OpError("team_unavailable", "no answer")
    _install(c, lambda ctx: Await(never(), _now() + 30, on_timeout=late))
    conn.data_received(P.encode(P.REQUEST, 3, {"action": "test.await"}))
    loop.run_until_complete(asyncio.sleep(0.2))
    [(type_, conv_id, body)] = _replies(transport)
    assert (type_, conv_id, body["code"]) == (P.FAILURE, 3, "team_unavailable")
    assert not conn.parked and not c.waiting


def test_an_error_raised_by_the_awaited_call_is_the_answer(core):
    c, conn, transport, loop = core

    async def refuse() -> None:
        raise OpError("lock_held", "held by someone")

    _install(c, lambda ctx: Await(refuse(), _now() + 5000))
    conn.data_received(P.encode(P.REQUEST, 4, {"action": "test.await"}))
    loop.run_until_complete(asyncio.sleep(0.05))
    [(type_, _, body)] = _replies(transport)
    assert (type_, body["code"]) == (P.REFUSE, "lock_held")


def test_a_continuation_that_parks_is_retried_when_its_key_is_woken(core):
    c, conn, transport, loop = core
    calls = []

    async def attempt(n: int) -> int:
        return n

    def handler(ctx):
        calls.append(ctx.retry)
        n = len(calls)
        return Await(attempt(n), _now() + 5000,
                     then=lambda v: Park(("k",), _now() + 5000) if v == 1 else {"attempt": v})

    _install(c, handler)
    conn.data_received(P.encode(P.REQUEST, 9, {"action": "test.await"}))
    loop.run_until_complete(asyncio.sleep(0.02))
    assert _replies(transport) == [] and "k" in c.waiting
    c.state.wake("k")
    c._after_state_change()
    loop.run_until_complete(asyncio.sleep(0.02))
    [(type_, _, body)] = _replies(transport)
    assert (type_, body["result"]) == (P.INFORM_DONE, {"attempt": 2})
    assert calls == [False, True] and not c.waiting


def test_closing_the_connection_cancels_the_awaited_call(core):
    c, conn, transport, loop = core
    started = asyncio.Event()
    cancelled = []

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    _install(c, lambda ctx: Await(slow(), _now() + 5000))
    conn.data_received(P.encode(P.REQUEST, 5, {"action": "test.await"}))
    loop.run_until_complete(started.wait())
    conn.connection_lost(None)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert cancelled == [True] and not conn.parked


def test_a_wait_after_an_awaited_call_keeps_its_own_deadline_not_the_calls(core):
    c, conn, transport, loop = core

    async def quick() -> int:
        return 1

    # the call's own deadline is 50 ms away; the wait it parks on afterwards lasts 300 ms
    _install(c, lambda ctx: Await(quick(), _now() + 50, then=lambda v: Park(("slow",), _now() + 300, {"late": 1})))
    conn.data_received(P.encode(P.REQUEST, 2, {"action": "test.await"}))
    loop.run_until_complete(asyncio.sleep(0.15))
    assert _replies(transport) == [] and "slow" in c.waiting
