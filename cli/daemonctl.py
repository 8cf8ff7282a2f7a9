"""Starting and stopping the daemon from the CLI (the supervisor does the supervising)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from pdcore.client import Client
from pdcore.config import Config
from pdcore.errors import OpError
from pdcore.paths import check_home, rotate_log, socket_answers, supervisor_running


def _answers(config: Config) -> bool:
    try:
        with Client(config, timeout=2.0, transport="ipc", connect_retry_s=0) as c:
            c.call("daemon.health")
        with Client(config, timeout=2.0, transport="http", connect_retry_s=0) as c:
            c.call("daemon.health")
        return True
    except OpError:
        return False


def log_tail(config: Config, lines: int = 8) -> str:
    try:
        return "\n".join(config.log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _refusal_since(config: Config, offset: int) -> str | None:
    """The one-line reason the daemon gave for refusing to start (`port-daddy: ...`), if any."""
    try:
        with open(config.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [ln[len("port-daddy: "):] for ln in text.splitlines() if ln.startswith("port-daddy: ")]
    return lines[-1] if lines else None


def _wait_for_unsupervised(config: Config, timeout: float = 10.0) -> None:
    """Wait for daemon processes left without their supervisor to go.

    Children of a supervisor killed with SIGKILL stop on their own within about a second
    (pdcore.paths.watch_supervisor) and drain; starting meanwhile would trip over their sockets.
    """
    deadline = time.monotonic() + timeout
    while any(socket_answers(Path(p)) for p in (config.ipc, config.sock, config.core_sock)):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"a Port Daddy process without a supervisor still answers on {config.ipc} or "
                               f"{config.sock} after {timeout:.0f}s; stop it (see `ps`) and run pd start again")
        time.sleep(0.05)


def start_daemon(config: Config, timeout: float = 30.0) -> int:
    """Start the supervisor in the background; return its pid once the daemon answers."""
    problem = check_home(config.home, create=True)
    if problem:
        raise RuntimeError(problem)
    running = supervisor_running(config)
    if running:
        return running
    _wait_for_unsupervised(config)
    env = dict(os.environ, PORT_DADDY_HOME=str(config.home), PORT_DADDY_PORT=str(config.tcp_port))
    if config.no_tcp:
        env["PORT_DADDY_NO_TCP"] = "1"
    rotate_log(Path(config.log_path), config.log_max_bytes)  # bounded across restarts; see docs/operations.md
    fd = os.open(config.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    log_start = os.fstat(fd).st_size
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pdcore.supervisor"], env=env, stdin=subprocess.DEVNULL,
                                stdout=fd, stderr=fd, start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            reason = _refusal_since(config, log_start)
            if reason:
                raise RuntimeError(reason)
            raise RuntimeError(f"the daemon exited during start (code {proc.returncode}):\n{log_tail(config)}")
        if _answers(config) and supervisor_running(config) == proc.pid:
            return proc.pid  # this start's daemon, not one left behind by another
        time.sleep(0.05)
    proc.terminate()  # do not leave a half-started daemon behind a failed `pd start`
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    raise RuntimeError(f"the daemon did not answer within {timeout:.0f}s; see {config.log_path}:\n{log_tail(config)}")


def stop_daemon(config: Config, timeout: float = 20.0) -> int | None:
    """Ask the supervisor to drain and exit; return its pid, or None when it was not running."""
    pid = supervisor_running(config)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return pid  # exited; its parent has not reaped it yet
        except psutil.NoSuchProcess:
            return pid
        time.sleep(0.05)
    raise RuntimeError(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s")


def run_foreground(config: Config) -> None:
    """Replace this process with the supervisor (for systemd/launchd)."""
    rotate_log(Path(config.log_path), config.log_max_bytes)  # bounded across restarts; see docs/operations.md
    os.environ["PORT_DADDY_HOME"] = str(config.home)
    os.execv(sys.executable, [sys.executable, "-m", "pdcore.supervisor"])
