"""The tuple space against a real daemon: exactly-once takes under concurrency and kill -9,
blocking takes, and the front doors (IPC, HTTP, CLI)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from urllib.parse import quote

import pytest

from pdcore.errors import OpError

TAKERS = 64
TUPLES = 10_000


def q(pattern: list) -> str:
    """A pattern as a query-string value."""
    return quote(json.dumps(pattern))


def tag(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def write_many(d, head: str, n: int, writers: int = 8) -> set[int]:
    """Write n tuples [head, i] from several IPC clients; return their ids (all acknowledged)."""
    ids: set[int] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with d.client(transport="ipc") as c:
                mine = [c.call("tuple.out", fields=[head, i])["tuple"]["id"] for i in range(k, n, writers)]
            with lock:
                ids.update(mine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(ids) == n
    return ids


class Takers:
    """TAKERS threads taking [head] one at a time until the space is empty; each records what it got."""

    def __init__(self, d, head: str, deadline_s: float = 120.0) -> None:
        self.d = d
        self.head = head
        self.got: list[list[int]] = [[] for _ in range(TAKERS)]
        self.failed_calls = [0] * TAKERS  # calls whose outcome is unknown (the core died mid-call)
        self.errors: list[BaseException] = []
        self.deadline = time.monotonic() + deadline_s
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(TAKERS)]

    def taken(self) -> int:
        return sum(len(g) for g in self.got)

    def run(self, i: int) -> None:
        client = self.d.client(transport="ipc", timeout=10)
        client.retry_takes = False  # takes without a request id (tests/reliability/test_takes.py has them)
        try:
            empties = 0
            while time.monotonic() < self.deadline:
                try:
                    result = client.call("tuple.in", pattern=[self.head], agentId=f"{self.head}-taker-{i}")
                except OpError as err:
                    if err.code != "unavailable":
                        raise
                    self.failed_calls[i] += 1
                    client.close()
                    time.sleep(0.05)
                    continue
                if result["count"] == 0:
                    empties += 1
                    if empties >= 2:  # empty twice in a row, after a short pause: the space is drained
                        return
                    time.sleep(0.05)
                    continue
                empties = 0
                self.got[i].extend(t["id"] for t in result["taken"])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
        finally:
            client.close()

    def start(self) -> Takers:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        for t in self.threads:
            t.join(max(1.0, self.deadline - time.monotonic() + 5))
        assert not any(t.is_alive() for t in self.threads), "a taker did not finish in time"
        assert not self.errors, self.errors[:3]


def all_taken(takers: Takers) -> list[int]:
    return [tid for g in takers.got for tid in g]


def test_64_concurrent_takers_take_each_of_10000_tuples_exactly_once(daemon):
    head = tag("work")
    written = write_many(daemon, head, TUPLES)
    takers = Takers(daemon, head).start()
    takers.join()
    taken = all_taken(takers)
    assert len(taken) == len(set(taken)), "a tuple was taken twice"
    assert set(taken) == written, f"lost {len(written - set(taken))} tuple(s)"
    assert daemon.client().call("tuple.count", pattern=[head])["count"] == 0
    assert sum(1 for g in takers.got if g) > TAKERS // 2  # the work really was shared


def test_exactly_once_across_kill_9_of_the_core(daemon_factory):
    d = daemon_factory(ipc_rate_limit=0, activity_max=200_000)
    head = tag("crash")
    written = write_many(d, head, TUPLES)
    takers = Takers(d, head).start()
    deadline = time.monotonic() + 60
    while takers.taken() < TUPLES // 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert takers.taken() >= TUPLES // 2, "takers made no progress"
    d.kill_core()
    takers.join()
    acknowledged = all_taken(takers)
    assert len(acknowledged) == len(set(acknowledged)), "a tuple was handed out twice"
    # A take cut off by the kill may have been committed without its reply reaching the taker:
    # the activity log (same transaction as the delete) says who took what.
    c = d.client()
    unknown: set[int] = set()
    for i in range(TAKERS):
        if not takers.failed_calls[i]:
            continue
        logged = c.call("activity.list", type="tuple.in", agentId=f"{head}-taker-{i}", limit=1000)["activities"]
        ids = {tid for a in logged for tid in a["details"]["ids"]}
        unknown |= ids - set(takers.got[i])
        assert set(takers.got[i]) <= ids
    assert sum(takers.failed_calls) > 0, "the kill did not interrupt any take"
    assert len(unknown) <= sum(takers.failed_calls)
    remaining = {t["id"] for t in c.call("tuple.scan", pattern=[head], limit=TUPLES)["tuples"]}
    print(f"kill -9 at {TUPLES // 2}+ taken: {sum(takers.failed_calls)} interrupted call(s), "
          f"{len(unknown)} committed take(s) whose reply was lost, {len(remaining)} left after restart")
    assert not remaining & set(acknowledged) and not remaining & unknown and not unknown & set(acknowledged)
    assert set(acknowledged) | unknown | remaining == written
    assert len(acknowledged) + len(unknown) + len(remaining) == TUPLES


def test_blocked_in_gets_the_tuple_written_100ms_later(daemon):
    head = tag("late")
    result: dict = {}

    def waiter() -> None:
        with daemon.client(transport="ipc") as c:
            t0 = time.monotonic()
            result["reply"] = c.call("tuple.in", pattern=[head, "*"], wait=5000)
            result["waited"] = time.monotonic() - t0

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.1)
    with daemon.client(transport="ipc") as other:
        written = other.call("tuple.out", fields=[head, "payload"])["tuple"]
    thread.join(10)
    assert not thread.is_alive()
    assert [t["id"] for t in result["reply"]["taken"]] == [written["id"]]
    assert result["waited"] < 2.0


def test_ten_blocked_takers_five_tuples_five_served_oldest_first_five_time_out(daemon):
    head = tag("ten")
    replies: dict[int, dict] = {}

    def waiter(i: int) -> None:
        with daemon.client(transport="ipc") as c:
            replies[i] = c.call("tuple.in", pattern=[head], wait=3000)

    threads = []
    probe = daemon.client()
    parked = lambda: probe.call("daemon.metrics")["counters"]["parked"]  # noqa: E731
    for i in range(10):
        before = parked()
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while parked() <= before and time.monotonic() < deadline:  # park in a known order
            time.sleep(0.005)
    with daemon.client(transport="ipc") as writer:
        ids = [writer.call("tuple.out", fields=[head, n])["tuple"]["id"] for n in range(5)]
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    served = {i: r["taken"][0]["id"] for i, r in replies.items() if r["count"]}
    empty = [i for i, r in replies.items() if r == {"taken": [], "count": 0}]
    assert len(served) == 5 and len(empty) == 5
    assert sorted(served.values()) == ids
    assert sorted(served) == [0, 1, 2, 3, 4]  # waiters are served oldest first


def test_blocked_rd_over_http_returns_empty_when_the_wait_ends(daemon):
    head = tag("rdwait")
    t0 = time.monotonic()
    status, body = daemon.http("GET", f"/tuples?pattern={q([head])}&wait=300")
    assert status == 200 and body["tuples"] == [] and body["count"] == 0
    assert time.monotonic() - t0 >= 0.25


def test_http_shapes_of_port_daddy_3_8(daemon):
    head = tag("http")
    status, body = daemon.http("POST", "/tuples", {"tuple": [head, "a", 0.9], "harbor": "h:fleet", "ttl": 60_000,
                                                   "writtenBy": "agent-x"})
    assert status == 200 and body["success"] is True
    t = body["tuple"]
    assert set(t) == {"id", "harbor", "fields", "writtenBy", "createdAt", "expiresAt"}
    assert (t["harbor"], t["writtenBy"], t["expiresAt"] - t["createdAt"]) == ("h:fleet", "agent-x", 60_000)
    status, body = daemon.http("POST", "/tuples", {"fields": [head, "b", 0.2], "harbor": "h:fleet", "ttlMs": 60_000})
    assert status == 200
    status, body = daemon.http("GET", f"/tuples?pattern={q([head, '*', '>0.5'])}&harbor=h:fleet")
    assert status == 200 and body["count"] == 1 and body["tuples"][0]["fields"][1] == "a"
    status, body = daemon.http("GET", "/tuples/count?harbor=h:fleet&pattern=" + q([head]))
    assert (status, body["count"]) == (200, 2)
    status, body = daemon.http("GET", "/tuples/scan?harbor=h:fleet&limit=1")
    assert status == 200 and body["count"] == 1
    status, body = daemon.http("GET", "/tuples/poll?harbor=h:fleet&pattern=" + q([head]))
    first = body["lastId"]
    status, body = daemon.http("GET", f"/tuples/poll?harbor=h:fleet&after={first}&pattern=" + q([head]))
    assert body["tuple"]["fields"][1] == "b"
    status, body = daemon.http("DELETE", "/tuples", {"pattern": [head], "harbor": "h:fleet", "limit": 5})
    assert status == 200 and body["count"] == 2 and [x["fields"][1] for x in body["taken"]] == ["a", "b"]


@pytest.mark.parametrize(("query", "position"), [
    ('["task", ">abc"]', 1),
    ('["a*b"]', 0),
    ('["task", ', 9),
])
def test_malformed_pattern_is_a_400_naming_the_position(daemon, query, position):
    status, body = daemon.http("GET", f"/tuples?pattern={quote(query)}")
    assert status == 400 and body["code"] == "invalid_pattern" and body["field"] == "pattern"
    assert body["position"] == position and f"at position {position}" in body["error"]


def test_bad_tuples_are_refused_and_not_stored(daemon):
    head = tag("bad")
    for body, code, status in (({}, "missing_field", 400),
                               ({"fields": []}, "invalid_argument", 400),
                               ({"fields": "nope"}, "invalid_argument", 400),
                               ({"fields": list(range(17))}, "invalid_argument", 400),
                               ({"fields": [head, "x" * 5000]}, "too_large", 413)):
        got_status, got = daemon.http("POST", "/tuples", body)
        assert (got_status, got["code"]) == (status, code), body
    assert daemon.client().call("tuple.count", harbor="*", pattern=[head])["count"] == 0


def test_new_tuples_reach_ipc_subscribers_of_the_harbor_channel(daemon):
    harbor = f"{tag('sub')}:fleet"
    sub = daemon.client().subscribe(f"tuple:{harbor}")
    try:
        daemon.client().call("tuple.out", fields=["task", 1], harbor=harbor)
        msg = sub.next_message(timeout=5)
    finally:
        sub.close()
    assert msg is not None and msg["channel"] == f"tuple:{harbor}"
    assert msg["message"]["event"] == "tuple.out" and msg["message"]["tuple"]["fields"] == ["task", 1]


def test_cli_out_rd_in_scan_count(daemon):
    head = tag("cli")
    r = daemon.pd("tuple", "out", json.dumps([head, "build", 0.9]), "--harbor", "cli:fleet", "-q")
    assert r.returncode == 0, r.stderr
    tid = int(r.stdout.strip())
    r = daemon.pd("tuple", "out", head, "test", "0.3", "--harbor", "cli:fleet")
    assert r.returncode == 0 and "wrote" in r.stdout
    r = daemon.pd("tuple", "rd", json.dumps([head, "*", ">0.5"]), "--harbor", "cli:fleet", "--json")
    assert r.returncode == 0 and [t["id"] for t in json.loads(r.stdout)["tuples"]] == [tid]
    r = daemon.pd("tuple", "count", json.dumps([head]), "--harbor", "cli:fleet", "-q")
    assert r.stdout.strip() == "2"
    r = daemon.pd("tuple", "scan", "--harbor", "cli:fleet", "--limit", "1")
    assert r.returncode == 0 and "more" in r.stdout
    r = daemon.pd("tuple", "in", json.dumps([head]), "--harbor", "cli:fleet", "--limit", "5", "-q")
    assert r.returncode == 0 and [json.loads(x) for x in r.stdout.splitlines()] == [[head, "build", 0.9],
                                                                                   [head, "test", 0.3]]
    r = daemon.pd("tuple", "in", json.dumps([head]), "--wait", "200ms", "--harbor", "cli:fleet")
    assert r.returncode == 0 and "nothing taken" in r.stdout
    r = daemon.pd("tuple", "rd", '["x", ">y"]')
    assert r.returncode == 1 and "at position 1" in r.stderr
