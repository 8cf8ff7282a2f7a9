"""The workers' link to the core, against a small fake core on a real Unix socket.

Proves: replies are matched by conv_id (stale replies skipped), calls are pipelined on one
persistent connection and answered out of order, messages over one frame work both ways,
refusals become OpErrors, a connection the core closed is replaced before the next request, a
write is not repeated after it was sent, a caller that leaves cancels its call in the core, and
a core that is down or silent gives `unavailable` without costing the other calls.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pdcore import protocol as proto
from pdcore.errors import OpError
from workers.corelink import CoreClient


class FakeCore:
    """Answers REQUEST frames by action; SUBSCRIBE with AGREE and two deliveries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        self.connections: list[socket.socket] = []
        self.requests: list[dict] = []
        self.cancelled: list[int] = []
        self.drop_next = False
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = proto.FrameDecoder(1 << 26)
        held: list[tuple[int, dict]] = []
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            for type_, conv, body in decoder.feed(data):
                payload = proto.unpack_payload(body)
                if type_ == proto.CANCEL:
                    self.cancelled.append(conv)
                    continue
                if type_ == proto.SUBSCRIBE:
                    conn.sendall(proto.encode(proto.AGREE, conv, {"action": "subscribe", "channels": payload["channels"]}))
                    for i in (1, 2):
                        conn.sendall(proto.encode(proto.INFORM, 0, {"action": "msg.delivery", "id": i,
                                                                     "channel": "c", "message": i}))
                    continue
                self.requests.append(payload)
                action = payload["action"]
                if action == "drop" or self.drop_next:
                    self.drop_next = False
                    conn.close()
                    return
                if action == "hang":
                    continue
                if action == "late":  # answered after the next request's reply: out of order
                    held.append((conv, payload))
                    continue
                if action == "refuse":
                    conn.sendall(proto.encode(proto.REFUSE, conv, {"action": action, "code": "lock_held",
                                                                   "error": "held by b", "field": "name",
                                                                   "holder": "b"}))
                    continue
                # a stale reply for another conversation first, then a delivery, then the answer
                conn.sendall(proto.encode(proto.INFORM_DONE, conv + 1000, {"action": action, "result": {"stale": 1}}))
                conn.sendall(proto.encode(proto.INFORM, 0, {"action": "msg.delivery", "id": 1}))
                result = {"args": {k: v for k, v in payload.items() if k != "action"}, "conv": conv,
                          "conn": self.connections.index(conn)}
                conn.sendall(proto.encode(proto.INFORM_DONE, conv, {"action": action, "result": result}))
                for late_conv, late in held:
                    conn.sendall(proto.encode(proto.INFORM_DONE, late_conv, {"action": "late", "result": {
                        "args": {k: v for k, v in late.items() if k != "action"}, "conv": late_conv}}))
                held.clear()

    def close_all(self) -> None:
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass

    def stop(self) -> None:
        self._stop = True
        self.close_all()
        self.server.close()


@pytest.fixture
def home():
    path = Path(tempfile.mkdtemp(prefix="pdl-"))  # short: Unix socket paths are limited to ~100 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def core(home: Path):
    fake = FakeCore(home / "core.sock")
    yield fake
    fake.stop()


def run(coro):
    return asyncio.run(coro)


def test_a_call_returns_the_result_of_its_own_conversation(core: FakeCore):
    async def go():
        link = CoreClient(core.path)
        return await link.call("echo", {"x": 1}), await link.call("echo", {"x": 2})

    first, second = run(go())
    assert first["args"] == {"x": 1} and second["args"] == {"x": 2}
    assert second["conv"] == first["conv"] + 1
    assert first["conn"] == second["conn"]  # one persistent connection
    assert core.requests[0]["action"] == "echo"


def test_calls_are_pipelined_on_one_connection_and_matched_out_of_order(core: FakeCore):
    async def go():
        link = CoreClient(core.path)
        late = asyncio.ensure_future(link.call("late", {"n": 0}))
        await asyncio.sleep(0.05)  # sent first, answered last
        many = await asyncio.gather(*(link.call("echo", {"n": i}) for i in range(1, 50)))
        return await late, many

    late, many = run(go())
    assert late["args"] == {"n": 0}
    assert [r["args"]["n"] for r in many] == list(range(1, 50))
    assert {r["conn"] for r in many} == {0} and len(core.connections) == 1


