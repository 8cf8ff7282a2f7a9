"""Start and stop a throwaway daemon for a benchmark, in a temporary home.

Shared by every bench/*.py script. `BenchDaemon(**settings)` makes a new 0700 home and a free
TCP port; each setting becomes `PORT_DADDY_<KEY>` (e.g. `ipc_rate_limit=0`). `start()` runs
the supervisor (core + HTTP server) and returns once the IPC socket answers; HTTP readiness
is checked separately with `wait_http()`, so IPC benchmarks run even when the HTTP server is
missing or still starting. `start(core_only=True)` runs `python -m pdcore.core` alone.
Nothing touches ~/.port-daddy.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pdcore.client import Client  # noqa: E402
from pdcore.config import Config  # noqa: E402
from pdcore.errors import OpError  # noqa: E402
from pdcore.testing import config_for, isolated_home  # noqa: E402

# Settings every benchmark wants: the per-connection IPC rate limit is a safety limit, not a
# capacity, so it is off; the log stays at WARNING so logging is not measured.
BENCH_DEFAULTS: dict[str, Any] = {"ipc_rate_limit": 0, "log_level": "WARNING"}


class BenchDaemon:
    """A daemon in its own temporary home; use as a context manager or start()/stop()."""

    def __init__(self, **settings: Any) -> None:
        self.home, self.port, self.env = isolated_home({**BENCH_DEFAULTS, **settings}, prefix="pd-bench-")
        self.proc: subprocess.Popen | None = None
        self.core_only = False

    # -- paths and config --
    @property
    def config(self) -> Config:
        return config_for(self.env, self.home)

    @property
    def ipc_path(self) -> str:
        return str(self.home / "daemon.ipc")

    @property
    def http_sock(self) -> str:
        return str(self.home / "daemon.sock")

    @property
    def token(self) -> str | None:
        """The home's token, which HTTP over TCP must send (None before the supervisor made it)."""
        try:
            return (self.home / "auth.token").read_text().strip()
        except OSError:
            return None

    # -- lifecycle --
    def start(self, core_only: bool = False, timeout: float = 30.0) -> BenchDaemon:
        """Start the daemon; return once `daemon.health` answers over IPC."""
        self.core_only = core_only
        module = "pdcore.core" if core_only else "pdcore.supervisor"
        log = open(self.home / "bench-daemon.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", module], env=self.env, cwd=REPO,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.call("daemon.health")
                return self
            except (OpError, OSError) as exc:
                last = exc
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"daemon not ready in {timeout}s ({last})")

    def wait_http(self, timeout: float = 15.0) -> bool:
        """True once GET /health answers 200 over TCP within `timeout` seconds."""
        if self.core_only:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health", headers={"Authorization": f"Bearer {self.token}"})
                ok = conn.getresponse().status == 200
                conn.close()
                if ok:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL of its process group) and remove its home."""
        children: list[psutil.Process] = []
        if self.proc is not None and self.proc.poll() is None:
            try:
                children = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # children still closing their files (the core commits on the way out), then any
        # process that outlived its supervisor (ours only: matched by our home)
        _, alive = psutil.wait_procs(children, timeout=10)
        for proc in psutil.process_iter(["environ"]):
            try:
                if (proc.info.get("environ") or {}).get("PORT_DADDY_HOME") == str(self.home):
                    alive.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        self.proc = None
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> BenchDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers --
    def call(self, action: str, **args: Any) -> Any:
        """One operation over IPC with a fresh short-lived connection."""
        with Client(self.config, timeout=10, transport="ipc", connect_retry_s=0) as c:
            return c.call(action, **args)

    def core_pid(self) -> int | None:
        """The pid of the core process (the supervisor's child, or the process itself)."""
        if self.proc is None:
            return None
        if self.core_only:
            return self.proc.pid
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                if "pdcore.core" in " ".join(child.cmdline()):
                    return child.pid
        except psutil.NoSuchProcess:
            pass
        return None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.home / "bench-daemon.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def http_pids(self) -> list[int]:
        """The HTTP server process and its workers (empty when core-only)."""
        if self.proc is None or self.core_only:
            return []
        out = []
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                try:
                    if "pdcore.core" not in " ".join(child.cmdline()):
                        out.append(child.pid)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        return out


def _cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class CpuMeter:
    """CPU used by named groups of processes over an interval, as a fraction of one core.

        meter = CpuMeter({"core": [pid], "client": [os.getpid()]}); ...; meter.stop() -> {"core": 0.98, ...}
    """

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {k: list(v) for k, v in groups.items() if v}
        self.t0 = time.perf_counter()
        self.c0 = {k: _cpu_of(v) for k, v in self.groups.items()}
        self.busy0 = _busy()
        self.children0 = _reaped_children()

    def stop(self) -> dict[str, float]:
        """CPU per group in cores; `others` is everything else on the machine (noise: other
        processes, the kernel's own threads), so a high value flags a run to repeat."""
        dt = time.perf_counter() - self.t0
        if dt <= 0:
            return {}
        out = {k: round((_cpu_of(v) - self.c0[k]) / dt, 2) for k, v in self.groups.items()}
        if "client" in out:  # a load generator run as a subprocess (wrk) and waited for
            out["client"] = round(out["client"] + (_reaped_children() - self.children0) / dt, 2)
        out["others"] = round(max(0.0, (_busy() - self.busy0) / dt - sum(out.values())), 2)
        return out


def _reaped_children() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _busy() -> float:
    """Seconds of CPU the whole machine has been busy (all cores summed)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
