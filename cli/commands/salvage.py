"""pd salvage [--project P] | salvage claim | complete | abandon | dismiss AGENT (docs/sessions.md)."""

from __future__ import annotations

import click

from cli import context as ctxmod
from cli.common import call, fail, my_agent, options, output, output_options, when


def _entry_human(e: dict) -> str:
    lines = [f"{e['agentId']} [{e['status']}] {e['purpose']!r}",
             f"  session {e['sessionId']}, identity {e['identity'] or '-'}, died {when(e['diedAt'])} "
             f"({e['reason']}), last heartbeat {when(e['lastHeartbeat'])}"]
    if e.get("claimedBy"):
        lines.append(f"  claimed by {e['claimedBy']} at {when(e['claimedAt'])}")
    if e["files"]:
        lines.append(f"  files: {', '.join(e['files'])}")
    for n in e.get("notes", []):
        lines.append(f"  note #{n['id']} {n['type']}: {n['content']}")
    return "\n".join(lines)


def _me(claimed_by: str | None) -> str | None:
    return my_agent(claimed_by)


@click.group(invoke_without_command=True)
@click.option("--project", "-p", help="Only dead agents of this project.")
@click.option("--all", "all_", is_flag=True, help="Completed and dismissed entries too.")
@click.option("--pending", is_flag=True, help="Only entries nobody has claimed yet.")
@click.option("--status", type=click.Choice(("pending", "claimed", "completed", "dismissed")))
@output_options
@click.pass_context
def salvage(ctx: click.Context, project: str | None, all_: bool, pending: bool, status: str | None) -> None:
    """The salvage queue: work left by dead agents. Claim it to carry on."""
    if ctx.invoked_subcommand is not None:
        return
    if pending:
        result = call("salvage.pending", project=project)
    else:
        result = call("salvage.list", project=project, status=status or ("all" if all_ else None))
    output(result, lambda r: "\n".join(_entry_human(e) for e in r["entries"]) or "(nothing to salvage)",
           quiet=result["count"])


@salvage.command("claim")
@click.argument("agent_id")
@click.option("--as", "claimed_by", help="Claim as this agent (default: this terminal's agent).")
@click.option("--request-id", help="Id of this claim: repeated with the same id, it answers the same again.")
@output_options
def salvage_claim(agent_id: str, claimed_by: str | None, request_id: str | None) -> None:
    """Take over AGENT_ID's work; your session inherits its file claims."""
    me = _me(claimed_by)
    if not me:
        fail('no agent in this terminal: run pd begin "..." first, or pass --as AGENT')
    result = call("salvage.claim", agentId=agent_id, claimedBy=me, requestId=request_id)
    here = ctxmod.load(options().config.home)
    if here.agent_id == me and here.session_id != result["sessionId"]:
        ctxmod.save(options().config.home, me, result["sessionId"], here.identity)
    output(result, lambda r: f"claimed the work of {agent_id} into session {r['sessionId']}"
           + (f"; inherited {', '.join(r['inheritedFiles'])}" if r["inheritedFiles"] else "")
           + "\n" + _entry_human(r["entry"]), quiet=result["sessionId"])


def _stepped(result: dict, agent_id: str, verb: str) -> None:
    output(result, lambda r: f"{verb} the salvage of {agent_id} ({r['status']})", quiet=result["status"])


@salvage.command("complete")
@click.argument("agent_id")
@click.option("--as", "claimed_by", help="The claimer (default: this terminal's agent).")
@output_options
def salvage_complete(agent_id: str, claimed_by: str | None) -> None:
    """Mark the salvaged work of AGENT_ID done."""
    me = _me(claimed_by)
    if not me:
        fail('no agent in this terminal: run pd begin "..." first, or pass --as AGENT')
    _stepped(call("salvage.complete", agentId=agent_id, claimedBy=me), agent_id, "completed")


@salvage.command("abandon")
@click.argument("agent_id")
@click.option("--as", "claimed_by", help="The claimer (default: this terminal's agent).")
@output_options
def salvage_abandon(agent_id: str, claimed_by: str | None) -> None:
    """Give AGENT_ID's work back to the queue."""
    result = call("salvage.abandon", agentId=agent_id, claimedBy=_me(claimed_by))
    if not result["abandoned"]:
        output(result, lambda r: f"no salvage of {agent_id} to abandon", quiet="none")
        return
    _stepped(result, agent_id, "abandoned")


@salvage.command("dismiss")
@click.argument("agent_id")
@output_options
def salvage_dismiss(agent_id: str) -> None:
    """Drop AGENT_ID's entries from the queue."""
    result = call("salvage.dismiss", agentId=agent_id)
    output(result, lambda r: f"dismissed {r['dismissed']} entr{'y' if r['dismissed'] == 1 else 'ies'} of {agent_id}",
           quiet=result["dismissed"])


def register(cli: click.Group) -> None:
    cli.add_command(salvage)
