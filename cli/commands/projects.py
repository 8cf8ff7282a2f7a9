"""pd wait | briefing | changelog add|list | projects | swarm (docs/projects.md)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cli import context as ctxmod
from cli import up as upmod
from cli.common import call, duration_ms, options, output, output_options, table
from pdcore.choices import CHANGELOG_TYPES as TYPES

PROJECT_COLUMNS = [("project", "PROJECT"), ("services", "SERVICES"), ("activeSessions", "SESSIONS"),
                   ("fileClaims", "FILES"), ("agents", "AGENTS"), ("salvagePending", "SALVAGE"),
                   ("portsShown", "PORTS")]
CHANGELOG_LABELS = {"breaking": "Breaking changes", "feature": "Added", "fix": "Fixed", "refactor": "Changed",
                    "docs": "Documentation", "chore": "Maintenance"}


def ago(ms: int | None) -> str:
    """`42s ago`, `5m ago`, `3h ago` from epoch ms."""
    if not ms:
        return "-"
    s = max(0, int(time.time() - ms / 1000))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def here_project() -> str | None:
    """The project of the working folder (`.portdaddyrc`'s, else the repository's or folder's name)."""
    return ctxmod.default_identity()


# -- pd wait ------------------------------------------------------------------------------------
@click.command("wait")
@click.argument("ids", nargs=-1, required=True)
@click.option("--timeout", "-t", default="30s", show_default=True, help="How long to wait (500ms, 30s, 5m).")
@output_options
def wait(ids: tuple[str, ...], timeout: str) -> None:
    """Wait until service identities are claimed (the daemon answers the moment they are).

    `pd wait myapp:db:main && npm run migrate`; exit 1 when the timeout passes first.
    """
    ms = duration_ms(timeout)
    if len(ids) == 1:
        result = call("service.wait", id=ids[0], timeout=ms)
        output(result, lambda r: f"{r['id']} is up on port {r['port']}", quiet=result["port"])
        return
    result = call("service.wait_many", ids=list(ids), timeout=ms)
    output(result, lambda r: "\n".join(f"{i} is up on port {p}" for i, p in r["ports"].items()),
           quiet="\n".join(f"{i} {p}" for i, p in result["ports"].items()))


# -- pd briefing --------------------------------------------------------------------------------
@click.command("briefing")
@click.option("--project", "-p", help="Project to brief on (default: this folder's project).")
@click.option("--all", "all_", is_flag=True, help="Every project, not just this folder's.")
@click.option("--limit", type=click.IntRange(1, 500), help="Entries per list (default briefing_limit_default).")
@click.option("--write", "write", is_flag=True, help="Also write it to .portdaddy/briefing.md beside .portdaddyrc.")
@output_options
def briefing(project: str | None, all_: bool, limit: int | None, write: bool) -> None:
    """A markdown snapshot of the project for an arriving agent: who is here, what they hold, what happened."""
    result = call("briefing.get", project=None if all_ else (project or here_project()), limit=limit)
    if write:
        rc = upmod.find_rc()
        folder = (rc.parent if rc else Path.cwd()) / upmod.STATE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "briefing.md").write_text(result["markdown"])
        click.echo(f"pd: wrote {folder / 'briefing.md'}", err=True)
    output(result, result["markdown"].rstrip("\n"), quiet=result["markdown"].rstrip("\n"))


# -- pd changelog -------------------------------------------------------------------------------
@click.group("changelog")
def changelog() -> None:
    """Record and list changes (feature, fix, ...) by identity; entries roll up to the project."""


@changelog.command("add")
@click.argument("summary_arg", required=False, metavar="SUMMARY")
@click.option("--summary", "-m", help="One line: what changed (same as the positional).")
@click.option("--identity", "-i", help="project[:stack[:context]] (default: your session's, else this folder's project).")
@click.option("--type", "-t", "change_type", type=click.Choice(TYPES), default="feature", show_default=True)
@click.option("--description", "-d", help="Details (markdown).")
@click.option("--agent", help="Agent id (default: this terminal's).")
@click.option("--session", help="Session id (default: this terminal's).")
@output_options
def changelog_add(summary_arg: str | None, summary: str | None, identity: str | None, change_type: str,
                  description: str | None, agent: str | None, session: str | None) -> None:
    """Record a change: `pd changelog add "JWT refresh tokens" -i myapp:api -t feature`."""
    text = summary_arg if summary_arg is not None else summary
    if not text:
        raise click.UsageError("say what changed: pd changelog add \"SUMMARY\" (or --summary)")
    here = ctxmod.load(options().config.home)
    agent_id, session_id = agent or here.agent_id, session or here.session_id
    if identity is None and not (agent_id or session_id):
        identity = here_project()
    result = call("changelog.add", summary=text, identity=identity, type=change_type, description=description,
                  agentId=agent_id, sessionId=session_id)
    output(result, lambda r: r["message"], quiet=result["id"])


