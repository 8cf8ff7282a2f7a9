"""The supervisor: holds daemon.pid, starts the core and the HTTP server, restarts them.

Like gunicorn's arbiter it keeps no application state. Each child is a small state machine
(STARTING, RUNNING, BACKOFF, STOPPED); a child that dies is restarted after a backoff that
doubles up to `restart_backoff_max_s` and resets once the child has run for 10 s; a child that
exits with EXIT_CONFIG (78: a bad setting, key or state, which no restart fixes) is FATAL and
stops the daemon, which then exits 78 too (systemd's RestartPreventExitStatus). SIGTERM or
SIGINT stop the fleet runner first (it kills and reports its runs while the core is up),
then the HTTP server (no new requests), then the core (which drains and commits), then
remove the pid file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pdcore.auth import TokenError, ensure_token
from pdcore.config import EXIT_CONFIG, Config, load_config_or_exit
from pdcore.paths import (
    SUPERVISOR_PID_ENV,
    check_home,
    read_pid,
    remove_stale_socket,
    socket_answers,
    supervisor_running,
)

log = logging.getLogger("pd.supervisor")

STABLE_AFTER_S = 10.0


@dataclass
class Child:
    name: str
    argv: list[str]
    ready_socket: Path | None = None
    proc: subprocess.Popen | None = None
    state: str = "STOPPED"
    started_at: float = 0.0
    backoff_s: float = 0.25
    restart_at: float = 0.0
    restarts: int = 0
    log_file: object = field(default=None, repr=False)


def tcp_port_free(port: int) -> bool:
    """Can the HTTP server bind 127.0.0.1:`port`? (SO_REUSEADDR, as gunicorn binds it.)"""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = False
        py = sys.executable
        self.core = Child("core", [py, "-m", "pdcore.core"], ready_socket=config.ipc)
        self.http = Child("http", [py, "-m", "workers.server"], ready_socket=config.sock)
        self.fleet = Child("fleet", [py, "-m", "fleet"])  # daemon-managed fleets and spawned agents
        self.children = [self.core, self.http, self.fleet]
        self._lock_fd: int | None = None  # daemon.lock, held while this supervisor runs

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Refuse an unsafe home or a second daemon; clean files a crash left behind."""
        problem = check_home(self.config.home, create=True)
        if problem:
            raise SystemExit(f"port-daddy: {problem}")
        self._hold_lock()
        other = supervisor_running(self.config)
        if other:
            raise SystemExit(f"port-daddy: already running (pid {other}); `pd stop` first")
        if not self.config.no_tcp and not tcp_port_free(self.config.tcp_port):
            raise SystemExit(f"port-daddy: 127.0.0.1:{self.config.tcp_port} is in use by another program; "
                             "stop it, or set PORT_DADDY_PORT (or tcp_port in config.yaml)")
        try:
            ensure_token(self.config.token_path)  # before HTTP starts: TCP callers must present it
        except TokenError as exc:
            raise SystemExit(f"port-daddy: {exc}") from None
        if self.config.pid_file.exists():
            log.info("event=stale_pid_file.removed path=%s", self.config.pid_file)
            self.config.pid_file.unlink()
        for path in (self.config.sock, self.config.ipc, self.config.core_sock):
            try:
                remove_stale_socket(Path(path))
            except RuntimeError as exc:
                raise SystemExit(f"port-daddy: {exc}") from None
        tmp = self.config.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.config.pid_file)
        if not self.config.no_tcp:
            self.config.port_file.write_text(f"{self.config.tcp_port}\n")
            os.chmod(self.config.port_file, 0o600)

    def _hold_lock(self) -> None:
        """Take `daemon.lock` (flock) for this process's life: two supervisors started at the same
        instant cannot both pass the pid-file check. The kernel drops the lock when we exit,
        however we exit, so it never goes stale."""
        path = self.config.home / "daemon.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            other = read_pid(self.config.pid_file)
            raise SystemExit(f"port-daddy: already running (pid {other or 'starting'}); `pd stop` first") from None
        self._lock_fd = fd

    def spawn(self, child: Child) -> None:
        env = dict(os.environ)
        env["PORT_DADDY_HOME"] = str(self.config.home)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())  # children stop if this process dies (paths.watch_supervisor)
        child.proc = subprocess.Popen(child.argv, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr,
                                      stderr=sys.stderr, start_new_session=False)
        child.state = "STARTING"
        child.started_at = time.monotonic()
        log.info("event=child.spawn name=%s pid=%d", child.name, child.proc.pid)

    def wait_ready(self, child: Child, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.proc is None or child.proc.poll() is not None:
                return False
            if child.ready_socket is None or socket_answers(Path(child.ready_socket)):
                child.state = "RUNNING"
                return True
            time.sleep(0.02)
        return False

    def run(self) -> int:
        self.prepare()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            self.spawn(self.core)
            if not self.wait_ready(self.core):
                code = self.core.proc.poll() if self.core.proc is not None else None
                log.error("event=core.failed_to_start code=%s", code)
                self.shutdown()
                return EXIT_CONFIG if code == EXIT_CONFIG else 1  # 78: a restart cannot help (systemd keeps it down)
            self.spawn(self.http)
            self.wait_ready(self.http)
            self.spawn(self.fleet)
            log.info("event=daemon.ready pid=%d", os.getpid())
            while not self.stopping:
                self.watch_once()
                time.sleep(0.05)
        finally:
            self.shutdown()
        return EXIT_CONFIG if any(c.state == "FATAL" for c in self.children) else 0

    def watch_once(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.state in ("STARTING", "RUNNING") and child.proc is not None:
                code = child.proc.poll()
                if code is None:
                    if child.state == "STARTING" and child.ready_socket and socket_answers(Path(child.ready_socket)):
                        child.state = "RUNNING"
                    if now - child.started_at > STABLE_AFTER_S:
                        child.backoff_s = 0.25
                    continue
                if code == EXIT_CONFIG:
                    log.error("event=child.fatal name=%s reason=configuration (see the line above)", child.name)
                    child.state = "FATAL"
                    self.stopping = True
                    return
                log.warning("event=child.exit name=%s code=%s backoff_s=%.2f", child.name, code, child.backoff_s)
                child.state = "BACKOFF"
                child.restart_at = now + child.backoff_s
                child.backoff_s = min(child.backoff_s * 2, self.config.restart_backoff_max_s)
            elif child.state == "BACKOFF" and now >= child.restart_at:
                child.restarts += 1
                self.spawn(child)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        """Stop the fleet (it reports its runs), then HTTP, then the core (it drains and commits)."""
        self.stopping = True
        for child in (self.fleet, self.http, self.core):
            proc = child.proc
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.error("event=child.kill name=%s reason=no_exit_after_sigterm", child.name)
                proc.kill()
                proc.wait(timeout=5)
            child.state = "STOPPED"
        for path in (self.config.pid_file, self.config.port_file):
            try:
                if path == self.config.pid_file and read_pid(path) != os.getpid():
                    continue
                path.unlink()
            except FileNotFoundError:
                pass
        log.info("event=daemon.stopped")


def main() -> None:
    """`python -m pdcore.supervisor`: run the daemon in the foreground."""
    config = load_config_or_exit()  # a bad setting: one line naming it, before anything starts
    logging.basicConfig(level=os.environ.get("PORT_DADDY_LOG_LEVEL", "INFO").upper(),
                        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    try:
        code = Supervisor(config).run()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            sys.exit(1)
        raise
    sys.exit(code)


if __name__ == "__main__":
    main()
