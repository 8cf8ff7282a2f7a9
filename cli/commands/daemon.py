"""pd start | stop | restart | status | version | doctor | metrics | config | activity."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import click

from cli.common import call, fail, options, output, output_options, table, when
from cli.daemonctl import log_tail, run_foreground, start_daemon, stop_daemon
from pdcore import __version__
from pdcore.client import Client, auth_headers, served_home
from pdcore.config import DEFAULT_HOME, Config, ConfigError, home_tag, load_config
from pdcore.errors import OpError
from pdcore.paths import check_home, read_pid, socket_answers, supervisor_running


def _fmt_uptime(ms: int) -> str:
    s = ms // 1000
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _start_afresh(config: Config) -> list[str]:
    """Set aside a state the start checks refuse and make a new one; return the paths moved aside."""
    import fcntl

    from pdcore.startcheck import StartRefused, check_state, start_afresh

    problem = check_home(config.home, create=True)
    if problem:
        fail(problem)
    fd = os.open(config.home / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no supervisor may start meanwhile
        except OSError:
            fail("the daemon is running; --new-state starts afresh only a stopped daemon (pd stop first)")
        if supervisor_running(config) or socket_answers(config.ipc):
            fail("the daemon is running; --new-state starts afresh only a stopped daemon (pd stop first)")
        try:
            check_state(config)
        except StartRefused as exc:
            if not exc.can_start_afresh:
                fail(str(exc))
            moved = [str(p) for p in start_afresh(config)]
            click.echo(f"pd: {exc.problem}; starting afresh with an empty state"
                       + (f" (kept aside: {', '.join(moved)})" if moved else ""), err=True)
            return moved
        fail(f"{config.db_path} passes the start checks: nothing to start afresh from (--new-state only "
             "replaces a state that `pd start` refuses; to begin empty anyway, pd stop and move it aside yourself)")
    finally:
        os.close(fd)


@click.command()
@click.option("--foreground", is_flag=True, help="Stay attached (for systemd/launchd).")
@click.option("--new-state", is_flag=True,
              help="Start afresh on purpose when the start checks refuse state.db (missing, empty, corrupt, "
                   "or sealed with another key): it is moved aside as state.db.broken-TIME, never deleted.")
@output_options
def start(foreground: bool, new_state: bool) -> None:
    """Start the daemon in the background; returns once it answers."""
    config = options().config
    kept_aside = _start_afresh(config) if new_state else []
    if foreground:
        problem = check_home(config.home, create=True)
        if problem:
            fail(problem)
        run_foreground(config)
    already = supervisor_running(config)
    try:
        pid = start_daemon(config)
    except RuntimeError as exc:
        fail(str(exc))
    result = {"pid": pid, "alreadyRunning": bool(already), "home": str(config.home),
              "http": None if config.no_tcp else config.base_url, "ipc": str(config.ipc), "keptAside": kept_aside}
    where = "" if config.no_tcp else f" on {config.base_url}"
    output(result, f"Port Daddy {'already running' if already else 'started'} (pid {pid}){where}", quiet=pid)


@click.command()
@output_options
def stop() -> None:
    """Stop the daemon cleanly (drains, commits, removes its pid file)."""
    config = options().config
    try:
        pid = stop_daemon(config)
    except RuntimeError as exc:
        fail(str(exc))
    output({"stopped": pid is not None, "pid": pid}, "Port Daddy stopped" if pid else "Port Daddy was not running")


@click.command()
@output_options
def restart() -> None:
    """Stop the daemon, then start it again."""
    config = options().config
    try:
        stop_daemon(config)
        pid = start_daemon(config)
    except RuntimeError as exc:
        fail(str(exc))
    output({"pid": pid}, f"Port Daddy restarted (pid {pid})", quiet=pid)


@click.command()
@output_options
def status() -> None:
    """Is the daemon running? Exit 0 only when it is. Never starts it."""
    config = options().config
    pid = supervisor_running(config)
    try:
        with Client(config, timeout=5.0, connect_retry_s=0.5) as c:
            result = c.call("daemon.status")
    except OpError:
        result = None
    if result is None:
        output({"status": "stopped", "pid": pid, "home": str(config.home)},
               "Port Daddy is not running (start it with `pd start`)", quiet="stopped")
        sys.exit(1)
    result["supervisorPid"] = pid
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.get("counts", {}).items()))
    sockets = result.get("sockets", {})
    text = (f"Port Daddy {result['version']} running (pid {pid}, core {result['pid']}), "
            f"up {_fmt_uptime(result['uptime'])}\n"
            f"  http: {'127.0.0.1:' + str(sockets.get('tcp')) if sockets.get('tcp') else 'off'}, {sockets.get('http')}\n"
            f"  ipc:  {sockets.get('ipc')}\n  {counts}")
    output(result, text, quiet="running")


@click.command()
@output_options
def version() -> None:
    """The CLI's version, and the running daemon's version and code hash."""
    result: dict = {"cli": __version__}
    try:
        with Client(options().config, timeout=3.0, connect_retry_s=0) as c:
            result["daemon"] = c.call("daemon.version")
    except OpError:
        result["daemon"] = None
    d = result["daemon"]
    output(result, f"pd {__version__}" + (f" (daemon {d['version']}, code {d['codeHash']})" if d else
                                           " (daemon not running)"), quiet=__version__)


def _doctor_checks() -> list[dict]:
    checks: list[dict] = []

    def add(name: str, ok: bool, detail: str, fix: str = "") -> None:
        checks.append({"check": name, "ok": ok, "detail": detail, "fix": fix})

    opts = options()
    try:
        config = load_config(opts.home)
        add("config", True, "settings valid")
    except ConfigError as exc:
        add("config", False, str(exc), "correct or remove that setting (see Settings in docs/operations.md); "
                                      "the checks below use the defaults")
        config = Config(home=Path(opts.home or os.environ.get("PORT_DADDY_HOME") or DEFAULT_HOME))
    problem = check_home(config.home)
    add("home", problem is None and config.home.exists(), problem or str(config.home),
        "" if problem is None else f"chmod 700 {config.home}")
    pid = read_pid(config.pid_file)
    live = supervisor_running(config)
    if pid and not live:
        add("pid file", False, f"stale pid file names {pid}, which is not running", "pd start (cleans it)")
    else:
        add("pid file", True, f"pid {live}" if live else "no daemon running")
    for name, path in (("ipc socket", config.ipc), ("http socket", config.sock)):
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            answering = socket_answers(path)
            add(name, answering and mode & 0o077 == 0, f"{path} mode {mode:o}, {'answers' if answering else 'dead'}",
                "" if answering else "pd start (removes a stale socket)")
        else:
            add(name, not live, f"{path} missing", "pd start" if live else "")
    _doctor_state(config, add)
    if config.token_path.exists():
        from pdcore.auth import TokenError, read_token

        try:
            read_token(config.token_path)
            add("token", True, f"{config.token_path} mode 600")
        except TokenError as exc:
            add("token", False, str(exc), "pd token rotate (makes a new one, 0600)")
    else:
        add("token", True, "not created yet (made on first start)")
    if not config.no_tcp and not live:
        import socket

        s = socket.socket()
        try:
            s.bind(("127.0.0.1", config.tcp_port))
            add("tcp port", True, f"{config.tcp_port} free")
        except OSError:
            holder = served_home(config.tcp_port, headers=auth_headers(config))
            what = ("the Port Daddy daemon of another home" if holder not in (None, home_tag(config.home))
                    else "another program")
            add("tcp port", False, f"{config.tcp_port} is used by {what}",
                "set PORT_DADDY_PORT or tcp_port in config.yaml")
        finally:
            s.close()
    if live:
        try:
            with Client(config, timeout=3.0, connect_retry_s=0) as c:
                c.call("daemon.health")
            add("daemon", True, "answers over IPC")
        except OpError as exc:
            add("daemon", False, exc.message, f"see {config.log_path}: {log_tail(config, 1)}")
    if config.team_servers:
        _doctor_team(config, live, add)
    return checks


def _doctor_team(config: Config, live: int | None, add: Callable[..., None]) -> None:
    """Team mode: the files the team section names, and the running daemon's link to NATS."""
    for key in ("team_creds", "team_tls_ca", "team_key_file"):
        path = getattr(config, key)
        if path is not None and not Path(path).is_file():
            add(f"team {key[5:]}", False, f"{path} is missing", f"fix team.{key[5:]} in config.yaml or pd team join again")
    if config.team_key_file is not None and Path(config.team_key_file).is_file():
        from pdcore.team.keyfile import TeamKeyError, read_key_file

        try:
            read_key_file(Path(config.team_key_file))
        except TeamKeyError as exc:
            add("team key_file", False, str(exc), "pd team join again with --key-file")
    try:
        import nats  # noqa: F401
    except ImportError:
        add("team", False, "team mode is configured but nats-py is not installed", "pip install 'port-daddy[team]'")
        return
    if not live:
        add("team", True, f"space {config.team_space} on {', '.join(config.team_servers)} (daemon not running)")
        return
    try:
        with Client(config, timeout=30.0, connect_retry_s=0) as c:
            st = c.call("team.status")
    except OpError as exc:
        add("team", False, exc.message, "pd team status")
        return
    bad = [s["name"] for s in st.get("streams", []) if not s.get("ok")]
    if not (st.get("connected") and st.get("ready")):
        add("team", False, f"space {config.team_space}: not connected ({st.get('lastError') or 'connecting'})",
            f"check that {', '.join(config.team_servers)} runs nats-server -js and is reachable; pd team status")
    elif bad:
        add("team", False, f"space {config.team_space}: degraded buckets/streams: {', '.join(bad)}", "pd team status")
    else:
        add("team", True, f"space {config.team_space} on {st.get('server')}, rtt {st.get('rttMs')} ms, "
                          f"{sum(1 for h in st.get('hosts', []) if h.get('alive'))} hosts alive")


