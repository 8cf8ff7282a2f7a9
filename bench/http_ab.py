"""A/B the HTTP front door against two or more trees, alternately, under three loads.

    python bench/http_ab.py before=/tmp/pd_before after=/work/main --rounds 5 --duration 3
    python bench/http_ab.py a=/work/main b=/work/main:http_workers=3
    python bench/http_ab.py before=main after=HEAD        # commits: checked out in temporary worktrees

Loads (`--loads`, default all three, 32 connections): `claim` (`POST /claim`, distinct
identities), `lock` (`POST` + `DELETE /locks/<name>`, one lock per connection: an
acquire+release pair per two requests) and `health` (`GET /health` with the token).

Each variant is NAME=REPO_ROOT[:key=value,...] (or NAME=<commit>, checked out with
`git worktree add --detach` under a temporary folder and removed at the end): a daemon
(supervisor: core + gunicorn) runs from that tree (its `workers/`, `pdcore/`; the tree's root
first on sys.path), with the settings as PORT_DADDY_<KEY>. All daemons start once; then every round runs wrk against each
variant in turn (order rotated per round), so noise from other processes falls on all alike.
Claims of a run are released before the next one (the port range holds ~64k services).

Per run it prints req/s, p99, the HTTP processes' CPU per request (µs, the figure least hurt
by noise), the core's, and `others` (cores used by every other process). The summary gives,
per load, the median of each per variant and the ratio to the first variant, and the load
average of the machine at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import _httpload as H  # noqa: E402
from bench._launch import BenchDaemon, CpuMeter, _cpu_of  # noqa: E402

WIDE = {"port_range_start": 1024, "port_range_end": 65535}
CONNS = 32
LOADS = {"claim": "claim_distinct.lua", "lock": "lock_pairs.lua", "health": "health.lua"}


class TreeDaemon(BenchDaemon):
    """A BenchDaemon that runs the code of another tree (root first on sys.path, cwd there)."""

    def __init__(self, root: Path, **settings: object) -> None:
        super().__init__(**settings)
        self.root = root
        # the tree first; then the caller's PYTHONPATH (e.g. a folder with gunicorn_h1c, to compare parsers)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)

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


def tree_of(spec: str, scratch: Path) -> Path:
    """A folder holding the tree: the path itself, or a commit checked out under `scratch`."""
    path = Path(spec)
    if path.is_dir():
        return path.resolve()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", spec + "^{commit}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    target = scratch / commit[:12]
    if not target.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(target), commit],
                       capture_output=True, check=True)
    return target


def parse_variant(text: str, scratch: Path) -> tuple[str, Path, dict[str, str]]:
    name, _, rest = text.partition("=")
    root, _, opts = rest.partition(":")
    settings = dict(kv.split("=", 1) for kv in opts.split(",") if kv)
    return name, tree_of(root, scratch), settings


def run_load(d: TreeDaemon, load: str, conns: int, duration_s: float, prefix: str) -> H.HttpResult:
    # lock_pairs.lua keeps one lock per thread: as many threads as connections
    threads = conns if load == "lock" else 2
    return H.run_wrk(d.port, LOADS[load], conns, duration_s, threads=threads, script_args=(prefix,), token=d.token)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME=REPO_ROOT|COMMIT[:key=value,...]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=CONNS)
    ap.add_argument("--loads", default=",".join(LOADS), help="comma-separated, of: " + ", ".join(LOADS))
    args = ap.parse_args()
    if H.wrk_path() is None:
        sys.exit("needs wrk (apt-get install wrk)")
    loads = [x for x in args.loads.split(",") if x]

    scratch = Path(tempfile.mkdtemp(prefix="pd-ab-"))
    daemons: dict[str, TreeDaemon] = {}
    runs: dict[str, dict[str, list[dict]]] = {load: {} for load in loads}
    load_avg = [os.getloadavg()]
    try:
        for spec in args.variants:
            name, root, settings = parse_variant(spec, scratch)
            d = daemons[name] = TreeDaemon(root, **{**WIDE, **settings})
            d.start()
            if not d.wait_http(30):
                raise RuntimeError(f"{name}: HTTP not up:\n{d.log_tail()}")
            for load in loads:  # warm up: connections, code paths
                run_load(d, load, args.conns, 1, f"w{name}")
                runs[load][name] = []
            release_claims(d, f"w{name}")
        names = list(daemons)
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for load in loads:
                for name in order:
                    d = daemons[name]
                    prefix = f"r{rnd}{name}"
                    http_pids, core_pid = d.http_pids(), d.core_pid() or 0
                    h0, c0 = _cpu_of(http_pids), _cpu_of([core_pid])
                    meter = CpuMeter({"http": http_pids, "core": [core_pid], "client": [os.getpid()]})
                    r = run_load(d, load, args.conns, args.duration, prefix)
                    cpu = meter.stop()
                    h1, c1 = _cpu_of(http_pids), _cpu_of([core_pid])
                    n = max(1, r.requests)
                    row = {"req_s": round(r.req_per_s), "http_us": round((h1 - h0) / n * 1e6),
                           "core_us": round((c1 - c0) / n * 1e6), "others": cpu.get("others", 0.0),
                           "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "non200": r.non200, "errors": r.socket_errors}
                    runs[load][name].append(row)
                    print(f"round {rnd} {load:>6} {name:>8}: {row['req_s']:>6} req/s  http {row['http_us']:>4} us/req  "
                          f"core {row['core_us']:>3} us/req  others {row['others']:.2f}  p50 {r.p50_ms:.1f} ms  "
                          f"p99 {r.p99_ms:.1f} ms"
                          + (f"  non200 {r.non200} errors {r.socket_errors}" if r.non200 or r.socket_errors else ""),
                          flush=True)
                    if load == "claim":
                        release_claims(d, prefix)
    finally:
        for d in daemons.values():
            d.stop()
        for tree in scratch.iterdir():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    load_avg.append(os.getloadavg())
    summary: dict[str, dict] = {}
    print(f"\nload average (1, 5, 15 min): at start {load_avg[0]}, at end {load_avg[1]}")
    for load, per_variant in runs.items():
        base = None
        summary[load] = {}
        for name, rows in per_variant.items():
            if not rows:
                continue
            med = {k: statistics.median(r[k] for r in rows) for k in ("req_s", "http_us", "core_us", "others", "p99_ms")}
            base = base or med
            summary[load][name] = {**med, "best_req_s": max(r["req_s"] for r in rows)}
            print(f"{load:>6} {name:>8}: median {med['req_s']:>7.0f} req/s (x{med['req_s'] / base['req_s']:.2f})  "
                  f"http {med['http_us']:.0f} us/req (x{med['http_us'] / base['http_us']:.2f})  "
                  f"p99 {med['p99_ms']:.1f} ms  core {med['core_us']:.0f} us/req  others {med['others']:.2f}")
    print(json.dumps({"bench": "http_ab", "load_avg": load_avg, "summary": summary, "runs": runs}))


def release_claims(d: TreeDaemon, prefix: str) -> None:
    """Release the claims of one run (the port range holds ~64k services)."""
    for tid in range(2):
        d.call("port.release", id=f"{prefix}-{tid}:*")


if __name__ == "__main__":
    main()
