"""Tuples shared by two daemons (two homes standing for two hosts) through a real nats-server:
each tuple is taken exactly once across both, also when one daemon's core is killed with kill -9
in the middle; a take repeated with its requestId gets the same tuple; blocking takes on one host
are woken by an `out` on the other; TTLs hold; NATS stopped: fail fast, back: work again."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter

import pytest

from pdcore.errors import OpError
from tests.team.conftest import stop_nats_under, team_settings, wait_team_ready

TUPLES = int(os.environ.get("PD_TEAM_TUPLES", "2000"))
TAKERS_PER_DAEMON = 6
ROUNDS = 40  # tuples of the marked-requestId check; half are taken on A and repeated at once on B


def _write(daemons, tag: str, n: int) -> None:
    """`n` tuples ["job", tag, i], written half through each daemon (two writer threads each)."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            c = daemons[k % 2].client(timeout=60)
            for i in range(k, n, 4):
                c.call("tuple.out", fields=["job", tag, i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]


class Taker(threading.Thread):
    """Takes ["job", tag, *] with a fresh requestId per take until the space stays empty.

    A call that fails with team_unavailable is repeated with the same requestId; any other
    failure (its daemon killed) stops the thread and leaves the requestId in `unsure`."""

    def __init__(self, daemon, tag: str, stop_at: float) -> None:
        super().__init__(daemon=True)
        self.client = daemon.client(timeout=60)
        self.client.retry_takes = False  # a lost reply is an error here; the test repeats the take itself
        self.tag = tag
        self.stop_at = stop_at
        self.taken: list[int] = []
        self.unsure: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        empty = 0
        while time.monotonic() < self.stop_at and empty < 3:
            rid = uuid.uuid4().hex
            while True:
                try:
                    got = self.client.call("tuple.in", pattern=["job", self.tag, "*"], wait=300, requestId=rid)
                    break
                except OpError as exc:
                    if exc.code == "team_unavailable" and time.monotonic() < self.stop_at:
                        time.sleep(0.05)
                        continue
                    self.unsure = rid
                    self.error = exc
                    return
            if got["count"] == 0:
                empty += 1
                continue
            empty = 0
            self.taken.extend(t["fields"][2] for t in got["taken"])


def _assert_each_once(taken: list[int], n: int) -> None:
    counts = Counter(taken)
    twice = [i for i, k in counts.items() if k > 1]
    assert not twice, f"taken more than once: {twice[:10]}"
    missing = sorted(set(range(n)) - set(counts))
    assert not missing, f"never taken: {missing[:10]} ({len(missing)} in all)"


def test_2000_tuples_taken_exactly_once_by_takers_on_two_daemons(nats_server, daemon_factory):
    settings = team_settings([nats_server.url], "tup")
    a, b = daemon_factory(**settings), daemon_factory(**settings)
    wait_team_ready(a), wait_team_ready(b)
    started = time.monotonic()
    _write([a, b], "once", TUPLES)
    wrote = time.monotonic() - started
    assert a.client().call("tuple.count", pattern=["job", "once", "*"])["count"] == TUPLES
    takers = [Taker(d, "once", time.monotonic() + 180) for d in (a, b) for _ in range(TAKERS_PER_DAEMON)]
    started = time.monotonic()
    for t in takers:
        t.start()
    for t in takers:
        t.join(200)
    took = time.monotonic() - started
    assert all(t.error is None for t in takers), [t.error for t in takers if t.error][:3]
    _assert_each_once([i for t in takers for i in t.taken], TUPLES)
    per_host = [sum(len(t.taken) for t in takers[:TAKERS_PER_DAEMON]),
                sum(len(t.taken) for t in takers[TAKERS_PER_DAEMON:])]
    assert min(per_host) > 0, per_host  # both hosts really took
    for d in (a, b):
        assert d.client().call("tuple.count")["count"] == 0
    print(f"\n{TUPLES} tuples: written in {wrote:.1f} s, taken in {took:.1f} s ({TUPLES / took:.0f}/s); "
          f"per daemon {per_host}")


def test_a_daemon_killed_mid_take_leaves_every_tuple_taken_once(nats_server, daemon_factory):
    settings = team_settings([nats_server.url], "tupkill")
    a, b = daemon_factory(**settings), daemon_factory(**settings)
    wait_team_ready(a), wait_team_ready(b)
    _write([a, b], "kill", TUPLES)
    takers = [Taker(d, "kill", time.monotonic() + 180) for d in (a, b) for _ in range(TAKERS_PER_DAEMON)]
    for t in takers:
        t.start()
    deadline = time.monotonic() + 60
    while sum(len(t.taken) for t in takers) < TUPLES // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    a.kill_core()  # kill -9 of A's core while its takers are in the middle of takes
    for t in takers:
        t.join(200)
    on_a, on_b = takers[:TAKERS_PER_DAEMON], takers[TAKERS_PER_DAEMON:]
    assert all(t.error is None for t in on_b), [t.error for t in on_b if t.error][:3]
    unsure = [t.unsure for t in on_a if t.unsure is not None]
    assert unsure, "no take of A was cut off by the kill"
    # each take cut off by the kill is repeated on the same host with its requestId: it was made
    # exactly once (the same tuple comes back) or not at all (a new take is made now)
    wait_team_ready(a)
    ca = a.client(timeout=60)
    repeated, answered_before = [], 0
    for rid in unsure:
        got = ca.call("tuple.in", pattern=["job", "kill", "*"], requestId=rid)
        repeated.extend(t["fields"][2] for t in got["taken"])
        answered_before += bool(got.get("repeated"))
    # a finish on B takes what is left
    finish = Taker(b, "kill", time.monotonic() + 60)
    finish.run()
    taken = [i for t in takers for i in t.taken] + repeated + finish.taken
    _assert_each_once(taken, TUPLES)
    print(f"\nkill -9 of one daemon mid-take: {len(unsure)} takes cut off and repeated by requestId "
          f"({answered_before} had taken their tuple: the same one came back); {TUPLES} tuples each taken once")


def test_a_repeated_take_gets_its_tuple_back_on_either_host(nats_server, daemon_factory):
    settings = team_settings([nats_server.url], "tuprid")
    a, b = daemon_factory(**settings), daemon_factory(**settings)
    wait_team_ready(a), wait_team_ready(b)
    ca, cb = a.client(), b.client()
    for i in range(3):
        ca.call("tuple.out", fields=["r", i], harbor="h.1")
    deadline = time.monotonic() + 5  # B reads its own copy of the stream: wait until it holds A's outs
    while cb.call("tuple.scan", harbor="h.1")["total"] != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    first = cb.call("tuple.in", pattern=["r", "*"], harbor="h.1", limit=2, requestId="take-1")
    assert [t["fields"] for t in first["taken"]] == [["r", 0], ["r", 1]]
    again = cb.call("tuple.in", pattern=["r", "*"], harbor="h.1", limit=2, requestId="take-1")
    assert again["repeated"] and again["taken"] == first["taken"]
    # The tombstones carry the record: once host A's copy of the stream holds them (its scan no
    # longer shows the two taken tuples), a repeat there is answered from it too.
    deadline = time.monotonic() + 5
    while ca.call("tuple.scan", harbor="h.1")["total"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    there = ca.call("tuple.in", pattern=["r", "*"], harbor="h.1", limit=2, requestId="take-1")
    assert there["repeated"] and there["taken"] == first["taken"]
    with pytest.raises(OpError) as other:
        ca.call("tuple.in", pattern=["r", "x"], harbor="h.1", requestId="take-1")
    assert other.value.code == "conflict"
    assert ca.call("tuple.scan", harbor="h.1")["total"] == 1
    # A requestId marked "<host id>:..." says which host the take was first sent to: repeated at once
    # on another host, before that host's copy of the stream has the tombstone, it waits for it.
    host_a = ca.call("team.status")["hostId"]
    for i in range(ROUNDS):
        ca.call("tuple.out", fields=["m", i], harbor="h.2")
    deadline = time.monotonic() + 5
    while cb.call("tuple.scan", harbor="h.2")["total"] != ROUNDS and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(ROUNDS // 2):
        rid = f"{host_a}:take-{i}"
        first = ca.call("tuple.in", pattern=["m", "*"], harbor="h.2", requestId=rid)
        again = cb.call("tuple.in", pattern=["m", "*"], harbor="h.2", requestId=rid)
        assert again.get("repeated") and again["taken"] == first["taken"], (i, first, again)
    assert ca.call("tuple.count", harbor="h.2")["count"] == ROUNDS - ROUNDS // 2


def test_blocking_take_on_b_is_woken_by_out_on_a_and_ttls_hold(nats_server, daemon_factory):
    settings = team_settings([nats_server.url], "tupwait")
    a, b = daemon_factory(**settings), daemon_factory(**settings)
    wait_team_ready(a), wait_team_ready(b)
    ca, cb = a.client(), b.client()
    got: dict = {}

    def wait_for_it() -> None:
        got["in"] = b.client(timeout=30).call("tuple.in", pattern=["wake", "*"], wait=10_000)

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.5)
    assert "in" not in got
    started = time.monotonic()
    out = ca.call("tuple.out", fields=["wake", "up"])
    waiter.join(10)
    assert got["in"]["taken"][0]["id"] == out["tuple"]["id"]
    assert time.monotonic() - started < 2
    rd = {}
    reader = threading.Thread(target=lambda: rd.setdefault("rd", b.client(timeout=30).call(
        "tuple.rd", pattern=["seen", "*"], wait=10_000)))
    reader.start()
    time.sleep(0.3)
    ca.call("tuple.out", fields=["seen", 1])
    reader.join(10)
    assert rd["rd"]["count"] == 1
    short = ca.call("tuple.out", fields=["short", 1], ttlMs=800)["tuple"]
    polled = cb.call("tuple.poll", pattern=["short", "*"], after=0, wait=2000)
    assert polled["tuple"]["id"] == short["id"]
    time.sleep(1.0)
    assert cb.call("tuple.rd", pattern=["short", "*"])["count"] == 0
    assert cb.call("tuple.in", pattern=["short", "*"])["count"] == 0
    assert ca.call("tuple.count", pattern=["short", "*"])["count"] == 0


def test_nats_stopped_tuple_calls_fail_fast_and_work_again_when_back(nats_server, daemon_factory):
    d = daemon_factory(**team_settings([nats_server.url], "tupdown"))
    wait_team_ready(d)
    c = d.client(timeout=30)
    c.call("tuple.out", fields=["kept", 1])
    stop_nats_under(
        d, nats_server, waiting={"action": "tuple.in", "pattern": ["never", "*"], "wait": 20_000},
        failing=[{"action": "tuple.out", "fields": ["x"]}, {"action": "tuple.in", "pattern": ["kept", "*"]},
                 {"action": "tuple.rd", "pattern": ["kept", "*"]}, {"action": "tuple.count"},
                 {"action": "tuple.scan"}],
        http=("POST", "/tuples", {"fields": ["http"]}), local_id="tupdown:api")
    nats_server.start()
    wait_team_ready(d)
    assert c.call("tuple.in", pattern=["kept", "*"])["taken"][0]["fields"] == ["kept", 1]  # kept by JetStream
    assert c.call("tuple.out", fields=["again"])["tuple"]["id"] > 0
