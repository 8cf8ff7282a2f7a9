"""state.shm vs IPC for `port.get`: lookups per second from one client, in one run.

Prints a table and one JSON line: {"bench": "shm", "shm_ops_s", "ipc_ops_s", "ratio"}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._launch import BenchDaemon as Daemon  # noqa: E402
from pdcore.client import Client  # noqa: E402


def rate(fn, seconds: float = 2.0) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(200):
            fn()
        n += 200
    return n / (time.perf_counter() - t0)


def main() -> None:
    d = Daemon(ipc_rate_limit=0).start()
    try:
        shm_client = Client(d.config)
        ipc_client = Client(d.config)
        ipc_client._shm = None
        for i in range(1000):
            shm_client.port_claim(id=f"bench:s{i}")
        ident = "bench:s500"
        assert shm_client.port_get(id=ident) == ipc_client.port_get(id=ident)
        shm = rate(lambda: shm_client.port_get(id=ident))
        ipc = rate(lambda: ipc_client.port_get(id=ident))
        print(f"{'port.get via state.shm':28} {shm:12,.0f} ops/s")
        print(f"{'port.get via IPC':28} {ipc:12,.0f} ops/s")
        print(json.dumps({"bench": "shm", "shm_ops_s": round(shm), "ipc_ops_s": round(ipc),
                          "ratio": round(shm / ipc, 2)}))
    finally:
        d.stop()


if __name__ == "__main__":
    main()
