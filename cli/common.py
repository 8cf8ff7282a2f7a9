"""What every `pd` command shares: calling the daemon, printing results, parsing durations.

`call()` reaches the daemon through the SDK, starting it once when it is down (unless
PORT_DADDY_NO_AUTOSTART=1), and turns a refusal into one line on stderr with exit code 1.
`output()` prints JSON with --json, the bare value with -q, text for humans otherwise.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click

from pdcore.client import Client
from pdcore.config import Config, ConfigError, load_config
from pdcore.errors import OpError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {None: 1000, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class Options:
    """Global flags, kept on the click context."""

    def __init__(self) -> None:
        self.json = False
        self.quiet = False
        self.home: str | None = None
        self.color = True
        self._config: Config | None = None
        self._client: Client | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.home)
            except ConfigError as exc:  # one line naming the file or variable, the key, the value
                fail(str(exc))
            except OSError as exc:
                fail(f"bad configuration: {exc}")
        return self._config

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.config)
        return self._client


def options() -> Options:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, Options):
        root.obj = Options()
    return root.obj


def my_agent(given: str | None = None) -> str | None:
    """The agent a command acts as: the one given, else this terminal's (`pd begin`, or
    $PORT_DADDY_AGENT); None when there is none."""
    from cli import context as ctxmod

    return given or ctxmod.load(options().config.home).agent_id


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit with `code`."""
    click.echo(f"pd: {message}", err=True)
    sys.exit(code)


def duration_ms(text: str | int | None) -> int | None:
    """'250ms', '30s', '5m', '1h', '2d' or a bare number of SECONDS (`--ttl 300`) -> milliseconds."""
    if text is None:
        return None
    if isinstance(text, int):
        return text
    m = _DURATION_RE.match(str(text))
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration (use 500ms, 30s, 5m, 1h, 2d; a bare number is seconds)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _autostart(opts: Options) -> bool:
    if os.environ.get("PORT_DADDY_NO_AUTOSTART") == "1":
        return False
    from cli.daemonctl import start_daemon

    click.echo("pd: the daemon was not running; starting it (set PORT_DADDY_NO_AUTOSTART=1 to stop this)", err=True)
    try:
        start_daemon(opts.config)
    except RuntimeError as exc:
        fail(str(exc))
    opts._client = None
    return True


def call(action: str, **args: Any) -> Any:
    """Run one operation on the daemon; exit 1 with a one-line error when it refuses."""
    opts = options()
    try:
        return opts.client().call(action, **args)
    except OpError as err:
        if err.code == "unavailable" and not _daemon_files_present(opts.config) and _autostart(opts):
            try:
                return opts.client().call(action, **args)
            except OpError as err2:
                err = err2
        fail(err.message if err.code != "unavailable" else f"{err.message}")


def _daemon_files_present(config: Config) -> bool:
    from pdcore.paths import supervisor_running

    return supervisor_running(config) is not None


def output(result: Any, human: str | Callable[[Any], str] | None = None, quiet: Any = None) -> None:
    """Print `result` as JSON (--json), `quiet` bare (-q), or `human` text."""
    opts = options()
    if opts.json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif opts.quiet:
        if quiet is not None:
            click.echo(quiet if not isinstance(quiet, (dict, list)) else json.dumps(quiet))
    else:
        text = human(result) if callable(human) else human
        if text is None:
            text = json.dumps(result, indent=2, sort_keys=True, default=str)
        if text:
            click.echo(text)


def output_options(fn: Callable) -> Callable:
    """Add -j/--json and -q/--quiet to a command (they also work before the command name)."""

    @click.option("-j", "--json", "json_", is_flag=True, default=False, help="Print JSON.")
    @click.option("-q", "--quiet", is_flag=True, default=False, help="Print only the essential value.")
    @functools.wraps(fn)
    def wrapper(*args: Any, json_: bool, quiet: bool, **kwargs: Any) -> Any:
        opts = options()
        opts.json = opts.json or json_
        opts.quiet = opts.quiet or quiet
        return fn(*args, **kwargs)

    return wrapper


def when(ms: int | None) -> str:
    """Epoch milliseconds -> local "YYYY-MM-DD HH:MM:SS" for human output ("-" when absent); --json stays raw."""
    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def one_line(text: Any, limit: int = 200) -> str:
    """Free text as one line of at most `limit` characters, "..." marking a cut (human output only)."""
    flat = " ".join(str(text).split()) if text is not None else "-"
    return flat if len(flat) <= limit else flat[:limit - 3].rstrip() + "..."


def table(rows: list[dict], columns: list[tuple[str, str]], empty: str = "(none)") -> str:
    """Render rows as an aligned text table; `columns` is [(key, heading), ...]."""
    if not rows:
        return empty
    cells = [[h for _, h in columns]] + [["" if r.get(k) is None else str(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
