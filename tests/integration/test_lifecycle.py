"""Daemon lifecycle: refusing unsafe homes, stale files, doctor, dev daemon, install."""

from __future__ import annotations

import os
import subprocess
import sys

from pdcore.testing import free_port
from tests.conftest import REPO, Daemon


def run_pd(env: dict, *args: str, timeout: float = 40) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_refuses_home_open_to_others(tmp_path):
    d = Daemon()
    os.chmod(d.home, 0o755)
    out = run_pd(d.env, "start")
    assert out.returncode == 1 and "open to other users" in out.stderr and out.stderr.count("\n") == 1
    os.chmod(d.home, 0o700)
    d.stop()


def test_stale_pid_file_and_socket_are_cleaned_on_start():
    d = Daemon()
    (d.home / "daemon.pid").write_text("999999\n")
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d.home / "daemon.ipc"))  # a socket file nobody answers on
    s.close()
    doctor = run_pd(d.env, "doctor")
    assert doctor.returncode == 1 and "stale pid file" in doctor.stdout
    try:
        out = run_pd(d.env, "start")
        assert out.returncode == 0, out.stderr
        assert run_pd(d.env, "status").returncode == 0
        doctor = run_pd(d.env, "doctor")
        assert doctor.returncode == 0, doctor.stdout
    finally:
        run_pd(d.env, "stop")
        d.stop()


def test_dev_daemon_runs_beside_the_main_one(tmp_path, daemon):
    env = {**daemon.env, "PORT_DADDY_DEV_HOME": str(tmp_path / "dev"),
           "PORT_DADDY_DEV_PORT": str(free_port())}
    os.makedirs(tmp_path / "dev", mode=0o700)
    try:
        assert run_pd(env, "dev", "start").returncode == 0
        assert run_pd(env, "dev", "status").returncode == 0
        assert run_pd(env, "status").returncode == 0  # the main one is untouched
    finally:
        assert run_pd(env, "dev", "stop").returncode == 0
    assert run_pd(env, "dev", "status").returncode == 1


def test_install_writes_a_unit_that_runs_the_supervisor(tmp_path, daemon):
    env = {**daemon.env, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    out = run_pd(env, "install", "--no-enable", "-q")
    assert out.returncode == 0, out.stderr
    unit = (tmp_path / "cfg/systemd/user/port-daddy.service").read_text()
    assert "-m pdcore.supervisor" in unit and str(daemon.home) in unit
    assert run_pd(env, "uninstall").returncode == 0
    assert not (tmp_path / "cfg/systemd/user/port-daddy.service").exists()


def test_unknown_command_suggests(daemon):
    out = daemon.pd("claom", "x")
    assert out.returncode == 2 and "Did you mean `pd claim`" in out.stderr


def test_status_never_autostarts_but_claim_does():
    d = Daemon()
    env = {**d.env}
    env.pop("PORT_DADDY_NO_AUTOSTART")
    try:
        out = run_pd(env, "status")
        assert out.returncode == 1
        assert not (d.home / "daemon.pid").exists()
        claimed = run_pd(env, "claim", "auto:start", "-q")
        assert claimed.returncode == 0 and "starting it" in claimed.stderr and claimed.stdout.strip().isdigit()
    finally:
        run_pd(env, "stop")
        d.stop()


def test_key_with_loose_permissions_stops_the_daemon_with_one_line():
    d = Daemon()
    key = d.home / "master.key"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o644)
    try:
        out = run_pd(d.env, "start")
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1 and "master key" in out.stderr, out.stderr
        assert key.read_bytes() and (os.stat(key).st_mode & 0o777) == 0o644  # never replaced
        assert run_pd(d.env, "status").returncode == 1
    finally:
        run_pd(d.env, "stop")
        d.stop()


def test_tcp_port_in_use_is_refused_in_one_line():
    import socket

    d = Daemon()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", d.port))
    squatter.listen()
    try:
        out = run_pd(d.env, "start")
        assert out.returncode == 1 and out.stderr.count("\n") == 1 and "in use" in out.stderr, out.stderr
        assert run_pd(d.env, "status").returncode == 1
    finally:
        squatter.close()
        run_pd(d.env, "stop")
        d.stop()


def test_metrics_as_json_and_prometheus_text(daemon):
    as_json = daemon.pd("metrics", "--json")
    assert as_json.returncode == 0 and '"counters"' in as_json.stdout
    text = daemon.pd("metrics", "--prometheus")
    assert text.returncode == 0 and "# TYPE pd_ops_total counter" in text.stdout


