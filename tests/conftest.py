"""Fixtures for a real daemon: supervisor, core and HTTP workers in a temporary home.

`daemon` is shared by a whole test session (tests use unique names); `fresh_daemon` is made
for one test that kills or restarts things. Neither touches ~/.port-daddy: the home is a new
temporary folder and the TCP port a free one on 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pdcore.client import Client
from pdcore.errors import OpError
from pdcore.testing import REPO, config_for, free_port, isolated_home

__all__ = ["HOME_TOKEN", "REPO", "Daemon", "free_port"]

HOME_TOKEN = "<the home's token>"  # Daemon.http's default: send the token of the daemon's home


class Daemon:
    """A running daemon in its own home; see the module doc."""

    def __init__(self, **settings: object) -> None:
        self.home, self.port, self.env = isolated_home(settings)
        self.proc: subprocess.Popen | None = None
        self._clients: list[Client] = []

    @property
    def config(self):
        return config_for(self.env, self.home)

    def start(self, timeout: float = 30.0) -> Daemon:
        log = open(self.home / "daemon.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "pdcore.supervisor"], env=self.env, cwd=REPO,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0, own_process: bool = True) -> None:
        """Wait until IPC and HTTP answer; `own_process=False` after `pd restart` replaced ours."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if own_process and self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with Client(self.config, timeout=2, transport="ipc", connect_retry_s=0) as c:
                    c.call("daemon.health")
                status, _ = self.http("GET", "/health")
                if status == 200:
                    return
            except (OpError, OSError) as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready in {timeout}s ({last}):\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.home / "daemon.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def client(self, **kw: object) -> Client:
        c = Client(self.config, **kw)
        self._clients.append(c)
        return c

    @property
    def token(self) -> str:
        """The home's token (auth.token), which TCP callers must send."""
        return (self.home / "auth.token").read_text().strip()

    def http(self, method: str, path: str, body: object = None, headers: dict | None = None,
             timeout: float = 30.0, token: str | None = HOME_TOKEN) -> tuple[int, dict]:
        """One request over TCP, with the home's token unless `token` says another (None: none)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
            hdrs = {"Content-Type": "application/json"}
            if token is not None:
                hdrs["Authorization"] = f"Bearer {self.token if token is HOME_TOKEN else token}"
            hdrs.update(headers or {})
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                parsed = json.loads(raw) if raw else {}
            except ValueError:
                parsed = {"raw": raw.decode(errors="replace")}
            return resp.status, parsed
        finally:
            conn.close()

    def pd(self, *args: str, input: str | None = None, timeout: float = 30.0,
           env: dict | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run `pd` as a user would: from the install, without PYTHONPATH, when this checkout is installed."""
        full_env = {**self.env, **(env or {})}
        if _installed_from_this_checkout():
            full_env.pop("PYTHONPATH", None)
        return subprocess.run([sys.executable, "-m", "cli.main", *args], env=full_env,
                              input=input, capture_output=True, text=True, timeout=timeout,
                              cwd=cwd or REPO)

    def children(self, marker: str) -> list[psutil.Process]:
        out = []
        for child in psutil.Process(self.supervisor_pid()).children(recursive=True):
            try:
                if marker in " ".join(child.cmdline()):
                    out.append(child)
            except psutil.NoSuchProcess:
                pass
        return out

    def supervisor_pid(self) -> int:
        from pdcore.paths import read_pid

        pid = read_pid(self.home / "daemon.pid")
        return pid if pid else self.proc.pid  # type: ignore[union-attr]

    def core_pid(self) -> int:
        procs = self.children("pdcore.core")
        assert procs, "no core process"
        return procs[0].pid

    def kill_core(self, timeout: float = 30.0) -> int:
        """kill -9 the core; return the new core's pid once it answers."""
        old = self.core_pid()
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid = self.core_pid()
            except (AssertionError, psutil.NoSuchProcess):
                pid = None
            if pid and pid != old:
                try:
                    with Client(self.config, timeout=2, transport="ipc", connect_retry_s=0) as c:
                        c.call("daemon.health")
                    return pid
                except OpError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"core did not come back:\n{self.log_tail()}")

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # make sure no child outlives the test
        for proc in psutil.process_iter(["environ"]):
            try:
                if (proc.info.get("environ") or {}).get("PORT_DADDY_HOME") == str(self.home):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        shutil.rmtree(self.home, ignore_errors=True)


@functools.cache
def _installed_from_this_checkout() -> bool:
    """Is `cli` importable, outside the checkout and without PYTHONPATH, from this checkout?"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import cli, pathlib; print(pathlib.Path(cli.__file__).parents[1])"],
                           env=env, cwd="/", capture_output=True, text=True, timeout=30)
    return probe.returncode == 0 and Path(probe.stdout.strip()) == REPO


# The test process is one trusted peer that holds many IPC connections at once (every
# `daemon.client()` keeps its own until the daemon stops): neither rate nor per-process caps.
TEST_PEER = {"ipc_rate_limit": 0, "ipc_max_connections_per_peer": 1024}


@pytest.fixture(scope="session")
def daemon():
    d = Daemon(**TEST_PEER).start()
    yield d
    d.stop()


@pytest.fixture
def fresh_daemon():
    """A daemon for one test (it may kill or restart things)."""
    d = Daemon(**TEST_PEER).start()
    yield d
    d.stop()


@pytest.fixture
def daemon_factory():
    """Start daemons with settings: `daemon_factory(ipc_rate_limit=500)`; all stopped after the test."""
    made: list[Daemon] = []

    def make(**settings: object) -> Daemon:
        d = Daemon(**settings).start()
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