def _doctor_state(config: Config, add: Callable[..., None]) -> None:
    """The master key file, then what `pd start` checks of the state (pdcore.startcheck)."""
    from pdcore.crypto import MasterKeyError, read_key
    from pdcore.startcheck import StartRefused, check_state

    try:
        read_key(config.key_path)
        add("master key", True, f"{config.key_path} (0600, 32 bytes)")
    except FileNotFoundError:
        add("master key", True, "not created yet (made on first start)")
    except MasterKeyError as exc:
        add("master key", False, str(exc),
            f"chmod 600 {config.key_path}" if "mode" in str(exc) else "restore master.key from a backup (pd restore DIR)")
    try:
        check_state(config)
    except StartRefused as exc:
        if exc.kind not in ("key_file", "team_key"):  # reported just above, or by the team checks
            add("database", False, exc.problem, exc.fix)
        return
    add("database", True, f"{config.db_path}: quick_check ok, the master key is its key" if config.db_path.exists()
        else "not created yet (made on first start)")


@click.command()
@output_options
def doctor() -> None:
    """Check sockets, permissions, key, database, stale pid file and port; say what to do."""
    checks = _doctor_checks()
    ok = all(c["ok"] for c in checks)
    lines = [f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}" + (f"\n     fix: {c['fix']}" if
                                                                                  not c["ok"] and c["fix"] else "")
             for c in checks]
    output({"ok": ok, "checks": checks}, "\n".join(lines), quiet="ok" if ok else "fail")
    if not ok:
        sys.exit(1)