def test_children_of_a_supervisor_killed_with_kill_9_stop_and_pd_start_comes_back():
    import signal
    import time

    import psutil

    d = Daemon(ipc_rate_limit=0).start()
    try:
        port = d.client().port_claim(id="orphans:check:main")["port"]
        supervisor = psutil.Process(d.supervisor_pid())
        children = supervisor.children(recursive=True)
        kinds = {" ".join(c.cmdline()).split(" -m ")[-1].split()[0] for c in children}
        assert {"pdcore.core", "workers.server", "fleet"} <= kinds
        log_size = (d.home / "daemon.log").stat().st_size
        os.kill(supervisor.pid, signal.SIGKILL)
        d.proc.wait(timeout=10)
        started = time.monotonic()
        started_again = d.pd("start")  # at once: it waits for the orphans to go, then starts afresh
        assert started_again.returncode == 0, started_again.stderr
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running without their supervisor: {[p.cmdline() for p in alive]}"
        assert time.monotonic() - started < 20
        since = (d.home / "daemon.log").read_bytes()[log_size:].decode(errors="replace")
        assert "event=supervisor.gone child=core" in since and "event=core.stopped" in since  # drained
        assert d.client().port_claim(id="orphans:check:main")["port"] == port
        assert d.pd("status").returncode == 0
    finally:
        d.stop()


def test_every_file_the_daemon_writes_in_its_home_is_the_owners_alone(daemon):
    import stat

    daemon.client().port_claim(id="modes:check:main")  # the database and its WAL exist by now
    names = ["state.db", "state.db-wal", "state.db-shm", "state.shm", "master.key", "daemon.pid", "daemon.port",
             "daemon.sock", "daemon.ipc", "core.sock"]
    modes = {name: stat.S_IMODE((daemon.home / name).stat().st_mode) for name in names}
    assert {name: oct(mode) for name, mode in modes.items() if mode & 0o077} == {}


def test_a_second_supervisor_is_refused_while_the_first_holds_the_lock():
    """Two supervisors started at the same instant: whichever locks daemon.lock runs, the other
    refuses in one line, even before the first has written daemon.pid."""
    import fcntl

    d = Daemon(ipc_rate_limit=0)  # its home, not started yet
    try:
        fd = os.open(d.home / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a supervisor that has not written its pid yet
        second = subprocess.run([sys.executable, "-m", "pdcore.supervisor"], env=d.env, cwd=REPO,
                                capture_output=True, text=True, timeout=30)
        assert second.returncode != 0
        assert second.stderr.strip().splitlines()[-1].startswith("port-daddy: already running")
        assert not (d.home / "daemon.pid").exists()
        os.close(fd)  # released: now a supervisor may run
        d.start()
        assert d.pd("status").returncode == 0
    finally:
        d.stop()


def test_activity_prints_local_times_and_json_keeps_epoch_ms(daemon):
    import json
    import re

    daemon.client().call("port.claim", id=f"acttime-{os.getpid()}:api")
    text = daemon.pd("activity", "--limit", "5")
    assert text.returncode == 0, text.stderr
    rows = text.stdout.splitlines()[1:]
    assert rows and all(re.search(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b", row) for row in rows), text.stdout
    assert not re.search(r"\b\d{13}\b", text.stdout), text.stdout
    raw = json.loads(daemon.pd("activity", "--limit", "5", "--json").stdout)
    assert all(isinstance(a["timestamp"], int) and a["timestamp"] > 10**12 for a in raw["activities"])


def test_doctor_names_another_homes_daemon_on_the_tcp_port(daemon, tmp_path):
    other = tmp_path / "other-home"
    other.mkdir(mode=0o700)
    env = {**daemon.env, "PORT_DADDY_HOME": str(other), "PORT_DADDY_NO_AUTOSTART": "1"}
    out = run_pd(env, "doctor")
    assert out.returncode == 1
    assert f"tcp port: {daemon.port} is used by the Port Daddy daemon of another home" in out.stdout, out.stdout
    assert run_pd(env, "status").returncode == 1  # and its status is not that daemon's


def test_a_daemon_log_past_its_limit_is_rotated_at_start():
    d = Daemon(ipc_rate_limit=0, log_max_bytes=4096)
    try:
        old = b"an old line of the log\n" * 400  # ~9 KB, past the limit
        (d.home / "daemon.log").write_bytes(old)
        out = run_pd(d.env, "start")
        assert out.returncode == 0, out.stderr
        assert (d.home / "daemon.log.1").read_bytes() == old
        fresh = (d.home / "daemon.log").read_bytes()
        assert b"an old line" not in fresh and b"event=child.spawn name=core" in fresh
        # Under the limit: left alone at the next start.
        assert run_pd(d.env, "restart").returncode == 0
        assert (d.home / "daemon.log.1").read_bytes() == old and b"event=child.spawn name=core" in (d.home / "daemon.log").read_bytes()
    finally:
        run_pd(d.env, "stop")
        d.stop()
