"""Exactly-once takes across kill -9 of the core: SDK clients take with request ids and repeat a
take whose reply was lost; every tuple reaches exactly one consumer, none is lost."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

from pdcore.aclient import AsyncClient
from pdcore.client import Client
from pdcore.errors import OpError

TUPLES = 2000
SYNC_TAKERS = 6
KILLS = 3
DEADLINE_S = 180.0


class Tally:
    """What every taker got, and how often a reply was lost and the take repeated."""

    def __init__(self, takers: int) -> None:
        self.got: list[list[int]] = [[] for _ in range(takers)]
        self.lost_replies = 0
        self.repeated = 0  # repeats the daemon answered from the record (the first reply was lost)
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def taken(self) -> int:
        return sum(len(g) for g in self.got)

    def record(self, i: int, result: dict) -> None:
        self.got[i].extend(t["id"] for t in result["taken"])
        if result.get("repeated"):
            with self.lock:
                self.repeated += 1

    def lost(self) -> None:
        with self.lock:
            self.lost_replies += 1


class CountingClient(Client):
    """The SDK client, counting the lost replies after which it repeats a take."""

    tally: Tally

    def _call(self, op, args):
        try:
            return super()._call(op, args)
        except OpError as err:
            if err.extra.get("replyLost"):
                self.tally.lost()
            raise


class CountingAsyncClient(AsyncClient):
    tally: Tally

    async def _call(self, op, args):
        try:
            return await super()._call(op, args)
        except OpError as err:
            if err.extra.get("replyLost"):
                self.tally.lost()
            raise


def _drained(result: dict, empties: int, kills_done: threading.Event) -> tuple[bool, int]:
    """(stop, empties): stop after two empty takes in a row once every kill is done."""
    if result["count"]:
        return False, 0
    empties += 1
    return kills_done.is_set() and empties >= 2, empties


def sync_taker(d, head: str, i: int, tally: Tally, kills_done: threading.Event, deadline: float) -> None:
    client = CountingClient(d.config, transport="ipc", timeout=30)
    client.tally = tally
    try:
        empties = 0
        while time.monotonic() < deadline:
            result = client.call("tuple.in", pattern=[head], agentId=f"{head}-{i}")
            tally.record(i, result)
            stop, empties = _drained(result, empties, kills_done)
            if stop:
                return
            if not result["count"]:
                time.sleep(0.05)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        tally.errors.append(exc)
    finally:
        client.close()


def async_taker(d, head: str, i: int, tally: Tally, kills_done: threading.Event, deadline: float) -> None:
    async def run() -> None:
        client = CountingAsyncClient(d.config, timeout=30)
        client.tally = tally
        try:
            empties = 0
            while time.monotonic() < deadline:
                results = await asyncio.gather(*(client.tuple_in(pattern=[head], agentId=f"{head}-a")
                                                 for _ in range(4)))
                for result in results:
                    tally.record(i, result)
                stop, empties = _drained({"count": sum(r["count"] for r in results)}, empties, kills_done)
                if stop:
                    return
                if not any(r["count"] for r in results):
                    await asyncio.sleep(0.05)
        finally:
            await client.close()

    try:
        asyncio.run(run())
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        tally.errors.append(exc)


def test_every_tuple_reaches_exactly_one_taker_across_kill_9_of_the_core(fresh_daemon):
    d = fresh_daemon
    head = f"once-{uuid.uuid4().hex[:10]}"
    with d.client(transport="ipc") as c:
        written = {c.call("tuple.out", fields=[head, n])["tuple"]["id"] for n in range(TUPLES)}
    assert len(written) == TUPLES
    tally = Tally(SYNC_TAKERS + 1)
    kills_done = threading.Event()
    deadline = time.monotonic() + DEADLINE_S
    threads = [threading.Thread(target=sync_taker, args=(d, head, i, tally, kills_done, deadline))
               for i in range(SYNC_TAKERS)]
    threads.append(threading.Thread(target=async_taker, args=(d, head, SYNC_TAKERS, tally, kills_done, deadline)))
    for t in threads:
        t.start()
    kills = 0
    try:
        for k in range(1, KILLS + 1):
            while tally.taken() < TUPLES * k // (KILLS + 1) and time.monotonic() < deadline and not tally.errors:
                time.sleep(0.002)
            assert not tally.errors, tally.errors[:3]
            assert tally.taken() >= TUPLES * k // (KILLS + 1), "the takers made no progress"
            d.kill_core()
            kills += 1
    finally:
        kills_done.set()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic() + 5))
    assert not any(t.is_alive() for t in threads), "a taker did not finish in time"
    assert not tally.errors, tally.errors[:3]

    taken = [tid for g in tally.got for tid in g]
    duplicates = len(taken) - len(set(taken))
    lost = written - set(taken)
    with d.client(transport="ipc") as c:
        left = c.call("tuple.count", pattern=[head])["count"]
    print(f"\ntakes across kill -9: {TUPLES} tuples, {SYNC_TAKERS} sync + 1 async takers, {kills} kills, "
          f"{tally.lost_replies} lost replies repeated, {tally.repeated} answered from the record, "
          f"duplicates {duplicates}, lost {len(lost)}, left {left}")
    assert kills == KILLS
    assert duplicates == 0, "a tuple reached two takers"
    assert not lost and left == 0, f"{len(lost)} tuple(s) reached no taker"
    assert set(taken) == written
    assert tally.lost_replies > 0, "no kill interrupted a take in flight: the repeat path was not tried"


class ReplyEater:
    """A Unix-socket proxy in front of daemon.ipc that forwards requests and, for the first
    connection, drops the daemon's reply and closes: the take is committed, its reply is lost."""

    def __init__(self, target: str, path: str) -> None:
        import socket

        self.target, self.path = target, path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(8)
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            eat = self.connections == 1
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, eat), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, eat: bool) -> None:
        try:
            while data := src.recv(65536):
                if eat:  # the reply arrived: lose it, and the connection with it
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(2)  # wakes the other direction's recv, so the client sees the close at once
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


