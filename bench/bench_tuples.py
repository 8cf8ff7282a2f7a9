"""Tuple take cost against space size, and pheromone spray ingest rate (issue 5).

    python -m bench.bench_tuples            # both, JSON on stdout
    python -m bench.bench_tuples --no-daemon

`in` cost: an in-process State (real SQLite, group commit every 100 ops) holding 1k, 100k and
1M filler tuples in other harbors and under other first elements; we time `in` of a tuple
written just before it. The index must keep this flat. Spray: a real daemon (temporary home),
N fire-and-forget `pheromone.spray` frames on one IPC connection, timed until a request sent
after them is answered (frames on a connection are handled in order).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def bench_take(sizes: tuple[int, ...] = (1_000, 100_000, 1_000_000), takes: int = 10_000) -> dict:
    from pdcore.config import load_config
    from pdcore.state import Ctx, State
    from pdcore.state.tuples import TupleRecord
    from pdcore.store import Store

    out = {}
    for size in sizes:
        home = Path(tempfile.mkdtemp(prefix="pd-bench-"))
        config = load_config(home, probe_bound_ports=False)
        store = Store(config.db_path)
        store.migrate()
        state = State(store, config)
        state.load()
        tuples = state.tuples
        for i in range(size):  # filler straight into the index: the cost under test is the take's
            tuples.last_id += 1
            tuples._index(TupleRecord(tuples.last_id, f"harbor-{i % 100}", [f"head-{i % 1000}", i], None, 0, None))
        ctx = Ctx(int(time.time() * 1000))
        batches, spent = [], 0.0
        for n in range(takes):
            tuples.out(ctx, fields=["job", n])
            t0 = time.perf_counter()
            got = tuples.take(ctx, pattern=["job", "*"])
            spent += time.perf_counter() - t0
            assert got["count"] == 1
            if n % 100 == 99:
                store.commit()
                batches.append(spent / 100)
                spent = 0.0
        store.close()
        batches.sort()
        out[str(size)] = {"take_us_median": round(batches[len(batches) // 2] * 1e6, 2),
                          "take_us_p90": round(batches[len(batches) * 9 // 10] * 1e6, 2)}
    small, large = out[str(sizes[0])]["take_us_median"], out[str(sizes[-1])]["take_us_median"]
    out["ratio_largest_to_smallest"] = round(large / small, 3)
    return out


def bench_spray(frames: int = 200_000) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import Daemon

    d = Daemon(ipc_rate_limit=0).start()
    try:
        c = d.client(transport="ipc")
        c.call("daemon.health")
        t0 = time.perf_counter()
        for i in range(frames):
            c.fire("pheromone.spray", table="services", id=f"svc-{i % 1000}", key="load", strength=0.5)
        sent = time.perf_counter() - t0
        c.call("daemon.health")  # answered only after every frame before it was handled
        total = time.perf_counter() - t0
        live = c.call("pheromone.list", table="services", limit=1)["count"]
        return {"frames": frames, "client_send_per_s": round(frames / sent), "core_ingest_per_s": round(frames / total),
                "entities": live}
    finally:
        d.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-daemon", action="store_true", help="skip the spray bench (needs a daemon)")
    parser.add_argument("--sizes", default="1000,100000,1000000")
    args = parser.parse_args()
    result = {"take": bench_take(tuple(int(s) for s in args.sizes.split(",")))}
    if not args.no_daemon:
        result["spray"] = bench_spray()
    for size, row in result["take"].items():
        if isinstance(row, dict):
            print(f"tuple in, {int(size):>9,} other tuples   median {row['take_us_median']:7.2f} us   "
                  f"p90 {row['take_us_p90']:7.2f} us")
    print(f"ratio largest / smallest (median)         {result['take']['ratio_largest_to_smallest']:.2f}")
    if "spray" in result:
        print(f"pheromone spray, fire-and-forget          {result['spray']['core_ingest_per_s']:,} frames/s ingested")
    print(json.dumps({"bench": "tuples", **result}))


if __name__ == "__main__":
    main()
