"""pd up | down: start and stop a project's services from its `.portdaddyrc` (docs/projects.md).

The process work lives in `cli.up`; these commands find the rc file, translate flags and print.
"""

from __future__ import annotations

from pathlib import Path

import click

from cli import up as upmod
from cli.common import call, duration_ms, fail, options, output, output_options, table

UP_COLUMNS = [("name", "SERVICE"), ("identity", "IDENTITY"), ("port", "PORT"), ("pid", "PID"), ("status", "STATUS"),
              ("healthMs", "HEALTHY IN MS"), ("log", "LOG")]
DOWN_COLUMNS = [("name", "SERVICE"), ("identity", "IDENTITY"), ("process", "PROCESS"), ("port", "PORT"),
                ("released", "RELEASED")]


def _spec(rc_file: str | None, context: str | None) -> upmod.ProjectSpec:
    path = Path(rc_file) if rc_file else upmod.find_rc()
    if path is None:
        fail(f"no {upmod.RC_NAME} in this folder or above; write one (see docs/projects.md) or pass --file")
    try:
        return upmod.load_rc(path, context)
    except upmod.RcError as exc:
        fail(f"{path}: {exc}")


def _say(text: str) -> None:
    if not options().quiet:
        click.echo(f"pd up: {text}", err=True)


_rc_options = [
    click.option("--file", "-f", "rc_file", type=click.Path(dir_okay=False),
                 help=f"The {upmod.RC_NAME} to use (default: the nearest one in this folder or above)."),
    click.option("--context", help="Identity context (default: the file's `context`, else main)."),
]


def rc_options(fn):  # noqa: ANN001, ANN201 - a click decorator
    for option in reversed(_rc_options):
        fn = option(fn)
    return fn


@click.command("up")
@click.argument("services", nargs=-1)
@rc_options
@click.option("--timeout", default=None, help="Health wait per service when the file gives no healthTimeout "
              "(default up_health_timeout_ms, 30s).")
@click.option("--plan", is_flag=True, help="Print the start order and exit without starting anything.")
@output_options
def up_command(services: tuple[str, ...], rc_file: str | None, context: str | None, timeout: str | None,
               plan: bool) -> None:
    """Start the project's services (or SERVICES and what they need) on their claimed ports, in order.

    Each service gets PORT (and {DEP}_PORT / {DEP}_URL of its needs), runs in the background with its
    output in .portdaddy/logs/SERVICE.log, and must be healthy before the next one starts.
    """
    spec = _spec(rc_file, context)
    try:
        order = upmod.start_order(spec, list(services) or None)
    except upmod.RcError as exc:
        fail(str(exc))
    if plan:
        ids = [spec.services[n].identity for n in order]
        output({"project": spec.project, "context": spec.context, "order": order, "identities": ids},
               lambda r: "\n".join(f"{i + 1}. {n} ({ident})" for i, (n, ident) in enumerate(zip(order, ids,
                                                                                               strict=True))),
               quiet="\n".join(order))
        return
    cfg = options().config
    try:
        results = upmod.up(spec, call, list(services) or None,
                           timeout_ms=duration_ms(timeout) or cfg.up_health_timeout_ms,
                           grace_ms=cfg.up_stop_grace_ms, say=_say)
    except upmod.UpFailed as exc:
        if exc.log:
            click.echo(exc.log, err=True)
        fail(f"{exc} (the services this run started were stopped and their ports released)")
    except upmod.RcError as exc:
        fail(str(exc))
    rows = [r.to_dict() for r in results]
    output({"project": spec.project, "context": spec.context, "services": rows},
           lambda r: table(rows, UP_COLUMNS), quiet="\n".join(f"{r['name']} {r['port'] or '-'}" for r in rows))


@click.command("down")
@click.argument("services", nargs=-1)
@rc_options
@click.option("--grace", default=None, help="Time between SIGTERM and SIGKILL (default up_stop_grace_ms, 5s).")
@output_options
def down_command(services: tuple[str, ...], rc_file: str | None, context: str | None, grace: str | None) -> None:
    """Stop the project's services (or SERVICES), dependents first, and release their ports."""
    spec = _spec(rc_file, context)
    try:
        results = upmod.down(spec, call, list(services) or None,
                             grace_ms=duration_ms(grace) or options().config.up_stop_grace_ms, say=_say)
    except upmod.RcError as exc:
        fail(str(exc))
    output({"project": spec.project, "context": spec.context, "services": results},
           lambda r: table(results, DOWN_COLUMNS), quiet="\n".join(r["name"] for r in results))


def register(cli: click.Group) -> None:
    cli.add_command(up_command)
    cli.add_command(down_command)
