"""A three-node NATS cluster with --replicas 3: a node killed during lock churn loses nothing
acknowledged and breaks no exclusion."""

from __future__ import annotations

import threading
import time

from tests.team.conftest import team_settings, wait_team_ready
from tests.team.test_team_locks import _assert_exclusive, _churn

KEPT = 20  # locks acquired (and acknowledged) before the kill, which must all survive it


def test_killing_one_node_of_three_loses_no_acknowledged_lock_and_breaks_no_exclusion(nats_cluster, daemon_factory):
    urls = [s.url for s in nats_cluster]
    # each daemon starts on a different node, so the killed one has clients to move
    a = daemon_factory(**team_settings([urls[0], urls[1], urls[2]], "r3", team_replicas=3))
    b = daemon_factory(**team_settings([urls[1], urls[2], urls[0]], "r3", team_replicas=3))
    wait_team_ready(a), wait_team_ready(b)
    ca = a.client(timeout=60)
    kept = {f"kept-{i}": ca.call("lock.acquire", name=f"kept-{i}", owner="keeper", ttl=600_000)["fence"]
            for i in range(KEPT)}
    status = ca.call("team.status")
    locks_row = next(s for s in status["streams"] if s["name"] == "locks")
    assert locks_row["replicas"] == 3
    leader = locks_row["leader"]
    victim = next((s for s in nats_cluster if s.name == leader), nats_cluster[0])

    result: dict = {}

    def churn() -> None:
        result["holds"], result["errors"] = _churn([a, b], "r3-shared", 16, 40, deadline_s=120,
                                                   retry_unavailable=True)

    thread = threading.Thread(target=churn)
    thread.start()
    time.sleep(1.0)
    victim.stop(kill=True)  # the locks bucket's stream leader, killed mid-churn
    thread.join(180)
    assert not thread.is_alive()
    assert not result["errors"], result["errors"][:3]
    assert len(result["holds"]) == 16 * 40
    _assert_exclusive(result["holds"])
    cb = b.client(timeout=60)
    for name, fence in kept.items():
        got = cb.call("lock.get", name=name)
        assert got["held"] and got["owner"] == "keeper" and got["fence"] == fence, (name, got)
    print(f"\n3-node cluster, replicas 3: {len(result['holds'])} holds across the kill of node {victim.name} "
          f"(the locks leader); {KEPT} acknowledged locks kept")
    after = cb.call("team.status")
    assert after["connected"] and next(s for s in after["streams"] if s["name"] == "locks")["leader"] != leader


def test_killing_one_node_of_three_during_tuple_takes_loses_no_acknowledged_tuple(nats_cluster, daemon_factory):
    from tests.team.test_team_tuples import Taker, _assert_each_once, _write

    urls = [s.url for s in nats_cluster]
    a = daemon_factory(**team_settings([urls[0], urls[1], urls[2]], "r3t", team_replicas=3))
    b = daemon_factory(**team_settings([urls[1], urls[2], urls[0]], "r3t", team_replicas=3))
    wait_team_ready(a), wait_team_ready(b)
    n = 600
    _write([a, b], "r3", n)  # every out acknowledged by a quorum before the kill
    ca = a.client(timeout=60)
    for i in range(KEPT):
        ca.call("tuple.out", fields=["kept", i])
    status = ca.call("team.status")
    tuples_row = next(s for s in status["streams"] if s["name"] == "tuples")
    assert tuples_row["replicas"] == 3
    leader = tuples_row["leader"]
    victim = next((s for s in nats_cluster if s.name == leader), nats_cluster[0])
    takers = [Taker(d, "r3", time.monotonic() + 150) for d in (a, b) for _ in range(4)]
    for t in takers:
        t.start()
    deadline = time.monotonic() + 60
    while sum(len(t.taken) for t in takers) < n // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.stop(kill=True)  # the tuples stream's leader, killed mid-take
    for t in takers:
        t.join(180)
    assert all(t.error is None for t in takers), [t.error for t in takers if t.error][:3]
    _assert_each_once([i for t in takers for i in t.taken], n)
    cb = b.client(timeout=60)
    assert sorted(t["fields"][1] for t in cb.call("tuple.rd", pattern=["kept", "*"], limit=100)["tuples"]) == \
        list(range(KEPT))
    print(f"\n3-node cluster, replicas 3: {n} tuples each taken once across the kill of node {victim.name} "
          f"(the tuples leader); {KEPT} acknowledged tuples kept")
