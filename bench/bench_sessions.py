"""Sessions and notes: `note.add` round trip over IPC vs HTTP, and `pd note` as a whole command.

Heartbeat ingest (fire-and-forget frames/s) is part 3 of bench_foundation.py. Prints a table
and one JSON line: {"bench": "sessions", "note_ipc_p50_us", "note_http_p50_us", ...}.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._launch import BenchDaemon  # noqa: E402
from pdcore.client import Client  # noqa: E402


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(n: int = 2000, cli_runs: int = 15) -> None:
    d = BenchDaemon().start()
    try:
        d.wait_http()
        ipc = Client(d.config, transport="ipc")
        http = Client(d.config, transport="http")
        began = ipc.call("sugar.begin", purpose="bench notes", identity="bench:notes")
        agent, session = began["agentId"], began["sessionId"]
        text = "progress: " + "x" * 200

        def add(client: Client) -> None:
            client.call("note.add", id=session, content=text, type="progress", agentId=agent)

        rows = {}
        for label, client in (("ipc", ipc), ("http", http), ("ipc2", ipc), ("http2", http)):
            rows[label] = timed(lambda c=client: add(c), n // 2)
        ipc_us = rows["ipc"] + rows["ipc2"]
        http_us = rows["http"] + rows["http2"]
        cli_ms = []
        for _ in range(cli_runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cli.main", "note", "bench note", "--session", session],
                           env={**d.env, "PORT_DADDY_AGENT": agent, "PORT_DADDY_SESSION": session},
                           capture_output=True, check=True, cwd=str(Path(__file__).resolve().parents[1]))
            cli_ms.append((time.perf_counter() - t0) * 1000)
        out = {
            "bench": "sessions",
            "note_ipc_p50_us": round(statistics.median(ipc_us), 1), "note_ipc_p99_us": round(pct(ipc_us, 0.99), 1),
            "note_http_p50_us": round(statistics.median(http_us), 1),
            "note_http_p99_us": round(pct(http_us, 0.99), 1),
            "note_http_over_ipc_p50": round(statistics.median(http_us) / statistics.median(ipc_us), 2),
            "pd_note_command_p50_ms": round(statistics.median(cli_ms), 1), "notes": n,
        }
        print(f"{'note.add over IPC  p50 / p99 us':36} {out['note_ipc_p50_us']:>9} / {out['note_ipc_p99_us']}")
        print(f"{'note.add over HTTP p50 / p99 us':36} {out['note_http_p50_us']:>9} / {out['note_http_p99_us']}")
        print(f"{'HTTP / IPC (p50)':36} {out['note_http_over_ipc_p50']:>9}")
        print(f"{'pd note (whole command) p50 ms':36} {out['pd_note_command_p50_ms']:>9}")
        print(json.dumps(out))
    finally:
        d.stop()


if __name__ == "__main__":
    main()
