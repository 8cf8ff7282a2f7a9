"""pd lock | unlock | locks | with-lock: locks with fencing tokens (docs/locks.md)."""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import click

from cli import context as ctxmod
from cli.common import call, duration_ms, options, output, output_options, table, when
from pdcore.client import Client
from pdcore.errors import OpError

LOCK_COLUMNS = [("name", "LOCK"), ("owner", "OWNER"), ("fence", "FENCE"), ("expiresAt", "EXPIRES AT")]
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def default_owner() -> tuple[str, str | None]:
    """Who `pd lock` / `pd unlock` act as without --owner, and the agent behind it.

    This terminal's agent (`pd begin` or $PORT_DADDY_AGENT), so the reaper frees the lock if
    that agent dies; else user@host:SID, SID being this terminal's session id: stable across
    the commands typed in one terminal (and a script's commands), but two terminals are two
    owners, so they exclude each other as a lock should."""
    here = ctxmod.load(options().config.home)
    if here.agent_id:
        return here.agent_id, here.agent_id
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    sid, _start = ctxmod.terminal_key()
    return f"{user}@{socket.gethostname()}:{sid}", None



def _held(r: dict) -> str:
    until = f" until {when(r['expiresAt'])}" if r.get("expiresAt") else " (bound to its connection)"
    return f"{r['name']}: held by {r['owner']} (fence {r['fence']}){until}"


@click.command()
@click.argument("name")
@click.option("--ttl", help="Hold for this long (30s, 5m, 1h); default from the daemon (lock_ttl_default_ms).")
@click.option("--wait", help="Wait this long for the lock to free (30s); default: fail at once if held.")
@click.option("--owner", help="Hold it as this owner (default: this terminal's agent, else user@host:SESSION-ID "
                                "of this terminal).")
@click.option("--extend", is_flag=True, help="Extend a lock you hold by --ttl instead of acquiring it.")
@output_options
def lock(name: str, ttl: str | None, wait: str | None, owner: str | None, extend: bool) -> None:
    """Acquire lock NAME (or renew it if you already hold it). `-q` prints only the fence."""
    who, agent = (owner, None) if owner else default_owner()
    # Always send a TTL: a CLI lock must outlive this process (0 means the daemon's default).
    ttl_ms = duration_ms(ttl) or 0
    if extend:
        result = call("lock.extend", name=name, owner=who, ttl=ttl_ms)
        output(result, lambda r: f"{name}: extended until {when(r['expiresAt'])} (fence {r['fence']})", quiet=result["fence"])
        return
    result = call("lock.acquire", name=name, owner=who, ttl=ttl_ms, wait=duration_ms(wait), agentId=agent,
                  renew=True)
    output(result, lambda r: f"{'renewed' if r['renewed'] else 'acquired'} {_held(r)}", quiet=result["fence"])


@click.command()
@click.argument("name")
@click.option("--owner", help="Release as this owner (default: the same as pd lock's).")
@click.option("--force", is_flag=True, help="Release even if someone else holds it.")
@output_options
def unlock(name: str, owner: str | None, force: bool) -> None:
    """Release lock NAME."""
    result = call("lock.release", name=name, owner=owner or default_owner()[0], force=force or None)
    output(result, lambda r: f"released {name}" if r["released"] else f"{name} was not held",
           quiet=str(result["released"]).lower())


@click.command()
@click.argument("name", required=False)
@click.option("--owner", help="Only locks of this owner.")
@output_options
def locks(name: str | None, owner: str | None) -> None:
    """List held locks, or show lock NAME."""
    if name:
        result = call("lock.get", name=name)
        output(result, lambda r: _held(r) if r["held"] else f"{name}: free", quiet=result.get("owner") or "")
        return
    result = call("lock.list", owner=owner)
    rows = [{**lk, "expiresAt": when(lk["expiresAt"]) if lk["expiresAt"] else "(connection)"} for lk in result["locks"]]
    output(result, lambda r: table(rows, LOCK_COLUMNS, empty="no locks held"),
           quiet="\n".join(lk["name"] for lk in result["locks"]))


