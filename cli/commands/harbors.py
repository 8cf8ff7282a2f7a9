"""pd harbor create | list | show | destroy | enter | leave | members | of (docs/harbors.md)."""

from __future__ import annotations

import click

from cli.common import call, duration_ms, my_agent, output, output_options, table, when

HARBOR_COLUMNS = [("name", "HARBOR"), ("caps", "CAPABILITIES"), ("memberCount", "MEMBERS"), ("expires", "EXPIRES")]
MEMBER_COLUMNS = [("agentId", "AGENT"), ("caps", "CAPABILITIES"), ("identity", "IDENTITY"), ("joined", "JOINED")]


def _agent(agent: str | None) -> str:
    who = my_agent(agent)
    if not who:
        raise click.UsageError("give --agent AGENT (or run pd begin, or set PORT_DADDY_AGENT)")
    return who



def _caps(items: list[dict]) -> list[dict]:
    """Rows for a table: capabilities joined, times readable."""
    return [{**i, "caps": ",".join(i.get("capabilities") or []) or "-", "joined": when(i.get("joinedAt")),
             "expires": when(i.get("expiresAt"))} for i in items]


def _describe(h: dict) -> str:
    caps = ", ".join(h["capabilities"]) if h["capabilities"] else "any (open harbor)"
    lines = [f"harbor {h['name']}: capabilities {caps}"]
    if h.get("channels"):
        lines.append(f"channels: {', '.join(h['channels'])}")
    lines.append(table(_caps(h["members"]), MEMBER_COLUMNS, empty="no members"))
    return "\n".join(lines)


@click.group()
def harbor() -> None:
    """Named namespaces where agents gather with declared capabilities."""


@harbor.command("create")
@click.argument("name")
@click.option("--cap", "caps", multiple=True, help="A capability that may be used in it (repeat). None: open harbor.")
@click.option("--channel", "channels", multiple=True, help="A channel scoped to it (repeat).")
@click.option("--expires", help="Destroy it after this long (1h, 2d).")
@output_options
def create(name: str, caps: tuple[str, ...], channels: tuple[str, ...], expires: str | None) -> None:
    """Create harbor NAME (or update it): `pd harbor create myapp:fleet --cap tuple:* --cap review`."""
    result = call("harbor.create", name=name, capabilities=list(caps) or None, channels=list(channels) or None,
                  expiresIn=duration_ms(expires))
    output(result, lambda r: r["message"], quiet=name)


@harbor.command("list")
@click.argument("pattern", required=False)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@output_options
def list_harbors(pattern: str | None, limit: int) -> None:
    """Harbors, newest first (PATTERN like myapp:*)."""
    result = call("harbor.list", pattern=pattern, limit=limit)
    output(result, lambda r: table(_caps(r["harbors"]), HARBOR_COLUMNS, empty="no harbors"),
           quiet="\n".join(h["name"] for h in result["harbors"]))


@harbor.command("show")
@click.argument("name")
@output_options
def show(name: str) -> None:
    """One harbor with its members."""
    result = call("harbor.get", name=name)
    output(result, lambda r: _describe(r["harbor"]), quiet=name)


@harbor.command("destroy")
@click.argument("name")
@output_options
def destroy(name: str) -> None:
    """Destroy harbor NAME and its memberships (its tuples stay)."""
    result = call("harbor.destroy", name=name)
    output(result, lambda r: r["message"], quiet=name)


@harbor.command("enter")
@click.argument("name")
@click.option("--agent", help="The agent entering (default: $PORT_DADDY_AGENT).")
@click.option("--cap", "caps", multiple=True, help="A capability it will use (repeat).")
@click.option("--identity", help="Its identity (project:stack:context).")
@output_options
def enter(name: str, agent: str | None, caps: tuple[str, ...], identity: str | None) -> None:
    """Enter harbor NAME declaring capabilities: `pd harbor enter myapp:fleet --cap tuple:rd`."""
    result = call("harbor.enter", name=name, agentId=_agent(agent), capabilities=list(caps), identity=identity)
    output(result, lambda r: r["message"], quiet=name)


@harbor.command("leave")
@click.argument("name")
@click.option("--agent", help="The agent leaving (default: $PORT_DADDY_AGENT).")
@output_options
def leave(name: str, agent: str | None) -> None:
    """Leave harbor NAME."""
    result = call("harbor.leave", name=name, agentId=_agent(agent))
    output(result, lambda r: r["message"], quiet=name)


@harbor.command("members")
@click.argument("name")
@output_options
def members(name: str) -> None:
    """The agents in harbor NAME with their capabilities."""
    result = call("harbor.members", name=name)
    output(result, lambda r: table(_caps(r["members"]), MEMBER_COLUMNS, empty="no members"),
           quiet="\n".join(m["agentId"] for m in result["members"]))


@harbor.command("of")
@click.argument("agent", required=False)
@output_options
def of(agent: str | None) -> None:
    """The harbors AGENT is in (default: $PORT_DADDY_AGENT)."""
    result = call("harbor.memberships", agentId=_agent(agent))
    output(result, lambda r: table(_caps(r["harbors"]), HARBOR_COLUMNS, empty="in no harbor"),
           quiet="\n".join(h["name"] for h in result["harbors"]))


def register(cli: click.Group) -> None:
    cli.add_command(harbor)