def test_a_take_whose_reply_is_lost_is_repeated_and_answered_with_the_same_tuple(fresh_daemon, tmp_path):
    import dataclasses

    d = fresh_daemon
    head = f"lost-{uuid.uuid4().hex[:10]}"
    with d.client(transport="ipc") as c:
        ids = [c.call("tuple.out", fields=[head, n])["tuple"]["id"] for n in range(3)]
    proxy = ReplyEater(str(d.config.ipc), str(tmp_path / "p.ipc"))
    try:
        config = dataclasses.replace(d.config, ipc=tmp_path / "p.ipc", shm_enabled=False)
        with Client(config, transport="ipc", timeout=10) as c:
            result = c.call("tuple.in", pattern=[head])
    finally:
        proxy.close()
    assert proxy.connections == 2  # the lost reply, then the repeat on a new connection
    assert [t["id"] for t in result["taken"]] == [ids[0]] and result["repeated"] is True
    with d.client(transport="ipc") as c:
        assert [t["id"] for t in c.call("tuple.scan", pattern=[head])["tuples"]] == ids[1:]


def test_http_and_cli_takes_with_a_request_id(daemon):
    head = f"rid-{uuid.uuid4().hex[:10]}"
    with daemon.client(transport="ipc") as c:
        ids = [c.call("tuple.out", fields=[head, n])["tuple"]["id"] for n in range(3)]
    body = {"pattern": [head], "requestId": f"{head}-1"}
    first = daemon.http("DELETE", "/tuples", body)
    again = daemon.http("DELETE", "/tuples", body)
    assert first[0] == again[0] == 200
    assert [t["id"] for t in first[1]["taken"]] == [t["id"] for t in again[1]["taken"]] == [ids[0]]
    assert again[1]["repeated"] is True
    status, refused = daemon.http("DELETE", "/tuples", {"pattern": [head, 9], "requestId": f"{head}-1"})
    assert (status, refused["code"], refused.get("field")) == (409, "conflict", "requestId")
    status, refused = daemon.http("DELETE", "/tuples", {"pattern": [head], "requestId": "x" * 129})
    assert (status, refused.get("field")) == (400, "requestId")
    runs = [daemon.pd("tuple", "in", f'["{head}"]', "--request-id", f"{head}-cli", "--json") for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    import json

    taken = [json.loads(r.stdout)["taken"] for r in runs]
    assert taken[0] == taken[1] and [t["id"] for t in taken[0]] == [ids[1]]
