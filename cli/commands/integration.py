"""pd integration ready | needs | list: integration signals (docs/messaging.md)."""

from __future__ import annotations

import click

from cli.common import call, output, output_options, table, when

SIGNAL_COLUMNS = [("identity", "IDENTITY"), ("type", "SIGNAL"), ("message", "MESSAGE"), ("agentId", "AGENT"),
                  ("at", "AT")]


@click.group()
def integration() -> None:
    """Tell other agents a service is ready, or what it needs."""


def _show(result: dict) -> None:
    output(result, lambda r: f"{r['message']} (published on {r['channel']})", quiet=result["signal"]["id"])


@integration.command("ready")
@click.argument("identity")
@click.argument("message", required=False)
@click.option("--message", "message_opt", help="What is ready (same as MESSAGE).")
@output_options
def ready(identity: str, message: str | None, message_opt: str | None) -> None:
    """Signal that service IDENTITY is ready: `pd integration ready myapp:api "auth endpoints up"`."""
    _show(call("integration.ready", identity=identity, message=message or message_opt))


@integration.command("needs")
@click.argument("identity")
@click.argument("message", required=False)
@click.option("--message", "message_opt", help="What is needed (same as MESSAGE).")
@output_options
def needs(identity: str, message: str | None, message_opt: str | None) -> None:
    """Signal that service IDENTITY needs something: `pd integration needs myapp:web "auth API"`."""
    _show(call("integration.needs", identity=identity, message=message or message_opt))


@integration.command("list")
@click.option("--project", help="Only this project's signals.")
@click.option("--identity", help="Only this service's signals.")
@click.option("--type", "type_", type=click.Choice(["ready", "needs"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@output_options
def list_signals(project: str | None, identity: str | None, type_: str | None, limit: int) -> None:
    """Signals, newest first."""
    result = call("integration.list", project=project, identity=identity, type=type_, limit=limit)
    rows = [{**s, "at": when(s.get("createdAt"))} for s in result["signals"]]
    output(result, lambda r: table(rows, SIGNAL_COLUMNS, empty="no signals"),
           quiet="\n".join(f"{k} {v}" for k, v in result["latest"].items()))


def register(cli: click.Group) -> None:
    cli.add_command(integration)
