"""A client that floods its IPC connection, or holds every connection it may, does not starve the
others: the core serves connections in fair turns (`ipc_frames_per_turn`).

Quiet and flooded phases alternate within one test, so the machine's own load weighs on both
figures alike; the ratio of their claim p99s is what is checked. A burst of load from other
processes can still land on one phase only: a ratio past the bound is measured once more, and
the second measurement decides. Figures are printed (`-s`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from pdcore.client import Client
from tests.conftest import REPO

ROUNDS = 3
SAMPLES = 300  # claims per phase and round
GAP_S = 0.002  # between two claims, so the samples spread over the phase


def claim_latencies(client: Client, identity: str) -> list[float]:
    out = []
    for _ in range(SAMPLES):
        t0 = time.perf_counter()
        client.port_claim(id=identity)
        out.append(time.perf_counter() - t0)
        time.sleep(GAP_S)
    return out


def p99_ms(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99)] * 1000


def flooder(d, hold: int, rate: int = 0, blast: bool = False) -> tuple[subprocess.Popen, dict]:
    """Another process holding `hold` connections and flooding one (tests/reliability/_flood.py)."""
    cmd = [sys.executable, "-m", "tests.reliability._flood", "--ipc", str(d.config.ipc), "--hold", str(hold),
           "--rate", str(rate), "--seconds", "60"] + (["--blast"] if blast else [])
    proc = subprocess.Popen(cmd, env=d.env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    report = json.loads(proc.stdout.readline())
    time.sleep(0.2)  # let the flood reach its pace
    return proc, report


def measure(d, client: Client, **flood: object) -> tuple[list[float], list[float], dict]:
    """Claim latencies of `client` in quiet and flooded phases, alternating; the first flood's report.
    Measured again when the flooded p99 passes 3x the quiet one (see the module doc)."""
    quiet, flooded, report = _measure_once(d, client, **flood)
    if p99_ms(flooded) > 3 * p99_ms(quiet):
        print(f"\nfirst measurement: p99 quiet {p99_ms(quiet):.2f} ms, flooded {p99_ms(flooded):.2f} ms; again")
        quiet, flooded, _ = _measure_once(d, client, **flood)
    return quiet, flooded, report


def _measure_once(d, client: Client, **flood: object) -> tuple[list[float], list[float], dict]:
    quiet: list[float] = []
    flooded: list[float] = []
    first: dict = {}
    for _ in range(ROUNDS):
        quiet += claim_latencies(client, "fair:quiet:main")
        proc, report = flooder(d, **flood)  # type: ignore[arg-type]
        try:
            first = first or report
            flooded += claim_latencies(client, "fair:quiet:main")
            if "cli" not in first:
                run = d.pd("claim", "fair:cli:main")  # a new process gets in and is answered
                first["cli"] = (run.returncode, run.stdout.strip(), run.stderr.strip())
        finally:
            proc.kill()
            proc.wait(timeout=10)
    return quiet, flooded, first


def test_a_flood_at_ten_times_the_rate_and_a_peer_at_its_cap_leave_other_claims_fast(daemon_factory):
    d = daemon_factory(ipc_rate_limit=500)  # the default rate and connection caps
    per_peer = d.config.ipc_max_connections_per_peer
    client = Client(d.config, transport="ipc")
    client.port_claim(id="fair:quiet:main")
    before = client.daemon_metrics()["counters"]
    quiet, flooded, report = measure(d, client, hold=per_peer, rate=10 * d.config.ipc_rate_limit)
    counters = client.daemon_metrics()["counters"]
    print(f"\nclaim p99 quiet {p99_ms(quiet):.2f} ms, with a flood at 10x the rate and {per_peer} connections "
          f"held {p99_ms(flooded):.2f} ms (max {max(flooded) * 1000:.1f} ms); "
          f"{counters['rate_limited'] - before['rate_limited']} flood frames refused for the rate")
    assert report["held"] == per_peer and report["extra"] == "too_many_connections"
    assert report["cli"][0] == 0 and "fair:cli:main -> port" in report["cli"][1], report["cli"]
    assert counters["rate_limited"] - before["rate_limited"] > 1000  # the flood was past its rate
    assert p99_ms(flooded) <= 3 * p99_ms(quiet), (p99_ms(quiet), p99_ms(flooded))


def test_an_unpaced_flood_waits_its_turn(daemon_factory):
    d = daemon_factory(ipc_rate_limit=500)
    client = Client(d.config, transport="ipc")
    client.port_claim(id="fair:quiet:main")
    before = client.daemon_metrics()["counters"]["frames"]
    quiet, flooded, report = measure(d, client, hold=1, blast=True)
    frames = client.daemon_metrics()["counters"]["frames"] - before
    print(f"\nclaim p99 quiet {p99_ms(quiet):.2f} ms, beside a flood as fast as the socket takes it "
          f"{p99_ms(flooded):.2f} ms (max {max(flooded) * 1000:.1f} ms); {frames} frames read in all")
    assert report["cli"][0] == 0, report["cli"]
    # An unpaced blaster keeps a whole core busy on this 2-core machine, so the measuring client
    # also waits for a CPU: 2 ms on top of the 3x for that (before fair turns: p99 168 ms).
    assert p99_ms(flooded) <= 3 * p99_ms(quiet) + 2.0, (p99_ms(quiet), p99_ms(flooded))