def test_messages_larger_than_one_frame_go_both_ways(core: FakeCore):
    big = "x" * 200_000
    assert run(CoreClient(core.path).call("echo", {"blob": big}))["args"]["blob"] == big


def test_a_refusal_is_an_op_error_with_its_details(core: FakeCore):
    with pytest.raises(OpError) as err:
        run(CoreClient(core.path).call("refuse", {}))
    assert (err.value.code, err.value.field, err.value.extra) == ("lock_held", "name", {"holder": "b"})
    assert err.value.status == 409


def test_a_connection_the_core_closed_is_replaced_before_the_next_request(core: FakeCore):
    async def go():
        link = CoreClient(core.path)
        before = (await link.call("echo", {}))["conn"]
        core.close_all()
        await asyncio.sleep(0.05)
        return before, await link.call("echo", {"again": True})

    before, after = run(go())
    assert after["conn"] != before and after["args"] == {"again": True}
    assert sum(1 for r in core.requests if r.get("again")) == 1


def test_a_read_lost_in_flight_is_sent_again_once_but_a_write_is_not(core: FakeCore):
    async def go():
        link = CoreClient(core.path)
        await link.call("echo", {})
        core.drop_next = True
        read = await link.call("echo", {"read": 1}, idempotent=True)
        core.drop_next = True
        try:
            await link.call("echo", {"write": 1})
        except OpError as exc:
            return read, exc
        raise AssertionError("the write was answered")

    read, err = run(go())
    assert read["args"] == {"read": 1}
    assert err.code == "unavailable" and err.extra.get("replyLost") is True
    assert sum(1 for r in core.requests if r.get("write")) == 1


def test_no_core_is_unavailable_with_the_fix(home: Path):
    with pytest.raises(OpError) as err:
        run(CoreClient(home / "core.sock", connect_wait_ms=0).call("echo", {}))
    assert err.value.code == "unavailable" and err.value.status == 503
    assert "pd start" in err.value.message and "core.sock" in err.value.message


def test_a_silent_core_times_out_that_call_only_and_it_is_cancelled_in_the_core(core: FakeCore):
    async def go():
        link = CoreClient(core.path)
        try:
            await link.call("hang", {}, timeout_s=0.2)
        except OpError as exc:
            return exc, await link.call("echo", {})
        raise AssertionError("a silent core answered")

    err, after = run(go())
    assert err.code == "unavailable" and "did not answer" in err.message
    assert after["conn"] == 0  # the connection stays for the other calls
    deadline = time.monotonic() + 5
    while not core.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert core.cancelled == [1]  # the hung call's conv_id


def test_a_caller_that_leaves_cancels_its_parked_call(core: FakeCore):
    async def go():
        link = CoreClient(core.path)
        task = asyncio.ensure_future(link.call("hang", {"wait": 60_000}))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        return await link.call("echo", {})

    assert run(go())["args"] == {}
    deadline = time.monotonic() + 5
    while not core.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert core.cancelled == [1]


def test_a_stream_subscribes_and_yields_deliveries(core: FakeCore):
    async def go():
        stream = CoreClient(core.path).stream()
        try:
            agreed = await stream.subscribe(["c"])
            return agreed, [await stream.next_delivery(2), await stream.next_delivery(2),
                            await stream.next_delivery(0.1)]
        finally:
            stream.close()

    agreed, got = run(go())
    assert agreed["channels"] == ["c"]
    assert [d and d["id"] for d in got] == [1, 2, None]


def test_closing_a_stream_wakes_its_reader(core: FakeCore):
    async def go():
        stream = CoreClient(core.path).stream()
        await stream.subscribe(["c"])
        await stream.next_delivery(2)
        await stream.next_delivery(2)
        asyncio.get_running_loop().call_later(0.05, stream.close)
        began = time.monotonic()
        with pytest.raises(ConnectionError):
            await stream.next_delivery(30)
        return time.monotonic() - began

    assert run(go()) < 5