@click.command()
@click.option("--prometheus", is_flag=True, help="Print the Prometheus text format.")
@output_options
def metrics(prometheus: bool) -> None:
    """Daemon counters and gauges."""
    result = call("daemon.metrics")
    if prometheus:
        from workers.metrics import render_prometheus  # the same renderer as GET /metrics?format=prometheus

        click.echo(render_prometheus(result), nl=False)
        return
    output(result, lambda r: json.dumps(r, indent=2, sort_keys=True))


@click.command("config")
@output_options
def config_cmd() -> None:
    """The configuration in force."""
    result = call("daemon.config")
    output(result, lambda r: "\n".join(f"{k}: {v}" for k, v in sorted(r["config"].items())))


@click.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--type", "type_", help="Only this activity type (e.g. service.claim).")
@click.option("--agent", "agent_id", help="Only this agent's activity.")
@output_options
def activity(limit: int, type_: str | None, agent_id: str | None) -> None:
    """Recent state changes, newest first."""
    result = call("activity.list", limit=limit, type=type_, agentId=agent_id)
    rows = [{**a, "time": when(a.get("timestamp"))} for a in result["activities"]]
    output(result, lambda r: table(rows, [("id", "ID"), ("time", "TIME"), ("type", "TYPE"), ("agentId", "AGENT"),
                                          ("target", "TARGET")]))


def register(cli: click.Group) -> None:
    for cmd in (start, stop, restart, status, version, doctor, metrics, config_cmd, activity):
        cli.add_command(cmd)


