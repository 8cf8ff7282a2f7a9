"""pd spawn [TASK] | spawn kill | spawn logs | spawned: ad-hoc background agents (docs/fleet.md)."""

from __future__ import annotations

import copy
import os
import time

import click

from cli.common import call, duration_ms, options, output, output_options, table

SPAWN_COLUMNS = [("agentId", "AGENT"), ("backend", "BACKEND"), ("state", "STATE"), ("exit", "EXIT"),
                 ("where", "FLEET/AGENT"), ("started", "STARTED"), ("short", "TASK")]


def _when(ms: int | None) -> str:
    return "-" if not ms else time.strftime("%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _rows(agents: list[dict]) -> list[dict]:
    rows = []
    for a in agents:
        task = " ".join((a.get("task") or "").split())
        rows.append({**a, "exit": "-" if a.get("exitCode") is None else f"{a['exitCode']} ({a.get('outcome')})",
                     "where": f"{a['fleet']}/{a['agent']}" if a.get("fleet") else "-",
                     "started": _when(a.get("startedAt") or a.get("createdAt")),
                     "short": task if len(task) <= 40 else task[:37] + "..."})
    return rows


class SpawnGroup(click.Group):
    """`pd spawn TASK` runs the hidden default command; `pd spawn kill|logs ...` the others.

    The default command's options are shown in the group's own help (and docs/cli.md) through
    copies that take no value: the group never parses them, since any argument that is not a
    subcommand or -h/--help sends the whole command line to the default command.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["_start", *args]
        return super().parse_args(ctx, args)

    def show_options_of(self, cmd: click.Command) -> None:
        """List `cmd`'s options in this group's --help, as if they were its own."""
        for param in cmd.params:
            if isinstance(param, click.Option):
                shown = copy.copy(param)
                shown.expose_value = False
                self.params.append(shown)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] TASK... | COMMAND [ARGS]...")


class _TaskCommand(click.Command):
    """The default command; its usage reads `pd spawn [OPTIONS] TASK...`."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("pd spawn", "[OPTIONS] TASK...")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            raise _as_the_groups(err, ctx) from None

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise _as_the_groups(err, ctx) from None


def _as_the_groups(err: click.UsageError, ctx: click.Context) -> click.UsageError:
    """Point a usage error at `pd spawn --help` (whose help lists these options), not the hidden name."""
    err.ctx = ctx.parent or ctx
    return err


@click.group(cls=SpawnGroup)
def spawn() -> None:
    """Launch a background AI agent: pd spawn [--backend B] [--model M] TASK.

    The daemon's fleet runner starts it, registers it, heartbeats for it and logs its output
    (pd spawn logs AGENT). Backends: claude-cli (default), gemini, aider, ollama (needs --model),
    custom (TASK is a shell command). See pd spawned, pd spawn kill AGENT.
    """


@spawn.command("_start", cls=_TaskCommand, hidden=True)
@click.argument("task", nargs=-1, required=True)
@click.option("--backend", "-b", default="claude-cli", show_default=True,
              help="claude-cli | gemini | aider | ollama | custom")
@click.option("--model", "-m", help="The model (required for ollama).")
@click.option("--identity", help="project[:stack[:context]] the agent works on.")
@click.option("--purpose", help="What it is for (default: the start of the task).")
@click.option("--cwd", type=click.Path(file_okay=False), help="Folder to run in (default: here).")
@click.option("--timeout", help="Kill it after this long (30m, 2h).")
@click.option("--env", "env_items", multiple=True, metavar="NAME=VALUE", help="Extra environment (repeat).")
@click.option("--file", "files", multiple=True, help="A file for backends that take files (aider; repeat).")
@click.option("--agent-id", help="Its agent id (default spawn-<random>).")
@output_options
def start(task: tuple[str, ...], backend: str, model: str | None, identity: str | None, purpose: str | None,
          cwd: str | None, timeout: str | None, env_items: tuple[str, ...], files: tuple[str, ...],
          agent_id: str | None) -> None:
    """Launch a background agent on TASK (for backend custom, TASK is a shell command). -q: its agent id."""
    env = {}
    for item in env_items:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--env")
        env[name] = value
    result = call("spawn.create", task=" ".join(task), backend=backend, model=model, identity=identity,
                  purpose=purpose, cwd=os.path.abspath(cwd or os.getcwd()), timeout=duration_ms(timeout),
                  env=env or None, files=list(files) or None, agentId=agent_id)
    output(result, lambda r: f"{r['message']}\nwatch it: pd spawned; its output: pd spawn logs {r['agentId']}",
           quiet=result["agentId"])


spawn.show_options_of(start)


@spawn.command("kill")
@click.argument("agent")
@output_options
def kill(agent: str) -> None:
    """Kill a spawned agent (or the running runs of a fleet agent id)."""
    result = call("spawn.kill", agentId=agent)
    output(result, lambda r: r["message"], quiet=agent)


@spawn.command("logs")
@click.argument("agent")
@click.option("-n", "--lines", type=click.IntRange(0), default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the agent writes.")
def logs(agent: str, lines: int, follow: bool) -> None:
    """Show a spawned agent's output."""
    from cli.commands.fleet import follow_file
    from fleet.paths import spawn_log

    follow_file(spawn_log(options().config.home, agent), lines, follow)


@click.command("spawned")
@click.option("--active", is_flag=True, help="Only waiting or running ones.")
@click.option("--fleet", help="Only the runs of this fleet.")
@click.option("--agent", "agent_id", help="Only the runs of this agent id.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@output_options
def spawned(active: bool, fleet: str | None, agent_id: str | None, limit: int) -> None:
    """Spawned agents and fleet runs, newest first: state, exit code, task."""
    result = call("spawn.list", active=active or None, fleet=fleet, agentId=agent_id, limit=limit)
    output(result, lambda r: table(_rows(r["agents"]), SPAWN_COLUMNS, empty="no spawned agents"),
           quiet="\n".join(a["agentId"] for a in result["agents"]))


def register(cli: click.Group) -> None:
    cli.add_command(spawn)
    cli.add_command(spawned)
