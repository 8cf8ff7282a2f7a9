"""The `pd` root command: global flags, aliases, "did you mean", and the area modules.

Area modules (`cli/commands/<area>.py`) are imported when one of their commands is looked up,
not all at start-up: `pd claim` loads `cli.commands.ports` only (importing all twenty, and what
they import, cost every command tens of milliseconds; see "Start-up time" in
docs/operations.md). `COMMANDS` says which module registers which top-level command;
tests/unit/test_cli_startup.py checks it against what the modules really register. A name it
lacks still works (every module is then loaded), and listings (`pd --help`, shell completion,
`python -m cli.docgen`) always load every module.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import click

from cli.common import fail, options

ALIASES = {"c": "claim", "r": "release", "f": "find", "ps": "find", "b": "begin", "w": "whoami", "n": "note",
           "u": "up", "d": "down", "sub": "watch"}

# top-level command -> the module of cli/commands that registers it
COMMANDS = {
    "activity": "daemon", "agent": "agents", "agents": "agents", "arbiter": "arbiter", "backup": "backup",
    "begin": "sessions",
    "briefing": "projects", "changelog": "projects", "channel": "messaging", "channels": "messaging",
    "claim": "ports", "cleanup": "ports", "config": "daemon", "dashboard": "auth", "dev": "service",
    "doctor": "daemon",
    "done": "sessions", "down": "up", "endpoint": "ports", "find": "ports", "fleet": "fleet", "guard": "sessions",
    "harbor": "harbors", "inbox": "inbox", "install": "service", "integration": "integration", "lock": "locks",
    "locks": "locks", "mcp": "mcp", "metrics": "daemon", "note": "sessions", "notes": "sessions",
    "pheromone": "pheromones", "ports": "ports", "projects": "projects", "pub": "messaging", "release": "ports",
    "restart": "daemon", "restore": "backup", "salvage": "salvage", "service": "ports", "services": "ports", "session": "sessions",
    "sessions": "sessions", "sitrep": "sessions", "spawn": "spawn", "spawned": "spawn", "start": "daemon",
    "status": "daemon", "stop": "daemon", "swarm": "projects", "swarm_awareness": "projects", "token": "auth",
    "team": "team", "tuple": "tuples",
    "unlock": "locks", "uninstall": "service", "up": "up", "version": "daemon", "wait": "projects",
    "watch": "messaging", "webhook": "webhooks", "webhooks": "webhooks", "whoami": "sessions",
    "with-lock": "locks",
}


def area_modules() -> list[str]:
    """The names of the modules in cli/commands, in the order they are registered."""
    import cli.commands as package

    return sorted(info.name for info in pkgutil.iter_modules(package.__path__))


class PdGroup(click.Group):
    """Loads area modules on demand, resolves aliases and suggests the closest command for a typo."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: set[str] = set()
        self._all_loaded = False

    def _load(self, area: str) -> None:
        if area in self._loaded:
            return
        self._loaded.add(area)
        register = getattr(importlib.import_module(f"cli.commands.{area}"), "register", None)
        if register is not None:
            register(self)

    def load_all(self) -> None:
        """Register every area module's commands (for listings: help, completion, docs)."""
        for area in area_modules():
            self._load(area)
        self._all_loaded = True

    def _find(self, ctx: click.Context | None, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            self._load(COMMANDS[name])
        return super().get_command(ctx, name)  # type: ignore[arg-type]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = self._find(ctx, name)
        if cmd is None and name in ALIASES:
            cmd = self._find(ctx, ALIASES[name])
        if cmd is None and not self._all_loaded:
            self.load_all()  # a typo, or a command COMMANDS does not list yet
            return self.get_command(ctx, name)
        return cmd

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_all()
        return super().list_commands(ctx)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if args and self.get_command(ctx, name) is None and not name.startswith("-"):
            import difflib  # only for a typo

            choices = difflib.get_close_matches(name, list(self.list_commands(ctx)) + list(ALIASES), n=1)
            hint = f" Did you mean `pd {choices[0]}`?" if choices else ""
            ctx.fail(f"no such command {name!r}.{hint} See `pd --help`.")
        return super().resolve_command(ctx, args)


@click.group(cls=PdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-j", "--json", "json_", is_flag=True, help="Print JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the essential value (e.g. the port).")
@click.option("--home", type=click.Path(file_okay=False), envvar="PORT_DADDY_HOME",
              help="Home folder of the daemon (default ~/.port-daddy).")
@click.option("--no-color", is_flag=True, help="No colours in output.")
@click.version_option(package_name="port-daddy", prog_name="pd", message="%(prog)s %(version)s")
def cli(json_: bool, quiet: bool, home: str | None, no_color: bool) -> None:
    """Port Daddy: deterministic ports, sessions, notes, salvage, locks and messaging for agents.

    Quick start:  pd start;  PORT=$(pd claim myapp:api:main -q);  pd status;  pd stop
    """
    opts = options()
    opts.json, opts.quiet, opts.home, opts.color = json_, quiet, home, not no_color


@cli.command("help")
@click.argument("topic", nargs=-1)
@click.pass_context
def help_command(ctx: click.Context, topic: tuple[str, ...]) -> None:
    """Show help for a command: `pd help claim`, `pd help session files`."""
    group: click.Command = cli
    sub_ctx = ctx.parent
    for word in topic:
        if not isinstance(group, click.Group):
            break
        nxt = group.get_command(ctx, ALIASES.get(word, word))
        if nxt is None:
            ctx.fail(f"no help topic {' '.join(topic)!r}; see `pd --help`")
        sub_ctx = click.Context(nxt, info_name=word, parent=sub_ctx)
        group = nxt
    click.echo(group.get_help(sub_ctx))


def main() -> None:
    from pdcore.config import ConfigError

    try:
        cli(prog_name="pd")
    except ConfigError as exc:  # a setting read by one command (e.g. PORT_DADDY_DEV_PORT): one line
        fail(str(exc))


if __name__ == "__main__":
    main()
