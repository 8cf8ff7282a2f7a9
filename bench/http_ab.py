"""A/B the HTTP front door: `POST /claim` (distinct identities) against two or more trees, alternately.

    python bench/http_ab.py before=/tmp/pd_before after=/work/main --rounds 5 --duration 3
    python bench/http_ab.py a=/work/main b=/work/main:http_workers=3,http_threads=8

Each variant is NAME=REPO_ROOT[:key=value,...]: a daemon (supervisor: core + gunicorn) runs
from that tree (its `workers/`, `pdcore/`; the tree's root first on sys.path), with the
settings as PORT_DADDY_<KEY>. All daemons start once; then every round runs wrk against each
variant in turn (order rotated per round), so noise from other processes falls on all alike.
Claims of a run are released before the next one (the port range holds ~64k services).

Per run it prints req/s, the HTTP processes' CPU per request (µs, the figure least hurt by
noise), the core's, and `others` (cores used by every other process). The summary gives the
median of each per variant and the ratio to the first variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import _httpload as H  # noqa: E402
from bench._launch import BenchDaemon, CpuMeter, _cpu_of  # noqa: E402

WIDE = {"port_range_start": 1024, "port_range_end": 65535}
CONNS = 32


class TreeDaemon(BenchDaemon):
    """A BenchDaemon that runs the code of another tree (root first on sys.path, cwd there)."""

    def __init__(self, root: Path, **settings: object) -> None:
        super().__init__(**settings)
        self.root = root
        self.env["PYTHONPATH"] = str(root)

    def start(self, core_only: bool = False, timeout: float = 30.0) -> TreeDaemon:
        self.core_only = core_only
        log = open(self.home / "bench-daemon.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "pdcore.supervisor"], env=self.env, cwd=self.root,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.call("daemon.health")
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise RuntimeError(f"daemon not ready:\n{self.log_tail()}")


def parse_variant(text: str) -> tuple[str, Path, dict[str, str]]:
    name, _, rest = text.partition("=")
    root, _, opts = rest.partition(":")
    settings = dict(kv.split("=", 1) for kv in opts.split(",") if kv)
    return name, Path(root).resolve(), settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME=REPO_ROOT[:key=value,...]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=CONNS)
    args = ap.parse_args()
    if H.wrk_path() is None:
        sys.exit("needs wrk (apt-get install wrk)")

    daemons: dict[str, TreeDaemon] = {}
    runs: dict[str, list[dict]] = {}
    try:
        for spec in args.variants:
            name, root, settings = parse_variant(spec)
            d = daemons[name] = TreeDaemon(root, **{**WIDE, **settings})
            d.start()
            if not d.wait_http(30):
                raise RuntimeError(f"{name}: HTTP not up:\n{d.log_tail()}")
            H.run_wrk(d.port, "claim_distinct.lua", args.conns, 1, script_args=(f"w{name}",), token=d.token)
            d.call("port.release", id=f"w{name}-0:*")
            d.call("port.release", id=f"w{name}-1:*")
            runs[name] = []
        names = list(daemons)
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                d = daemons[name]
                prefix = f"r{rnd}{name}"
                http_pids, core_pid = d.http_pids(), d.core_pid() or 0
                h0, c0 = _cpu_of(http_pids), _cpu_of([core_pid])
                meter = CpuMeter({"http": http_pids, "core": [core_pid], "client": [os.getpid()]})
                r = H.run_wrk(d.port, "claim_distinct.lua", args.conns, args.duration, script_args=(prefix,),
                              token=d.token)
                cpu = meter.stop()
                h1, c1 = _cpu_of(http_pids), _cpu_of([core_pid])
                n = max(1, r.requests)
                row = {"req_s": round(r.req_per_s), "http_us": round((h1 - h0) / n * 1e6),
                       "core_us": round((c1 - c0) / n * 1e6), "others": cpu.get("others", 0.0),
                       "p50_ms": r.p50_ms, "non200": r.non200, "errors": r.socket_errors}
                runs[name].append(row)
                print(f"round {rnd} {name:>10}: {row['req_s']:>6} req/s  http {row['http_us']:>4} us/req  "
                      f"core {row['core_us']:>3} us/req  others {row['others']:.2f}  p50 {r.p50_ms:.1f} ms"
                      + (f"  non200 {r.non200} errors {r.socket_errors}" if r.non200 or r.socket_errors else ""),
                      flush=True)
                for tid in range(2):
                    d.call("port.release", id=f"{prefix}-{tid}:*")
    finally:
        for d in daemons.values():
            d.stop()
    base = None
    summary = {}
    print()
    for name, rows in runs.items():
        if not rows:
            continue
        med = {k: statistics.median(r[k] for r in rows) for k in ("req_s", "http_us", "core_us", "others")}
        best = max(r["req_s"] for r in rows)
        base = base or med
        summary[name] = {**med, "best_req_s": best}
        print(f"{name:>10}: median {med['req_s']:>7.0f} req/s (best {best})  http {med['http_us']:.0f} us/req "
              f"(x{med['http_us'] / base['http_us']:.2f})  req/s x{med['req_s'] / base['req_s']:.2f}  "
              f"others {med['others']:.2f}")
    print(json.dumps({"bench": "http_ab", "summary": summary, "runs": runs}))


if __name__ == "__main__":
    main()
