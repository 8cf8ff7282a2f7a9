"""pd inbox [list] | send | read | stats | clear: durable direct messages (docs/messaging.md)."""

from __future__ import annotations

import json

import click

from cli.common import call, my_agent, output, output_options

AGENT_HELP = "Whose inbox (default: this terminal's agent, from pd begin or $PORT_DADDY_AGENT)."


def _agent(agent: str | None) -> str:
    who = my_agent(agent)
    if not who:
        raise click.UsageError("give --agent AGENT (or run pd begin, or set PORT_DADDY_AGENT) to say whose inbox")
    return who


def _show(m: dict) -> str:
    content = m["content"] if isinstance(m["content"], str) else json.dumps(m["content"])
    mark = " " if m["read"] else "*"
    return f"{mark} #{m['id']} from {m['from'] or '?'} ({m['type']}): {content}"


def _list(agent: str | None, unread: bool, limit: int) -> None:
    result = call("inbox.list", id=_agent(agent), unread=unread or None, limit=limit)
    output(result, lambda r: "\n".join(_show(m) for m in r["messages"]) or "inbox empty",
           quiet="\n".join(str(m["id"]) for m in result["messages"]))


@click.group(invoke_without_command=True)
@click.option("--agent", help=AGENT_HELP)
@click.option("--unread", is_flag=True, help="Only unread messages.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@output_options
@click.pass_context
def inbox(ctx: click.Context, agent: str | None, unread: bool, limit: int) -> None:
    """Direct messages: `pd inbox` lists yours (* = unread); see the subcommands."""
    if ctx.invoked_subcommand is None:
        _list(agent, unread, limit)


@inbox.command("list")
@click.option("--agent", help=AGENT_HELP)
@click.option("--unread", is_flag=True, help="Only unread messages.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@output_options
def inbox_list(agent: str | None, unread: bool, limit: int) -> None:
    """List an inbox, newest first (* = unread)."""
    _list(agent, unread, limit)


@inbox.command("send")
@click.argument("to")
@click.argument("text", required=False)
@click.option("--content", "content_opt", help="The message (same as TEXT).")
@click.option("--from", "from_", help="Sender (default: this terminal's agent).")
@click.option("--type", "type_", help="Message kind: message, request, handoff, ...")
@output_options
def inbox_send(to: str, text: str | None, content_opt: str | None, from_: str | None, type_: str | None) -> None:
    """Send TEXT to agent TO's inbox. `-q` prints the message id."""
    content = text if text is not None else content_opt
    if not content:
        raise click.UsageError('give the message: pd inbox send AGENT "text"')
    result = call("inbox.send", id=to, content=content, type=type_,
                  **{"from": my_agent(from_)})
    output(result, lambda r: f"sent #{r['messageId']} to {to}", quiet=result["messageId"])


@inbox.command("read")
@click.argument("message_id", type=click.IntRange(1), required=False)
@click.option("--all", "all_", is_flag=True, help="Mark every message read.")
@click.option("--agent", help=AGENT_HELP)
@output_options
def inbox_read(message_id: int | None, all_: bool, agent: str | None) -> None:
    """Mark message MESSAGE_ID read, or --all of them."""
    who = _agent(agent)
    if all_:
        result = call("inbox.read_all", id=who)
        output(result, lambda r: f"marked {r['marked']} message(s) read", quiet=result["marked"])
        return
    if message_id is None:
        raise click.UsageError("give a message id, or --all")
    result = call("inbox.read", id=who, messageId=message_id)
    output(result, f"#{message_id} marked read", quiet=message_id)


@inbox.command("stats")
@click.option("--agent", help=AGENT_HELP)
@output_options
def inbox_stats(agent: str | None) -> None:
    """How many messages, how many unread."""
    result = call("inbox.stats", id=_agent(agent))
    output(result, lambda r: f"{r['agentId']}: {r['total']} message(s), {r['unread']} unread", quiet=result["unread"])


@inbox.command("clear")
@click.option("--agent", help=AGENT_HELP)
@output_options
def inbox_clear(agent: str | None) -> None:
    """Delete every message of the inbox."""
    result = call("inbox.clear", id=_agent(agent))
    output(result, lambda r: f"deleted {r['deleted']} message(s)", quiet=result["deleted"])


def register(cli: click.Group) -> None:
    cli.add_command(inbox)
