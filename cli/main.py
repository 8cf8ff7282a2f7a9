"""The `pd` root command: global flags, aliases, "did you mean", and the area modules."""

from __future__ import annotations

import difflib
import importlib
import pkgutil

import click

from cli.common import options

ALIASES = {"c": "claim", "r": "release", "f": "find", "ps": "find", "b": "begin", "w": "whoami", "n": "note",
           "u": "up", "d": "down", "sub": "watch"}


class PdGroup(click.Group):
    """Resolves aliases and suggests the closest command for a typo."""

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None and name in ALIASES:
            cmd = super().get_command(ctx, ALIASES[name])
        return cmd

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if args and self.get_command(ctx, name) is None and not name.startswith("-"):
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


def _register_all() -> None:
    import cli.commands as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"cli.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(cli)


_register_all()


def main() -> None:
    cli(prog_name="pd")


if __name__ == "__main__":
    main()