def _foreground() -> bool:
    """Are we the terminal's foreground group? Then a Ctrl-C reached the command already."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Extender(threading.Thread):
    """Extends the lock every third of its TTL while the command runs (own connection)."""

    def __init__(self, client: Client, name: str, owner: str, ttl_ms: int, fence: int) -> None:
        super().__init__(daemon=True, name="pd-with-lock-extend")
        self.client, self.name, self.owner, self.ttl_ms, self.fence = client, name, owner, ttl_ms, fence
        self.stopped = threading.Event()

    def run(self) -> None:
        every = max(0.1, self.ttl_ms / 3000)
        while not self.stopped.wait(every):
            try:
                self.client.call("lock.extend", name=self.name, owner=self.owner, ttl=self.ttl_ms, fence=self.fence)
            except OpError as err:
                if err.code == "unavailable":
                    continue  # the daemon is restarting; the lock is durable, try again next round
                click.echo(f"pd: lost lock {self.name} while the command runs: {err.message}", err=True)
                return
        self.client.close()


def _release(config: Any, name: str, owner: str, fence: int | None) -> None:
    try:
        with Client(config, timeout=10) as client:
            client.call("lock.release", name=name, owner=owner, fence=fence)
    except OpError as err:
        click.echo(f"pd: could not release lock {name}: {err.message}", err=True)


@click.command("with-lock", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("--ttl", default="60s", show_default=True, help="Lock TTL; extended every third of it while CMD runs.")
@click.option("--wait", help="Wait this long for the lock (30s); default: fail at once if held.")
@click.option("--owner", help="Hold it as this owner (default: unique per run, host:pid).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def with_lock(name: str, ttl: str, wait: str | None, owner: str | None, command: tuple[str, ...]) -> None:
    """Run `pd with-lock NAME -- CMD...` holding lock NAME; exit with CMD's exit code.

    The lock is extended while CMD runs and released however it ends (also when pd gets
    SIGINT or SIGTERM, which are passed on to CMD). CMD sees PD_LOCK_NAME, PD_LOCK_OWNER and
    PD_LOCK_FENCE (hand the fence to the resource you protect so it can refuse stale holders).
    """
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise click.UsageError("give the command to run: pd with-lock NAME -- CMD...")
    opts = options()
    config = opts.config
    who = owner or f"{socket.gethostname()}:{os.getpid()}"
    ttl_ms = duration_ms(ttl) or 60_000
    state: dict[str, Any] = {"child": None, "running": False, "pending": None}

    def forward(signum: int) -> None:
        child = state["child"]
        if child.poll() is None and not (signum in (signal.SIGINT, signal.SIGQUIT) and _foreground()):
            child.send_signal(signum)

    def on_signal(signum: int, _frame: Any) -> None:
        if not state["running"]:
            raise _Interrupted(signum)  # still acquiring: stop waiting, release, exit
        if state["child"] is None:
            state["pending"] = signum  # between starting CMD and knowing its pid
        else:
            forward(signum)

    previous = {s: signal.signal(s, on_signal) for s in FORWARDED}
    acquired, fence, code = False, None, 1
    extender: _Extender | None = None
    try:
        got = call("lock.acquire", name=name, owner=who, ttl=ttl_ms, wait=duration_ms(wait))
        acquired, fence = True, got["fence"]
        env = {**os.environ, "PD_LOCK_NAME": name, "PD_LOCK_OWNER": who, "PD_LOCK_FENCE": str(fence)}
        extender = _Extender(Client(config, timeout=10), name, who, ttl_ms, fence)
        extender.start()
        state["running"] = True
        try:
            state["child"] = subprocess.Popen(list(command), env=env)
        except OSError as exc:
            click.echo(f"pd: cannot run {command[0]}: {exc.strerror}", err=True)
            code = 127
        else:
            if state["pending"] is not None:
                forward(state["pending"])
            rc = state["child"].wait()
            code = rc if rc >= 0 else 128 - rc
    except _Interrupted as intr:
        acquired = True  # the reply may have been lost mid-flight: release our (unique) owner anyway
        code = 128 + intr.signum
    finally:
        state["running"] = True  # a second signal must not interrupt the release
        if extender is not None:
            extender.stopped.set()
        if acquired:
            _release(config, name, who, fence)
        for s, handler in previous.items():
            signal.signal(s, handler)
    sys.exit(code)


def register(cli: click.Group) -> None:
    for command in (lock, unlock, locks, with_lock):
        cli.add_command(command)
