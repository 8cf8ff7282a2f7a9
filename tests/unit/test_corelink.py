"""The workers' link to the core, against a small fake core on a real Unix socket.

Proves: replies are matched by conv_id (stale replies skipped), messages over one frame work
both ways, refusals become OpErrors, each thread has its own persistent connection, a
connection the core closed is replaced before the next request, a write is not repeated after
it was sent, and a core that is down or silent gives `unavailable`.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
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
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            for type_, conv, body in decoder.feed(data):
                payload = proto.unpack_payload(body)
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


def test_a_call_returns_the_result_of_its_own_conversation(core: FakeCore):
    link = CoreClient(core.path)
    first = link.call("echo", {"x": 1})
    second = link.call("echo", {"x": 2})
    assert first["args"] == {"x": 1} and second["args"] == {"x": 2}
    assert second["conv"] == first["conv"] + 1
    assert first["conn"] == second["conn"]  # one persistent connection
    assert core.requests[0]["action"] == "echo"


def test_messages_larger_than_one_frame_go_both_ways(core: FakeCore):
    big = "x" * 200_000
    assert CoreClient(core.path).call("echo", {"blob": big})["args"]["blob"] == big


def test_a_refusal_is_an_op_error_with_its_details(core: FakeCore):
    with pytest.raises(OpError) as err:
        CoreClient(core.path).call("refuse", {})
    assert (err.value.code, err.value.field, err.value.extra) == ("lock_held", "name", {"holder": "b"})
    assert err.value.status == 409


def test_each_thread_has_its_own_connection(core: FakeCore):
    link = CoreClient(core.path)
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(link.call("echo", {})["conn"])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(seen)) == 3


def test_a_connection_the_core_closed_is_replaced_before_the_next_request(core: FakeCore):
    link = CoreClient(core.path)
    before = link.call("echo", {})["conn"]
    core.close_all()
    after = link.call("echo", {"again": True})
    assert after["conn"] != before and after["args"] == {"again": True}
    assert sum(1 for r in core.requests if r.get("again")) == 1


def test_a_read_lost_in_flight_is_sent_again_once_but_a_write_is_not(core: FakeCore):
    link = CoreClient(core.path)
    link.call("echo", {})
    core.drop_next = True
    assert link.call("echo", {"read": 1}, idempotent=True)["args"] == {"read": 1}
    core.drop_next = True
    with pytest.raises(OpError) as err:
        link.call("echo", {"write": 1})
    assert err.value.code == "unavailable"
    assert sum(1 for r in core.requests if r.get("write")) == 1


def test_no_core_is_unavailable_with_the_fix(home: Path):
    with pytest.raises(OpError) as err:
        CoreClient(home / "core.sock", connect_wait_ms=0).call("echo", {})
    assert err.value.code == "unavailable" and err.value.status == 503
    assert "pd start" in err.value.message and "core.sock" in err.value.message


def test_a_silent_core_times_out_and_the_next_call_uses_a_new_connection(core: FakeCore):
    link = CoreClient(core.path)
    with pytest.raises(OpError) as err:
        link.call("hang", {}, timeout_s=0.2)
    assert err.value.code == "unavailable" and "did not answer" in err.value.message
    assert link.call("echo", {})["conn"] == 1


def test_a_stream_subscribes_and_yields_deliveries(core: FakeCore):
    stream = CoreClient(core.path).stream()
    try:
        agreed = stream.subscribe(["c"])
        assert agreed["channels"] == ["c"]
        assert stream.next_delivery(2)["id"] == 1
        assert stream.next_delivery(2)["id"] == 2
        assert stream.next_delivery(0.1) is None
    finally:
        stream.close()