def _changelog_markdown(entries: list[dict]) -> str:
    """Keep-a-Changelog style: entries grouped by type."""
    lines = ["# Changelog", ""]
    for kind in ("breaking", *[t for t in TYPES if t != "breaking"]):
        group = [e for e in entries if e["type"] == kind]
        if group:
            lines += [f"### {CHANGELOG_LABELS[kind]}", ""]
            lines += [f"- {e['summary']} (`{e['identity'] or '-'}`)" for e in group]
            lines.append("")
    return "\n".join(lines).rstrip()


@changelog.command("list")
@click.option("--project", "-p", help="Project (default: this folder's project).")
@click.option("--all", "all_", is_flag=True, help="Every project.")
@click.option("--identity", "-i", help="This identity and its children (myapp:api -> myapp:api:auth).")
@click.option("--type", "-t", "change_type", type=click.Choice(TYPES))
@click.option("--agent", help="Only entries by this agent.")
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--markdown", is_flag=True, help="Print as a Keep-a-Changelog markdown document.")
@output_options
def changelog_list(project: str | None, all_: bool, identity: str | None, change_type: str | None,
                   agent: str | None, limit: int, markdown: bool) -> None:
    """Changelog entries, newest first."""
    if all_ or identity:
        project = project if not all_ else None
    else:
        project = project or here_project()
    result = call("changelog.list", project=project, identity=identity, type=change_type, agentId=agent,
                  limit=limit)
    entries = result["entries"]
    if markdown:
        output(result, _changelog_markdown(entries), quiet=_changelog_markdown(entries))
        return
    rows = [{**e, "when": ago(e["createdAt"]), "kind": e["type"].upper()} for e in entries]
    output(result, table(rows, [("id", "ID"), ("when", "WHEN"), ("kind", "TYPE"), ("identity", "IDENTITY"),
                                ("summary", "SUMMARY"), ("agentId", "AGENT")], empty="no changelog entries"),
           quiet="\n".join(str(e["id"]) for e in entries))


# -- pd projects --------------------------------------------------------------------------------
@click.command("projects")
@output_options
def projects() -> None:
    """Projects the daemon knows of (from services, sessions, agents, salvage), with counts."""
    result = call("project.list")
    rows = [{**p, "portsShown": " ".join(str(x) for x in p["ports"][:6]) + (" …" if len(p["ports"]) > 6 else "")}
            for p in result["projects"]]
    output(result, table(rows, PROJECT_COLUMNS, empty="no projects yet (pd claim, pd begin or pd up start one)"),
           quiet="\n".join(p["project"] for p in result["projects"]))


# -- pd swarm -----------------------------------------------------------------------------------
def _swarm(project: str | None) -> dict:
    agents = call("agent.list", active=True)["agents"]
    sessions = call("session.list", status="active", project=project, limit=1000)["sessions"]
    files = call("files.list", project=project, limit=1000)["files"]
    if project is not None:
        in_sessions = {s["agentId"] for s in sessions}
        agents = [a for a in agents if a["id"] in in_sessions
                  or (a.get("identity") or "").split(":", 1)[0] == project]
    return {"project": project, "agents": agents, "sessions": sessions, "fileClaims": files}


def _swarm_human(r: dict) -> str:
    lines = [f"who is working{' on ' + r['project'] if r['project'] else ''}:",
             f"agents ({len(r['agents'])}):"]
    lines += [f"  {a['id']:<20} {a['liveness']:<6} heartbeat {ago(a['lastHeartbeat']):<9} "
              f"{a.get('identity') or '-'}" + (f"  {a['purpose']!r}" if a.get("purpose") else "")
              for a in r["agents"]] or ["  (none)"]
    lines.append(f"active sessions ({len(r['sessions'])}):")
    for s in r["sessions"]:
        lines.append(f"  {s['id']} {s['agentId'] or '-'} [{s['phase']}] {s['identity'] or '-'} {s['purpose']!r}")
        claims = [c for c in r["fileClaims"] if c["sessionId"] == s["id"]]
        if claims:
            lines.append("    files: " + ", ".join(c["path"] + (" (strict)" if c["strict"] else "") for c in claims))
    if not r["sessions"]:
        lines.append("  (none)")
    return "\n".join(lines)


@click.command("swarm")
@click.option("--project", "-p", help="Only this project's agents, sessions and claims.")
@click.option("--here", is_flag=True, help="Only this folder's project.")
@output_options
def swarm(project: str | None, here: bool) -> None:
    """Who else is working: live agents (alive/stale), their active sessions and file claims."""
    result = _swarm(here_project() if here else project)
    output(result, _swarm_human, quiet="\n".join(a["id"] for a in result["agents"]))


def register(cli: click.Group) -> None:
    for cmd in (wait, briefing, changelog, projects, swarm):
        cli.add_command(cmd)
    # the seed's name for swarm (`pd swarm_awareness`), kept out of the command list
    alias = click.Command("swarm_awareness", callback=swarm.callback, params=swarm.params,
                          help=f"Same as `pd swarm`. {swarm.help}", hidden=True)
    cli.add_command(alias)
