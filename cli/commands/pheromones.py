"""pd pheromone spray | file | sniff | show | list | files: decaying signals (docs/pheromones.md)."""

from __future__ import annotations

import click

from cli.common import call, duration_ms, output, output_options, table

FILE_COLUMNS = [("path", "PATH"), ("heat", "HEAT"), ("activeClaims", "CLAIMS"), ("agentList", "AGENTS"),
                ("conflictMark", "CONFLICT")]
DIR_COLUMNS = [("path", "FOLDER"), ("heat", "HEAT"), ("fileCount", "FILES"), ("conflictCount", "CONFLICTS")]


def _values(pheromones: dict) -> str:
    if not pheromones:
        return "(none: faded or never sprayed)"
    return "  ".join(f"{k}={v:.3f}" for k, v in sorted(pheromones.items()))


@click.group()
def pheromone() -> None:
    """Ambient signals in [0, 1] that fade with a half-life (default 10 min)."""


@pheromone.command("spray")
@click.argument("args", nargs=-1, metavar="[TABLE ID KEY STRENGTH]")
@click.option("--table", help="Any table name: services, sessions, agents, files, ...")
@click.option("--id", "id_", help="The entity (for files: a path).")
@click.option("--key", help="What the signal means (e.g. urgency).")
@click.option("--strength", type=click.FloatRange(0, 1), help="0 to 1.")
@click.option("--add", is_flag=True, help="Reinforce the current value (capped at 1) instead of setting it.")
@click.option("--half-life", help="Half-life of this pheromone (90s, 10m); default from the daemon.")
@output_options
def spray(args: tuple[str, ...], table: str | None, id_: str | None, key: str | None, strength: float | None,
          add: bool, half_life: str | None) -> None:
    """Set a pheromone: `pd pheromone spray services myapp:api urgency 0.8` (or with --table/--id/--key/--strength)."""
    if args and len(args) != 4:
        raise click.UsageError("give TABLE ID KEY STRENGTH, or --table --id --key --strength")
    if args:
        table, id_, key = args[0], args[1], args[2]
        try:
            strength = float(args[3])
        except ValueError:
            raise click.BadParameter(f"{args[3]!r} is not a number from 0 to 1", param_hint="STRENGTH") from None
    if not (table and id_ and key) or strength is None:
        raise click.UsageError("give TABLE ID KEY STRENGTH, or --table --id --key --strength")
    result = call("pheromone.spray", table=table, id=id_, key=key, strength=strength, add=add or None,
                  halfLifeMs=duration_ms(half_life))
    output(result, lambda r: f"{r['table']}/{r['id']}: {_values(r['pheromones'])}", quiet=f"{result['value']:.6g}")


@pheromone.command("file")
@click.argument("path")
@click.argument("strength", type=click.FloatRange(0, 1))
@click.option("--add", is_flag=True, help="Reinforce the current heat (capped at 1) instead of setting it.")
@output_options
def spray_file(path: str, strength: float, add: bool) -> None:
    """Mark a file as hot: `pd pheromone file src/auth/login.py 0.7` (table files, key heat)."""
    result = call("pheromone.spray", table="files", id=path, key="heat", strength=strength, add=add or None)
    output(result, lambda r: f"{r['id']}: heat {r['value']:.3f}", quiet=f"{result['value']:.6g}")


def _sniff(table_arg: str | None, id_arg: str | None, table: str | None, id_: str | None) -> None:
    table, id_ = table_arg or table, id_arg or id_
    if not table or not id_:
        raise click.UsageError("give TABLE ID (or --table and --id)")
    result = call("pheromone.sniff", table=table, id=id_)
    output(result, lambda r: f"{r['table']}/{r['id']}: {_values(r['pheromones'])}", quiet=result["pheromones"])


_SNIFF_ARGS = (click.argument("table_arg", required=False, metavar="TABLE"),
               click.argument("id_arg", required=False, metavar="ID"),
               click.option("--table"), click.option("--id", "id_"))


def _sniff_command(name: str, doc: str) -> click.Command:
    def command(table_arg: str | None, id_arg: str | None, table: str | None, id_: str | None) -> None:
        _sniff(table_arg, id_arg, table, id_)

    command.__doc__ = doc
    fn = output_options(command)
    for deco in reversed(_SNIFF_ARGS):
        fn = deco(fn)
    return pheromone.command(name)(fn)


_sniff_command("sniff", "Read the pheromones of an entity, decayed to now: `pd pheromone sniff services myapp:api`.")
_sniff_command("show", "Same as sniff.")


@pheromone.command("list")
@click.option("--table", help="Only this table.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@output_options
def list_pheromones(table: str | None, limit: int) -> None:
    """Every entity with a live pheromone, strongest first."""
    result = call("pheromone.list", table=table, limit=limit)
    output(result, lambda r: "\n".join(f"{e['table']}/{e['id']}: {_values(e['pheromones'])}"
                                       for e in r["pheromones"]) or "no pheromones", quiet=result["count"])


@pheromone.command("files")
@click.option("--path", help="Only files under this path.")
@click.option("--depth", type=click.IntRange(1, 64), default=5, show_default=True, help="Folder levels to aggregate.")
@click.option("--project", help="Only file claims of this project.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Files shown.")
@output_options
def files(path: str | None, depth: int, project: str | None, limit: int) -> None:
    """File heat map: which files agents are fighting over (claims + files pheromones)."""
    result = call("pheromone.files", path=path, depth=depth, project=project, limit=limit)

    def human(r: dict) -> str:
        rows = [{**f, "agentList": ",".join(f["agents"]), "conflictMark": "yes" if f["conflict"] else ""}
                for f in r["files"]]
        s = r["summary"]
        return (table(rows, FILE_COLUMNS, empty="no claimed or sprayed files") + "\n\n"
                + table(r["dirs"], DIR_COLUMNS, empty="no folders") + "\n\n"
                + f"{s['totalFiles']} file(s), {s['activeConflicts']} conflict(s); hottest file "
                  f"{s['hottestFile'] or '-'}, hottest folder {s['hottestDir'] or '-'}")

    output(result, human, quiet=result["summary"]["hottestFile"] or "")


def register(cli: click.Group) -> None:
    cli.add_command(pheromone)
