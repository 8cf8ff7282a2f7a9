"""Locks shared by two daemons (two homes standing for two hosts) through a real nats-server."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pdcore.errors import OpError
from tests.team.conftest import stop_nats_under, team_settings, wait_team_ready

ACQUIRERS = 64
ROUNDS = int(os.environ.get("PD_TEAM_LOCK_ROUNDS", "200"))


def _churn(daemons, name: str, acquirers: int, rounds: int, deadline_s: float, retry_unavailable: bool = False):
    """`acquirers` threads (split over `daemons`) each take and release `name` `rounds` times.

    Returns (holds, errors): each hold is (fence, acquired_at, released_at) in one clock, with
    an in-process check that no two holders are ever inside at once.
    """
    holds: list[tuple[int, float, float]] = []
    errors: list[BaseException] = []
    inside = [0]
    guard = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def run(i: int) -> None:
        client = daemons[i % len(daemons)].client(timeout=60)
        owner = f"acq-{i}"
        try:
            for _ in range(rounds):
                renew = False
                while True:  # a call that met team_unavailable (a node dying) is repeated, as a client would
                    if time.monotonic() > stop_at:
                        raise AssertionError("churn ran out of time")
                    try:
                        # a repeat renews: the first try may have been applied with its answer lost
                        got = client.call("lock.acquire", name=name, owner=owner, ttl=30_000, wait=60_000,
                                          renew=renew)
                        break
                    except OpError as exc:
                        if not (retry_unavailable and exc.code == "team_unavailable"):
                            raise
                        renew = True
                        time.sleep(0.05)
                t0 = time.monotonic()
                with guard:
                    inside[0] += 1
                    assert inside[0] == 1, "two holders inside at once"
                with guard:
                    inside[0] -= 1
                t1 = time.monotonic()
                repeated = False
                while True:
                    try:
                        client.call("lock.release", name=name, owner=owner, fence=got["fence"])
                        break
                    except OpError as exc:
                        if repeated and exc.code == "not_owner":
                            break  # the release that met team_unavailable was applied; another holder took it
                        if not (retry_unavailable and exc.code == "team_unavailable"):
                            raise
                        repeated = True
                        time.sleep(0.05)
                with guard:
                    holds.append((got["fence"], t0, t1))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(acquirers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 60)
    return holds, errors


def _assert_exclusive(holds) -> None:
    holds = sorted(holds)
    fences = [f for f, _, _ in holds]
    assert len(set(fences)) == len(fences), "a fence was handed out twice"
    for (f0, _, released), (f1, acquired, _) in zip(holds, holds[1:], strict=False):
        assert f1 > f0
        assert acquired >= released, f"fence {f1} was held before fence {f0} was released"


def test_64_acquirers_on_two_daemons_never_overlap_and_fences_grow(nats_server, daemon_factory):
    settings = team_settings([nats_server.url], "excl")
    a, b = daemon_factory(**settings), daemon_factory(**settings)
    wait_team_ready(a), wait_team_ready(b)
    started = time.monotonic()
    holds, errors = _churn([a, b], "shared", ACQUIRERS, ROUNDS, deadline_s=240)
    took = time.monotonic() - started
    assert not errors, errors[:3]
    assert len(holds) == ACQUIRERS * ROUNDS
    _assert_exclusive(holds)
    hosts = {c.call("lock.get", name="shared")["held"] for c in (a.client(), b.client())}
    assert hosts == {False}
    print(f"\n{ACQUIRERS} acquirers x {ROUNDS} rounds over two daemons: {len(holds)} holds in {took:.1f} s "
          f"({len(holds) / took:.0f} hand-overs/s)")


def test_fences_grow_across_hosts_and_a_vanished_holder_frees_by_ttl(nats_server, daemon_factory):
    settings = team_settings([nats_server.url], "ttl")
    a, b = daemon_factory(**settings), daemon_factory(**settings)
    wait_team_ready(a), wait_team_ready(b)
    ca, cb = a.client(), b.client()
    first = ca.call("lock.acquire", name="job", owner="A", ttl=1000)
    with pytest.raises(OpError) as held:
        cb.call("lock.acquire", name="job", owner="B", ttl=1000)
    assert held.value.code == "lock_held" and held.value.extra["holder"] == "A"
    a.stop()  # host A vanishes holding the lock: its TTL frees it team-wide
    started = time.monotonic()
    second = cb.call("lock.acquire", name="job", owner="B", ttl=5000, wait=10_000)
    assert time.monotonic() - started < 5
    assert second["fence"] > first["fence"]
    with pytest.raises(OpError) as stale:
        cb.call("lock.release", name="job", owner="A", fence=first["fence"])
    assert stale.value.code == "not_owner"
    with pytest.raises(OpError) as again:  # not re-entrant: its holder asking again is refused (3.7)
        cb.call("lock.acquire", name="job", owner="B", ttl=5000)
    assert again.value.code == "lock_held"
    renewed = cb.call("lock.acquire", name="job", owner="B", ttl=5000, renew=True)
    assert renewed["renewed"] and renewed["fence"] == second["fence"]
    extended = cb.call("lock.extend", name="job", owner="B", ttl=8000)
    assert extended["fence"] == second["fence"]
    assert [lk["name"] for lk in cb.call("lock.list")["locks"]] == ["job"]
    status, body = b.http("GET", "/locks/job")
    assert status == 200 and body["held"] and body["fence"] == second["fence"]


def test_a_connection_bound_team_lock_frees_when_its_connection_closes(nats_server, daemon_factory):
    settings = team_settings([nats_server.url], "bound", team_bound_lock_ttl_ms=3000)
    a, b = daemon_factory(**settings), daemon_factory(**settings)
    wait_team_ready(a), wait_team_ready(b)
    holder = a.client(transport="ipc")
    got = holder.call("lock.acquire", name="conn", owner="A")
    assert got["connectionBound"]
    time.sleep(4)  # longer than the server TTL: the daemon keeps refreshing it while bound
    cb = b.client()
    assert cb.call("lock.get", name="conn")["held"]
    holder.close()
    taken = cb.call("lock.acquire", name="conn", owner="B", ttl=5000, wait=5000)
    assert taken["fence"] > got["fence"]


def test_nats_stopped_team_calls_fail_fast_local_calls_work_and_recover_without_restart(nats_server,
                                                                                       daemon_factory):
    d = daemon_factory(**team_settings([nats_server.url], "down"))
    wait_team_ready(d)
    c = d.client(timeout=30)
    c.call("lock.acquire", name="held", owner="X", ttl=60_000)
    stop_nats_under(
        d, nats_server,
        waiting={"action": "lock.acquire", "name": "held", "owner": "Y", "ttl": 1000, "wait": 20_000},
        failing=[{"action": "lock.acquire", "name": "other", "owner": "X", "ttl": 1000},
                 {"action": "lock.release", "name": "held", "owner": "X"},
                 {"action": "lock.get", "name": "held"}, {"action": "lock.list"}],
        http=("POST", "/locks/http-door", {"owner": "X", "ttl": 1000}), local_id="teamdown:api")
    st = c.call("team.status")
    assert not st["connected"] and st["lastError"]
    nats_server.start()
    wait_team_ready(d)
    assert c.call("lock.get", name="held")["owner"] == "X"  # kept by JetStream across the restart
    assert c.call("lock.acquire", name="other", owner="X", ttl=1000)["fence"] > 0
