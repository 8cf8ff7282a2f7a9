"""pd agent register | heartbeat | unregister | list | get, and pd agents (docs/sessions.md)."""

from __future__ import annotations

import click

from cli.common import call, fail, my_agent, output, output_options, table

AGENT_COLUMNS = [("id", "AGENT"), ("status", "LIVENESS"), ("pid", "PID"), ("identity", "IDENTITY"),
                 ("type", "TYPE"), ("purpose", "PURPOSE")]


def _agent_or_context(agent_id: str | None) -> str:
    found = my_agent(agent_id)
    if not found:
        fail("no agent given and none current in this terminal; pass AGENT_ID or run pd begin")
    return found


@click.group()
def agent() -> None:
    """Agents: register, heartbeat, unregister, get, list."""


@agent.command("register")
@click.argument("agent_id", required=False)
@click.option("--name")
@click.option("--type", "agent_type", help="claude-code, codex, gemini, aider, human, ...")
@click.option("--pid", type=click.IntRange(1), help="The agent dies with this process.")
@click.option("--identity", help="project[:stack[:context]]")
@click.option("--purpose")
@output_options
def agent_register(agent_id: str | None, name: str | None, agent_type: str | None, pid: int | None,
                   identity: str | None, purpose: str | None) -> None:
    """Register (or update) an agent. `-q` prints its id."""
    result = call("agent.register", id=agent_id, name=name, type=agent_type, pid=pid, identity=identity,
                  purpose=purpose)
    output(result, lambda r: r["message"], quiet=result["agentId"])


@agent.command("heartbeat")
@click.argument("agent_id", required=False)
@output_options
def agent_heartbeat(agent_id: str | None) -> None:
    """Say the agent (default: this terminal's) is alive."""
    result = call("heartbeat", id=_agent_or_context(agent_id))
    output(result, lambda r: f"{r['agentId']}: alive", quiet=result["agentId"])


@agent.command("unregister")
@click.argument("agent_id", required=False)
@output_options
def agent_unregister(agent_id: str | None) -> None:
    """Forget an agent that leaves cleanly (nothing goes to salvage)."""
    result = call("agent.unregister", id=_agent_or_context(agent_id))
    output(result, lambda r: f"unregistered {r['agentId']}", quiet=result["agentId"])


@agent.command("get")
@click.argument("agent_id", required=False)
@output_options
def agent_get(agent_id: str | None) -> None:
    """Show one agent with its liveness."""
    result = call("agent.get", id=_agent_or_context(agent_id))
    a = result["agent"]
    output(result, lambda r: "\n".join(f"{k}: {v}" for k, v in a.items() if v is not None), quiet=a["status"])


def _list(all_: bool, status: str | None) -> None:
    result = call("agent.list", active=None if all_ or status else True, status=status)
    output(result, lambda r: table(r["agents"], AGENT_COLUMNS, "(no agents)"), quiet=result["count"])


@agent.command("list")
@click.option("--all", "all_", is_flag=True, help="Dead agents too.")
@click.option("--status", type=click.Choice(("alive", "stale", "dead")))
@output_options
def agent_list(all_: bool, status: str | None) -> None:
    """List agents (live ones unless --all)."""
    _list(all_, status)


@click.command()
@click.option("--all", "all_", is_flag=True, help="Dead agents too.")
@click.option("--status", type=click.Choice(("alive", "stale", "dead")))
@output_options
def agents(all_: bool, status: str | None) -> None:
    """List agents (live ones unless --all)."""
    _list(all_, status)


def register(cli: click.Group) -> None:
    cli.add_command(agent)
    cli.add_command(agents)
