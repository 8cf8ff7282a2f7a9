"""Benchmark the foundation of Port Daddy: the core's IPC, group commit, HTTP front door, scale.

    python bench/bench_foundation.py            # about 1 minute; table + one JSON line
    python bench/bench_foundation.py --profile /tmp/pd-prof   # also py-spy the core per part

Parts (each on a fresh daemon in a temporary home; see docs/bench.md for what they mean):
  1. IPC port.claim of an EXISTING identity: 1 connection request->response, 32 connections
     request->response, 32 connections pipelined (a window of requests in flight each).
  2. IPC port.claim of NEW identities (one durable write each), 32 connections pipelined.
  3. Fire-and-forget frames/s ingested by the core (conv_id 0), read from counters.ops.
  4. HTTP POST /claim with distinct identities at 32 connections (wrk, else a Python client).
  5. Single request->response claim latency with 1k vs 60k services held.
The last line printed is `{"bench": "foundation", ...}` for machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _httpload as H  # noqa: E402
from bench import _ipcload as L  # noqa: E402
from bench._launch import BenchDaemon, CpuMeter  # noqa: E402
from bench._profile import Profile  # noqa: E402
from pdcore import protocol as P  # noqa: E402
from pdcore.ops import CATALOGUE  # noqa: E402

WIDE = {"port_range_start": 1024, "port_range_end": 65535}  # every non-privileged port
CONNS = 32

TARGETS = {
    "ipc_existing_pipelined_ops_s": (">=", 100_000),
    "ipc_new_pipelined_ops_s": (">=", 30_000),
    "http_claim_req_s": (">=", 6_000),
    "claim_p99_ratio": ("<=", 1.2),
}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[tuple[str, str, str, str]] = []  # (part, figure, value, note)
        self.figures: dict[str, Any] = {}
        self.cpu: dict[str, dict[str, float]] = {}
        self.notes: list[str] = []
        self.profiles: list[str] = []

    # -- reporting helpers --
    def row(self, part: str, figure: str, value: Any, note: str = "") -> None:
        self.rows.append((part, figure, fmt(value), note))
        print(f"  {figure:<44} {fmt(value):>12}  {note}", flush=True)

    def daemon(self, core_only: bool = True, **settings: Any) -> BenchDaemon:
        settings = {**settings}
        if self.args.supervisor:
            core_only = False
        return BenchDaemon(**settings).start(core_only=core_only)

    def meter(self, d: BenchDaemon) -> CpuMeter:
        return CpuMeter({"core": [d.core_pid() or 0], "http": d.http_pids(), "client": [os.getpid()]})

    def cpu_note(self, key: str) -> str:
        """'cpu core 98% client 3% others 4%': whether the core was saturated, and the noise."""
        cpu = self.cpu.get(key, {})
        return "cpu " + " ".join(f"{k} {v:.0%}" for k, v in cpu.items())

    def profile(self, d: BenchDaemon, name: str) -> Profile:
        prefix = Path(self.args.profile) / name if self.args.profile else None
        return Profile(d.core_pid(), prefix)

    def keep_profile(self, prof: Profile) -> None:
        text = prof.summary()
        if text:
            self.profiles.append(text)

    # -- 1. existing identity ----------------------------------------------------------------
    def part_existing(self, d: BenchDaemon) -> None:
        print("1. IPC port.claim of an existing identity", flush=True)
        d.call("port.claim", id="bench:existing")
        frame = L.request_frame("port.claim", id="bench:existing")
        warm, dur = self.args.warmup, self.args.duration
        modes = (("rr1", 1, 1, "1 connection, request->response"),
                 ("rr32", CONNS, 1, f"{CONNS} connections, request->response"),
                 ("pipelined", CONNS, self.args.window, f"{CONNS} connections x window {self.args.window}"))
        for key, conns, window, label in modes:
            meter = self.meter(d)
            with self.profile(d, f"existing-{key}") as prof:
                r = L.run(d.ipc_path, conns, window, lambda i: L.Repeat(frame), warm, dur)
                self.cpu[f"existing_{key}"] = meter.stop()
            if key == "pipelined":
                self.keep_profile(prof)
            self.check_errors(r, f"existing {key}")
            self.figures[f"ipc_existing_{key}_ops_s"] = round(r.ops_per_s)
            lat = ""
            if window == 1:
                self.figures[f"ipc_existing_{key}_p50_us"] = round(r.p50_us or 0, 1)
                self.figures[f"ipc_existing_{key}_p99_us"] = round(r.p99_us or 0, 1)
                lat = f"p50 {r.p50_us:.0f} us, p99 {r.p99_us:.0f} us"
            self.row("1", f"existing claim ops/s ({label})", round(r.ops_per_s),
                     f"{lat + '; ' if lat else ''}{self.cpu_note(f'existing_{key}')}")

    # -- 2. new identities -------------------------------------------------------------------
    def new_claims(self, d: BenchDaemon, tag: str, per_conn: int) -> L.Result:
        warm = [[L.request_frame("port.claim", conv_id=n + 1, id=f"bw-{tag}:c{i}:{n}") for n in range(60)]
                for i in range(CONNS)]
        L.run_frames(d.ipc_path, self.args.window, warm)
        frames = [[L.request_frame("port.claim", conv_id=n + 1, id=f"bn-{tag}:c{i}:{n}") for n in range(per_conn)]
                  for i in range(CONNS)]
        commits = d.call("daemon.metrics")["counters"]["commits"]
        meter = self.meter(d)
        with self.profile(d, f"new-{tag}") as prof:
            r = L.run_frames(d.ipc_path, self.args.window, frames)
            self.cpu[f"new_{tag}"] = meter.stop()
        self.keep_profile(prof)
        self.check_errors(r, f"new claims ({tag})")
        r.commits = d.call("daemon.metrics")["counters"]["commits"] - commits
        return r

    def part_new(self) -> None:
        print("2. IPC port.claim of new identities (durable write each)", flush=True)
        per_conn = self.args.new_per_conn
        total = per_conn * CONNS
        for tag, probe, key in (("probe", True, "ipc_new_pipelined_ops_s"),
                                ("noprobe", False, "ipc_new_pipelined_noprobe_ops_s")):
            with self.daemon(probe_bound_ports=probe, **WIDE) as d:
                r = self.new_claims(d, tag, per_conn)
            self.figures[key] = round(r.ops_per_s)
            self.figures[f"{key[:-6]}_commits"] = r.commits
            label = "bound-port probe on (default)" if probe else "probe_bound_ports=0"
            self.row("2", f"new claim ops/s ({label})", round(r.ops_per_s),
                     f"{total} claims in {r.seconds:.2f} s, {r.commits} commits; "
                     + self.cpu_note(f"new_{tag}"))

    # -- 3. fire-and-forget --------------------------------------------------------------------
    def part_fire_and_forget(self, d: BenchDaemon) -> None:
        print("3. Fire-and-forget frames ingested by the core", flush=True)
        found, why = find_ff_op(d, self.args.ff_op)
        if found is None:
            self.figures["ff_ingest_frames_s"] = None
            self.figures["ff_note"] = why
            self.row("3", "fire-and-forget frames/s", "n/a", why)
            return
        action, fargs = found
        frame = P.encode(P.REQUEST, 0, {"action": action, **fargs})
        per_block = 10_000
        blocks = max(1, self.args.ff_frames // per_block)
        n = per_block * blocks
        before = d.call("daemon.metrics")["counters"]
        meter = self.meter(d)
        with self.profile(d, "ff") as prof:
            t0 = time.perf_counter()
            send_s = L.blast(d.ipc_path, frame * per_block, blocks, conns=4)
            polls, last_ops, last_change = 0, -1, time.perf_counter()
            target = before["ops"] + n  # `before` counts its own metrics call; each poll counts itself
            while True:
                counters = d.call("daemon.metrics")["counters"]
                polls += 1
                now = time.perf_counter()
                ops = counters["ops"] - polls  # the polls are ops too
                if ops != last_ops:
                    last_ops, last_change = ops, now
                if ops >= target or now - last_change > 1.0 or now - t0 > 120:
                    break
                time.sleep(0.01)
            self.cpu["ff"] = meter.stop()
        self.keep_profile(prof)
        done_at = last_change - t0
        ingested = last_ops - before["ops"]
        errors = counters["errors"] - before["errors"]
        rate = ingested / done_at if done_at > 0 else 0
        self.figures["ff_ingest_frames_s"] = round(rate)
        self.figures["ff_op"] = action
        self.figures["ff_lost"] = n - ingested
        note = (f"{ingested} of {n} {action} frames in {done_at:.2f} s (client sent in {send_s:.2f} s)"
                + (f", {errors} refused by the handler" if errors else "") + "; " + self.cpu_note("ff"))
        self.row("3", f"fire-and-forget frames/s ({action})", round(rate), note)

    # -- 4. HTTP -------------------------------------------------------------------------------
    def part_http(self) -> None:
        print("4. HTTP POST /claim, distinct identities", flush=True)
        settings = dict(WIDE)
        if self.args.http_workers:
            settings["http_workers"] = self.args.http_workers
        with BenchDaemon(**settings).start(core_only=False) as d:
            if not d.wait_http(20):
                why = "the HTTP server did not answer GET /health within 20 s"
                self.figures.update(http_claim_req_s=None, http_note=why)
                self.row("4", "HTTP claim req/s", "n/a", why)
                return
            dur = self.args.duration
            use_wrk = H.wrk_path() is not None and not self.args.no_wrk
            before = d.call("daemon.metrics")["counters"]
            with self.profile(d, "http") as prof:
                if use_wrk:
                    H.run_wrk(d.port, "claim_distinct.lua", CONNS, 1, script_args=("warm",), token=d.token)
                    meter = self.meter(d)
                    r = H.run_wrk(d.port, "claim_distinct.lua", CONNS, dur, script_args=("bench-http",), token=d.token)
                else:
                    meter = self.meter(d)
                    r = H.run_python(d.port, lambda i, n: H.post_json("/claim", {"id": f"bench-http-{i}:c:{n}"}, d.token),
                                     CONNS, self.args.warmup, dur)
                self.cpu["http"] = meter.stop()
            self.keep_profile(prof)
            after = d.call("daemon.metrics")["counters"]
            workers = d.config.http_workers
        ops = after["ops"] - before["ops"]
        commits = max(1, after["commits"] - before["commits"])
        self.figures["http_ops_per_commit"] = round(ops / commits, 1)
        self.figures.update(http_claim_req_s=round(r.req_per_s), http_claim_p50_ms=round(r.p50_ms or 0, 2),
                            http_claim_p99_ms=round(r.p99_ms or 0, 2), http_non200=r.non200,
                            http_socket_errors=r.socket_errors, http_tool=r.tool)
        note = (f"{r.tool}, {CONNS} conns, {workers} ASGI workers; p50 {r.p50_ms:.1f} ms, "
                f"p99 {r.p99_ms:.1f} ms; {ops / commits:.1f} claims per commit; " + self.cpu_note("http"))
        if r.non200 or r.socket_errors:
            note += f"; {r.non200} non-200, {r.socket_errors} socket errors"
            self.notes.append(f"HTTP: {r.non200} non-200 replies, {r.socket_errors} socket errors")
        self.row("4", "HTTP claim req/s", round(r.req_per_s), note)

    # -- 5. latency at scale -------------------------------------------------------------------
    def part_scale(self) -> None:
        small, large = self.args.scale_small, self.args.scale_large
        print(f"5. Claim latency with {small} vs {large} services held (probe_bound_ports=0)", flush=True)
        # Two daemons, one per size, sampled in alternating batches: noise from other processes
        # then falls on both sizes alike and the ratio stays meaningful on a busy machine.
        daemons = {small: self.daemon(probe_bound_ports=False, **WIDE)}
        try:
            daemons[large] = self.daemon(probe_bound_ports=False, **WIDE)
            held, fill_s = {}, {}
            for size, d in daemons.items():
                fill_s[size], held[size] = self.fill(d, size)
            results: dict[int, list[int]] = {small: [], large: []}
            trips = {size: L.RoundTrip(d.ipc_path) for size, d in daemons.items()}
            meter = CpuMeter({"core": [d.core_pid() or 0 for d in daemons.values()], "client": [os.getpid()]})
            with self.profile(daemons[large], "scale-large") as prof:
                batch, i = 100, 0
                for size in daemons:  # warm-up, untimed
                    self.sample_claims(trips[size], f"w{size}", 0, 200)
                while len(results[large]) < self.args.samples:
                    order = (small, large) if i % 2 == 0 else (large, small)
                    for size in order:
                        results[size] += self.sample_claims(trips[size], f"s{size}", i * batch, batch)
                    i += 1
                self.cpu["scale"] = meter.stop()
            self.keep_profile(prof)
            for rt in trips.values():
                rt.close()
        finally:
            for d in daemons.values():
                d.stop()
        pct = {size: {q: L.percentile_us(results[size], q) for q in (50, 99, 99.9)} for size in results}
        for size in (small, large):
            p = pct[size]
            self.figures[f"claim_p50_us_{size}"] = round(p[50], 1)
            self.figures[f"claim_p99_us_{size}"] = round(p[99], 1)
            self.figures[f"claim_p999_us_{size}"] = round(p[99.9], 1)
            self.row("5", f"new claim p50 / p99 / p99.9 us, {held[size]} held",
                     f"{p[50]:.0f} / {p[99]:.0f} / {p[99.9]:.0f}",
                     f"{len(results[size])} single request->response claims (table filled in {fill_s[size]:.1f} s)")
        r50 = pct[large][50] / pct[small][50]
        r99 = pct[large][99] / pct[small][99]
        self.figures.update(scale_small=small, scale_large=large, claim_p50_ratio=round(r50, 2),
                            claim_p99_ratio=round(r99, 2))
        self.row("5", f"ratio {large} / {small}: p50, p99", f"{r50:.2f}, {r99:.2f}",
                 "sizes sampled alternately; " + self.cpu_note("scale"))
        self.notes.append(f"part 5: only ~64k ports exist, so 100k services cannot be held at once; "
                          f"{large} is the most that fits with room to spare")

    def fill(self, d: BenchDaemon, size: int) -> tuple[float, int]:
        """Claim `size` services with the pipelined loader; return (seconds, services held)."""
        per = -(-size // CONNS)
        frames = [[L.request_frame("port.claim", conv_id=n + 1, id=f"fill:c{i}:{n}")
                   for n in range(per) if i * per + n < size] for i in range(CONNS)]
        t0 = time.perf_counter()
        r = L.run_frames(d.ipc_path, self.args.window, frames)
        self.check_errors(r, f"loading {size} services")
        return time.perf_counter() - t0, d.call("daemon.metrics")["gauges"].get("services")

    @staticmethod
    def sample_claims(rt: L.RoundTrip, tag: str, first: int, count: int) -> list[int]:
        """Time `count` claims of new identities; release each (untimed) so the size holds."""
        out = []
        for i in range(first, first + count):
            ident = f"sample-{tag}:x:{i}"
            ns, type_ = rt.call_ns(L.request_frame("port.claim", conv_id=1, id=ident))
            if type_ != P.INFORM_DONE:
                raise RuntimeError(f"claim of {ident} answered {P.NAMES.get(type_, type_)}")
            rt.call_ns(L.request_frame("port.release", conv_id=2, id=ident))
            out.append(ns)
        return out

    # -- run ---------------------------------------------------------------------------------
    def check_errors(self, r: L.Result, what: str) -> None:
        if r.errors:
            msg = f"{what}: {r.errors} error replies, first: {r.first_error}"
            self.notes.append(msg)
            print(f"  !! {msg}", flush=True)

    def run(self) -> None:
        t0 = time.perf_counter()
        parts = set(self.args.parts.split(","))
        if "1" in parts or "3" in parts:
            with self.daemon() as d:
                if "1" in parts:
                    self.part_existing(d)
                if "3" in parts:
                    self.part_fire_and_forget(d)
        if "2" in parts:
            self.part_new()
        if "4" in parts:
            self.part_http()
        if "5" in parts:
            self.part_scale()
        self.figures["runtime_s"] = round(time.perf_counter() - t0, 1)
        self.report()

    def report(self) -> None:
        print()
        print(f"{'part':<5}{'figure':<46}{'value':>13}  note")
        print("-" * 110)
        for part, figure, value, note in self.rows:
            print(f"{part:<5}{figure:<46}{value:>13}  {note}")
        verdicts = {}
        for key, (op, limit) in TARGETS.items():
            v = self.figures.get(key)
            if v is None:
                continue
            ok = v >= limit if op == ">=" else v <= limit
            verdicts[key] = {"value": v, "target": f"{op} {limit}", "met": ok}
        if verdicts:
            print("\ntargets: " + "; ".join(f"{k} {d['value']} ({d['target']}): {'met' if d['met'] else 'MISSED'}"
                                           for k, d in verdicts.items()))
        noisy = {k: v["others"] for k, v in self.cpu.items() if v.get("others", 0) > 0.25}
        if noisy:
            self.notes.append("other processes were busy during " + ", ".join(f"{k} ({v:.0%} of a core)"
                              for k, v in noisy.items()) + "; those figures are lower bounds: re-run on an idle machine")
        self.figures["noisy_parts"] = sorted(noisy)
        for note in self.notes:
            print(f"note: {note}")
        for text in self.profiles:
            print(text)
        out = {"bench": "foundation", **self.figures, "targets": verdicts, "cpu": self.cpu,
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform()},
               "settings": {"duration_s": self.args.duration, "warmup_s": self.args.warmup,
                            "window": self.args.window, "conns": CONNS, "supervisor": self.args.supervisor}}
        print(json.dumps(out, separators=(", ", ": ")))


# -- fire-and-forget: find an op the catalogue allows, with arguments it accepts ------------------
_FF_PREFERENCE = ("heartbeat", "publish", "spray")
_BENCH_AGENT = "bench-ff-agent"
_BY_NAME: dict[str, Any] = {"channel": "bench.ff", "message": "x", "payload": "x", "content": "x",
                            "agentId": _BENCH_AGENT, "id": _BENCH_AGENT, "name": "bench-ff"}
_BY_TYPE: dict[str, Callable[[Any], Any]] = {
    "identity": lambda a: "bench:ff", "idpattern": lambda a: "bench:ff", "name": lambda a: "bench-ff",
    "str": lambda a: "x", "text": lambda a: "x", "int": lambda a: int(max(a.min or 0, 1)),
    "float": lambda a: float(max(a.min or 0, 1)), "bool": lambda a: True, "dict": lambda a: {}, "list": lambda a: [],
    "any": lambda a: "x",
}


# Arguments known to be accepted by the fire-and-forget ops of the catalogue; other ops get
# synthetic values for their required arguments.
_FF_KNOWN: dict[str, dict] = {
    "heartbeat": {"id": _BENCH_AGENT},
    "msg.publish": {"channel": "bench.ff", "payload": "x"},
    "pheromone.spray": {"table": "services", "id": "bench:ff", "key": "urgency", "strength": 0.5},
}


def _args_for(op: Any) -> dict:
    if op.name in _FF_KNOWN:
        return dict(_FF_KNOWN[op.name])
    out = {}
    for arg in op.args:
        if arg.required or (arg.name in ("id", "agentId") and "heartbeat" in op.name):
            if arg.name in _BY_NAME:
                value = _BY_NAME[arg.name]
                if arg.type == "identity":
                    value = "bench:ff"
            else:
                value = _BY_TYPE.get(arg.type, lambda a: "x")(arg)
            out[arg.name] = value
            if arg.name in ("id", "agentId") and "heartbeat" in op.name:
                break
    return out


def find_ff_op(d: BenchDaemon, only: str | None = None) -> tuple[tuple[str, dict] | None, str]:
    """The first fire-and-forget op (heartbeat, publish, spray preferred) that accepts synthetic args."""
    ff = [op for op in CATALOGUE.values() if op.fire_and_forget and (only is None or op.name == only)]
    if not ff:
        if only:
            return None, f"{only} is not an operation declared fire_and_forget in pdcore.ops.CATALOGUE"
        return None, "no operation in pdcore.ops.CATALOGUE is declared fire_and_forget yet"
    ff.sort(key=lambda op: next((i for i, w in enumerate(_FF_PREFERENCE) if w in op.name), len(_FF_PREFERENCE)))
    if "agent.register" in CATALOGUE:
        try:
            d.call("agent.register", **{**_args_for(CATALOGUE["agent.register"]), "id": _BENCH_AGENT})
        except Exception:
            pass
    problems = []
    rt = L.RoundTrip(d.ipc_path)
    try:
        for op in ff:
            args = _args_for(op)
            type_, payload = rt.call(P.encode(P.REQUEST, 1, {"action": op.name, **args}))
            if type_ == P.INFORM_DONE:
                return (op.name, args), ""
            problems.append(f"{op.name}: {payload.get('error') or payload}")
    finally:
        rt.close()
    return None, "no fire-and-forget op accepted synthetic arguments (" + "; ".join(problems) + ")"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per timed run (default 3)")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each timed run (default 1)")
    ap.add_argument("--window", type=int, default=64, help="requests in flight per pipelined connection")
    ap.add_argument("--new-per-conn", type=int, default=1500, help="new identities per connection in part 2")
    ap.add_argument("--ff-frames", type=int, default=1_000_000, help="fire-and-forget frames sent in part 3")
    ap.add_argument("--ff-op", help="the fire-and-forget op of part 3 (default: heartbeat, else publish, spray)")
    ap.add_argument("--scale-small", type=int, default=1000)
    ap.add_argument("--scale-large", type=int, default=60_000, help="at most ~64k: one service per port")
    ap.add_argument("--samples", type=int, default=5000, help="timed claims per size in part 5")
    ap.add_argument("--http-workers", type=int, default=0, help="PORT_DADDY_HTTP_WORKERS (default: config)")
    ap.add_argument("--no-wrk", action="store_true", help="use the Python HTTP load generator even if wrk exists")
    ap.add_argument("--supervisor", action="store_true",
                    help="run IPC parts under the supervisor too (default: the core alone, no HTTP server)")
    ap.add_argument("--parts", default="1,2,3,4,5", help="comma-separated parts to run")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the core during each part; raw stacks go to DIR")
    args = ap.parse_args(argv)
    if args.scale_large > 64_000:
        ap.error("--scale-large: at most ~64,000 services fit (one per port in 1024-65535)")
    Bench(args).run()


if __name__ == "__main__":
    main()
