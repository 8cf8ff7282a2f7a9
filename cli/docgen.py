"""Generate docs/cli.md from the click command tree, so the CLI reference cannot drift.

`python -m cli.docgen --write` rewrites the file; a unit test fails when it is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.main import ALIASES, cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

HEADER = """# `pd` command reference

Generated from the command tree by `python -m cli.docgen --write`; do not edit by hand.

Conventions: human text by default, `--json` (`-j`) for JSON, `--quiet` (`-q`) for the bare
value (`PORT=$(pd claim myapp:api -q)`). Errors are one line on stderr with exit code 1 (2 for
usage). Durations take units (`500ms`, `30s`, `5m`, `1h`, `2d`); a bare number is seconds.
A command that needs the daemon starts it once when it is down (unless
`PORT_DADDY_NO_AUTOSTART=1`); `pd status` and `pd doctor` never do. Global flags: `-j/--json`,
`-q/--quiet`, `--home DIR`, `--no-color`.

Aliases: {aliases}.
"""


def _walk(cmd: click.Command, path: list[str], ctx: click.Context):
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _walk(sub, path + [name], click.Context(sub, info_name=name, parent=ctx))


def _options(cmd: click.Command, ctx: click.Context) -> list[str]:
    """One row per option, from the option's own attributes (not click's version-dependent help layout)."""
    rows = []
    for param in cmd.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        names = ", ".join(param.opts + param.secondary_opts)
        if not param.is_flag and not param.count:
            names += f" {param.metavar or param.type.name.upper()}"
        text = (param.help or "").replace("|", "/")
        rows.append(f"| `{names}` | {text} |")
    return rows


def _usage(cmd: click.Command) -> str:
    """The usage line, built from the command's parameters (click's own layout varies by version)."""
    if isinstance(cmd, click.Group):
        return "[OPTIONS] COMMAND [ARGS]..."
    pieces = ["[OPTIONS]"]
    for param in cmd.params:
        if isinstance(param, click.Argument):
            name = param.human_readable_name.upper() + ("..." if param.nargs == -1 else "")
            pieces.append(name if param.required else f"[{name}]")
    return " ".join(pieces)


def render() -> str:
    root_ctx = click.Context(cli, info_name="pd")
    aliases = ", ".join(f"`{a}` = `{b}`" for a, b in sorted(ALIASES.items()))
    out = [HEADER.format(aliases=aliases)]
    for path, cmd, ctx in _walk(cli, [], root_ctx):
        if not path:
            continue
        usage = _usage(cmd)
        out.append(f"## `pd {' '.join(path)}`\n")
        out.append(f"```\npd {' '.join(path)} {usage}\n```\n")
        help_text = (cmd.help or "").strip()
        if help_text:
            out.append(click.unstyle(help_text.split("\f")[0]).strip() + "\n")
        rows = _options(cmd, ctx)
        if rows:
            out.append("| option | meaning |\n|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(out)


def main() -> None:
    text = render()
    if "--write" in sys.argv:
        DOC.write_text(text)
        print(f"{DOC}: updated")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
