"""pd begin | done | whoami | note | notes | session ... | sessions | sitrep | guard (docs/sessions.md).

The terminal's current agent and session come from `cli.context`, so after `pd begin` the other
commands need no ids; `--agent` / `--session` name them explicitly.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli import context as ctxmod
from cli.common import call, duration_ms, fail, one_line, options, output, output_options, table, when
from pdcore.choices import NOTE_TYPES
from pdcore.choices import SESSION_PHASES as PHASES
from pdcore.client import Client
from pdcore.errors import OpError

GUARD_MARK = "# installed by: pd guard install"


def span(ms: int | None) -> str:
    if ms is None:
        return "-"
    s = ms // 1000
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def current() -> ctxmod.TerminalContext:
    return ctxmod.load(options().config.home)


def need_session(session: str | None) -> str:
    """The session to act on: --session, else this terminal's, else the active session of this
    terminal's agent (PORT_DADDY_AGENT alone), else an error (exit 1: a state, not a usage, problem)."""
    here = current()
    sid = session or here.session_id
    if not sid and here.agent_id:
        me = call("sugar.whoami", agentId=here.agent_id)  # the core's rule for an agent's active session
        sid = me["sessionId"] if me["active"] else None
        if not sid:
            fail(f"agent {here.agent_id} has no active session; run `pd begin \"what you are doing\"` "
                 "or pass --session")
    if not sid:
        fail('no current session in this terminal; run `pd begin "what you are doing"` or pass --session')
    return sid


def _text(positional: str | None, named: str | None, what: str) -> str:
    text = positional if positional is not None else named
    if text == "-":
        text = sys.stdin.read()
    if not text:
        raise click.UsageError(f"give the {what} as an argument or with --{what}")
    return text


def _files_human(claimed: list[str], conflicts: list[dict]) -> list[str]:
    lines = []
    if claimed:
        lines.append("  files: " + ", ".join(claimed))
    for c in conflicts:
        lines.append(f"  ! {c['path']} overlaps {c['heldPath']} held by {c['agentId'] or c['sessionId']} "
                     f"({c['purpose']!r}) since {when(c['since'])}" + (" [strict]" if c.get("strict") else ""))
    return lines


def _salvage_human(hint: dict | None) -> list[str]:
    if not hint:
        return []
    lines = [f"  salvage: {hint['message']}"]
    for e in hint.get("entries", []):
        lines.append(f"    {e['agentId']}: {e['purpose']!r} (died {when(e['diedAt'])}, {e['files']} file(s))"
                     f" -> pd salvage claim {e['agentId']}")
    return lines


# -- begin / done / whoami ------------------------------------------------------------------
@click.command()
@click.argument("purpose_arg", required=False, metavar="PURPOSE")
@click.option("--purpose", help="What you are about to do (same as the positional argument).")
@click.option("--identity", "-i", help="project[:stack[:context]] (default: this folder's project).")
@click.option("--files", "-f", multiple=True, help="Claim these paths/globs too (repeatable).")
@click.option("--agent", help="Agent id (default: this terminal's agent, else a new one).")
@click.option("--type", "agent_type", help="Agent type: claude-code, codex, gemini, aider, human ...")
@click.option("--pid", help="The agent dies with this process: a pid, or 'shell' for the calling shell.")
@click.option("--force", is_flag=True, help="Replace (abandon) the agent's current session.")
@click.option("--strict", is_flag=True, help="Refuse if another session holds one of the files.")
@click.option("--export", "export", is_flag=True, help="Print `export PORT_DADDY_...` lines for eval.")
@output_options
def begin(purpose_arg: str | None, purpose: str | None, identity: str | None, files: tuple[str, ...],
          agent: str | None, agent_type: str | None, pid: str | None, force: bool, strict: bool,
          export: bool) -> None:
    """Register as an agent and start a session in one step. `-q` prints the session id."""
    text = _text(purpose_arg, purpose, "purpose")
    home = options().config.home
    here = current()
    pid_value = None
    if pid is not None:
        pid_value = os.getppid() if pid in ("shell", "parent") else _int(pid, "--pid")
    result = call("sugar.begin", purpose=text, identity=identity or ctxmod.default_identity(),
                  agentId=agent or here.agent_id, type=agent_type, files=list(files) or None, pid=pid_value,
                  force=force or None, strict=strict or None)
    ctxmod.save(home, result["agentId"], result["sessionId"], result.get("identity"))
    if export:
        click.echo(f"export {ctxmod.ENV_AGENT}={result['agentId']}\nexport {ctxmod.ENV_SESSION}={result['sessionId']}")
        return

    def human(r: dict) -> str:
        lines = [f"began session {r['sessionId']} as agent {r['agentId']}: {r['purpose']}"]
        if r.get("identity"):
            lines.append(f"  identity: {r['identity']}")
        lines += _files_human(r.get("fileClaims") or [], r.get("fileConflicts") or [])
        lines += _salvage_human(r.get("salvage"))
        lines.append(f"  (other shells: export {ctxmod.ENV_AGENT}={r['agentId']} {ctxmod.ENV_SESSION}={r['sessionId']})")
        return "\n".join(lines)

    output(result, human, quiet=result["sessionId"])
    hint = result.get("salvageHint")
    if hint and (options().json or options().quiet):
        click.echo(f"pd: {hint}", err=True)


def _int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise click.BadParameter(f"{name} must be a number or 'shell'") from None
    if value < 1:
        raise click.BadParameter(f"{name} must be positive")
    return value


@click.command()
@click.argument("note_arg", required=False, metavar="[NOTE]")
@click.option("--note", "-m", help="A closing note (handoff) written before the session ends.")
@click.option("--abandon", is_flag=True, help="End the session as abandoned instead of completed.")
@click.option("--keep-agent", is_flag=True, help="End the session but keep the agent registered.")
@click.option("--agent", help="Agent id (default: this terminal's).")
@click.option("--session", help="Session id (default: this terminal's).")
@output_options
def done(note_arg: str | None, note: str | None, abandon: bool, keep_agent: bool, agent: str | None,
         session: str | None) -> None:
    """End the session (and unregister the agent): the terminal's context is cleared."""
    here = current()
    agent_id, session_id = agent or here.agent_id, session or here.session_id
    if not agent_id and not session_id:
        fail("no current agent or session in this terminal; pass --agent or --session")
    text = note_arg if note_arg is not None else note
    if text == "-":
        text = sys.stdin.read()
    try:
        result = options().client().call("sugar.done", agentId=agent_id, sessionId=session_id, note=text or None,
                                          status="abandoned" if abandon else "completed",
                                          keepAgent=keep_agent or None)
    except OpError as err:
        if err.code == "not_found":  # nothing active any more: this terminal's context is stale either way
            ctxmod.clear(options().config.home, agent_id, session_id)
        if err.code != "unavailable":
            fail(err.message)
        result = call("sugar.done", agentId=agent_id, sessionId=session_id, note=text or None,
                      status="abandoned" if abandon else "completed", keepAgent=keep_agent or None)
    ctxmod.clear(options().config.home, result.get("agentId") or agent_id, result.get("sessionId") or session_id)
    output(result, lambda r: f"session {r['sessionId'] or '-'} {r['sessionStatus'] or 'not found'}"
           + (f"; agent {r['agentId']} unregistered" if r["agentUnregistered"] else "")
           + (f"; released {len(r['releasedFiles'])} file claim(s)" if r.get("releasedFiles") else "")
           + (f"; released lock(s) {', '.join(r['releasedLocks'])}" if r.get("releasedLocks") else ""),
           quiet=result["sessionStatus"])


@click.command()
@click.option("--agent", help="Agent id (default: this terminal's).")
@click.option("--session", help="Session id (default: this terminal's).")
@output_options
def whoami(agent: str | None, session: str | None) -> None:
    """Who am I: agent, session, purpose, identity, notes, files."""
    here = current()
    agent_id, session_id = agent or here.agent_id, session or here.session_id
    if not agent_id and not session_id:
        result: dict[str, Any] = {"active": False, "agentId": None, "sessionId": None, "context": here.source}
    else:
        result = call("sugar.whoami", agentId=agent_id, sessionId=session_id)
        result["context"] = here.source

    def human(r: dict) -> str:
        if not r.get("agentId") and not r.get("sessionId"):
            return 'no current agent in this terminal; start with: pd begin "what you are doing"'
        lines = [f"agent:    {r['agentId']} ({r.get('liveness') or 'not registered'})"]
        if r.get("sessionId"):
            lines += [f"session:  {r['sessionId']} ({r.get('sessionStatus')}, phase {r.get('phase')})",
                      f"purpose:  {r.get('purpose')}",
                      f"identity: {r.get('identity') or '-'}",
                      f"notes:    {r.get('noteCount', 0)}",
                      f"files:    {', '.join(r.get('files') or []) or '-'}",
                      f"running:  {span(r.get('duration'))}"]
        else:
            lines.append("session:  none active")
        return "\n".join(lines)

    output(result, human, quiet=result.get("sessionId") or result.get("agentId") or "")


# -- notes ----------------------------------------------------------------------------------
@click.command()
@click.argument("text_arg", required=False, metavar="TEXT")
@click.option("--content", "--text", "content", help="The note's text (same as the positional; '-' reads stdin).")
@click.option("--type", "-t", "note_type", type=click.Choice(NOTE_TYPES), default="note", show_default=True)
@click.option("--session", help="Session id (default: this terminal's; else the agent's, else a new one).")
@click.option("--agent", help="Agent id (default: this terminal's).")
@output_options
def note(text_arg: str | None, content: str | None, note_type: str, session: str | None, agent: str | None) -> None:
    """Append an immutable note to the current session. `-q` prints the note id."""
    text = _text(text_arg, content, "content")
    here = current()
    session_id, agent_id = session or here.session_id, agent or here.agent_id
    if session_id:
        result = call("note.add", id=session_id, content=text, type=note_type, agentId=agent_id)
    else:
        result = call("note.quick", content=text, type=note_type, agentId=agent_id)
    output(result, lambda r: f"note {r['noteId']} ({r['type']}) added to {r['sessionId']}", quiet=result["noteId"])


def _notes_human(notes: list[dict]) -> str:
    if not notes:
        return "(no notes)"
    lines = []
    for n in notes:
        body = n["content"] if n["content"] is not None else "<does not decrypt: run pd notes --verify>"
        lines.append(f"[{when(n['createdAt'])}] #{n['id']} {n['type']} ({n['agentId'] or '-'}): {body}")
    return "\n".join(lines)


@click.command()
@click.option("--session", help="Notes of this session (default: this terminal's session).")
@click.option("--all", "all_", is_flag=True, help="Notes of every session, not just this terminal's.")
@click.option("--type", "-t", "note_type", type=click.Choice(NOTE_TYPES))
@click.option("--agent", help="Only notes written by this agent.")
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--verify", is_flag=True, help="Check the hash chain and encryption; exit 1 if anything is off.")
@output_options
def notes(session: str | None, all_: bool, note_type: str | None, agent: str | None, limit: int,
          verify: bool) -> None:
    """Read notes (oldest first), or --verify their tamper-evident chain."""
    session_id = None if all_ else (session or current().session_id)
    if verify:
        result = call("note.verify", sessionId=session_id)

        def human(r: dict) -> str:
            scope = f"session {session_id}" if session_id else "all sessions"
            if r["ok"]:
                return f"OK: {r['checked']} note(s) in {scope} verified: the chain is intact and every note authenticates"
            lines = [f"FAILED: {len(r['broken'])} problem(s) in {r['checked']} note(s) of {scope}"]
            for b in r["broken"]:
                target = f"note {b['noteId']}" if b["noteId"] is not None else "last note"
                lines.append(f"  {target} of session {b['sessionId']}: {', '.join(b['reasons'])}")
            return "\n".join(lines)

        output(result, human, quiet="ok" if result["ok"] else "failed")
        if not result["ok"]:
            sys.exit(1)
        return
    if session_id:
        result = call("session.notes", id=session_id, limit=limit, type=note_type)
    else:
        result = call("note.list", limit=limit, type=note_type, agentId=agent)
    output(result, lambda r: _notes_human(r["notes"]), quiet=result["count"])


# -- session ... ----------------------------------------------------------------------------
@click.group()
def session() -> None:
    """Sessions: start, get, update, end, phase, and file claims."""


@session.command("start")
@click.argument("purpose_arg", required=False, metavar="PURPOSE")
@click.option("--purpose")
@click.option("--identity", "-i")
@click.option("--agent", help="Agent id (default: this terminal's).")
@click.option("--files", "-f", multiple=True)
@click.option("--force", is_flag=True)
@click.option("--strict", is_flag=True)
@output_options
def session_start(purpose_arg: str | None, purpose: str | None, identity: str | None, agent: str | None,
                  files: tuple[str, ...], force: bool, strict: bool) -> None:
    """Start a session without registering an agent (pd begin does both)."""
    text = _text(purpose_arg, purpose, "purpose")
    here = current()
    result = call("session.start", purpose=text, identity=identity or ctxmod.default_identity(),
                  agentId=agent or here.agent_id, files=list(files) or None, force=force or None,
                  strict=strict or None)
    ctxmod.save(options().config.home, agent or here.agent_id, result["sessionId"], identity)
    output(result, lambda r: "\n".join([f"started session {r['sessionId']}"]
                                       + _files_human([f["path"] for f in r["session"]["files"]], r["conflicts"])),
           quiet=result["sessionId"])


def _session_human(s: dict) -> str:
    lines = [f"session {s['id']}: {s['purpose']}",
             f"  agent {s['agentId'] or '-'}, identity {s['identity'] or '-'}, status {s['status']}, "
             f"phase {s['phase']}",
             f"  started {when(s['createdAt'])}" + (f", ended {when(s['endedAt'])}" if s.get("endedAt") else ""),
             f"  notes {s['noteCount']}, files: {', '.join(f['path'] for f in s['files']) or '-'}"]
    return "\n".join(lines)


@session.command("get")
@click.argument("session_id", required=False)
@output_options
def session_get(session_id: str | None) -> None:
    """Show a session (default: this terminal's) with its latest notes."""
    result = call("session.get", id=need_session(session_id))
    output(result, lambda r: _session_human(r["session"]) + "\n" + _notes_human(r["notes"]),
           quiet=result["session"]["status"])


@session.command("update")
@click.argument("session_id", required=False)
@click.option("--purpose")
@click.option("--phase", type=click.Choice(PHASES))
@click.option("--identity")
@output_options
def session_update(session_id: str | None, purpose: str | None, phase: str | None, identity: str | None) -> None:
    """Change the purpose, phase or identity of a session."""
    result = call("session.update", id=need_session(session_id), purpose=purpose, phase=phase, identity=identity)
    output(result, lambda r: _session_human(r["session"]), quiet=result["sessionId"])


@session.command("end")
@click.argument("session_id", required=False)
@click.option("--note", "-m", help="A closing note.")
@click.option("--abandon", is_flag=True)
@output_options
def session_end(session_id: str | None, note: str | None, abandon: bool) -> None:
    """End a session, keeping the agent (pd done also unregisters it)."""
    sid = need_session(session_id)
    result = call("session.end", id=sid, note=note, status="abandoned" if abandon else "completed")
    if current().session_id == sid:
        here = current()
        ctxmod.save(options().config.home, here.agent_id, None, here.identity)
    output(result, lambda r: f"session {r['sessionId']} {r['status']}", quiet=result["status"])


@session.command("phase")
@click.argument("phase", type=click.Choice(PHASES))
@click.option("--session", help="Session id (default: this terminal's).")
@output_options
def session_phase(phase: str, session: str | None) -> None:
    """Move the session to PHASE."""
    result = call("session.phase", id=need_session(session), phase=phase)
    output(result, lambda r: f"{r['sessionId']}: {r['previousPhase']} -> {r['phase']}", quiet=result["phase"])


@session.group("files")
def session_files() -> None:
    """Advisory file claims of the current session."""


@session_files.command("claim")
@click.argument("paths", nargs=-1, required=True)
@click.option("--strict", is_flag=True, help="Refuse if another session holds one (and block others).")
@click.option("--ttl", help="Let the claims lapse after this long (30m, 2h).")
@click.option("--session", help="Session id (default: this terminal's).")
@output_options
def files_claim(paths: tuple[str, ...], strict: bool, ttl: str | None, session: str | None) -> None:
    """Claim PATHS (paths or globs relative to the project: src/auth/*.ts)."""
    result = call("session.claim_files", id=need_session(session), files=list(paths), strict=strict or None,
                  ttl=duration_ms(ttl))
    output(result, lambda r: "\n".join([f"claimed {len(r['claimed'])} path(s) for {r['sessionId']}"]
                                       + _files_human(r["claimed"], r["conflicts"])),
           quiet=len(result["conflicts"]))


@session_files.command("release")
@click.argument("paths", nargs=-1)
@click.option("--session", help="Session id (default: this terminal's).")
@output_options
def files_release(paths: tuple[str, ...], session: str | None) -> None:
    """Release PATHS (all of the session's claims when none are given)."""
    result = call("session.release_files", id=need_session(session), files=list(paths) or None)
    output(result, lambda r: f"released {len(r['released'])} claim(s): {', '.join(r['released']) or '-'}",
           quiet=len(result["released"]))


_FILE_COLUMNS = [("path", "PATH"), ("agentId", "AGENT"), ("sessionId", "SESSION"), ("project", "PROJECT"),
                 ("strict", "STRICT")]


@session_files.command("list")
@click.option("--all", "all_", is_flag=True, help="Every live claim, not just this session's.")
@click.option("--project", help="Every live claim of this project.")
@click.option("--session", help="Session id (default: this terminal's).")
@output_options
def files_list(all_: bool, project: str | None, session: str | None) -> None:
    """List file claims (this session's by default)."""
    sid = None if (all_ or project) else (session or current().session_id)
    result = call("files.list", sessionId=sid, project=project)
    output(result, lambda r: table(r["files"], _FILE_COLUMNS, "(no file claims)"), quiet=result["count"])


@session_files.command("who-owns")
@click.argument("path")
@click.option("--project", help="Only claims of this project.")
@output_options
def files_who_owns(path: str, project: str | None) -> None:
    """Which active sessions hold claims covering PATH."""
    result = call("files.who_owns", path=path, project=project)
    output(result, lambda r: table(r["owners"], _FILE_COLUMNS, f"nobody holds {r['path']}"), quiet=result["count"])


_SESSION_COLUMNS = [("id", "SESSION"), ("agentId", "AGENT"), ("identity", "IDENTITY"), ("status", "STATUS"),
                    ("phase", "PHASE"), ("noteCount", "NOTES"), ("purpose", "PURPOSE")]


@click.command()
@click.option("--all", "all_", is_flag=True, help="Ended sessions too (newest first).")
@click.option("--status", type=click.Choice(("active", "completed", "abandoned")))
@click.option("--agent", help="Sessions of this agent.")
@click.option("--project", help="Sessions of this project.")
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=100, show_default=True)
@output_options
def sessions(all_: bool, status: str | None, agent: str | None, project: str | None, limit: int) -> None:
    """List sessions (active ones unless --all or --status)."""
    result = call("session.list", status=status or (None if all_ else "active"), agentId=agent, project=project,
                  limit=limit)
    output(result, lambda r: table(r["sessions"], _SESSION_COLUMNS, "(no sessions)"), quiet=result["count"])


@click.command()
@click.option("--project", "-p", help="Only this project (default: everything).")
@click.option("--since", help="Only what happened in this last span (30m, 2h, 1d).")
@click.option("--limit", "-n", type=click.IntRange(1, 500), default=10, show_default=True)
@output_options
def sitrep(project: str | None, since: str | None, limit: int) -> None:
    """What happened recently: sessions, notes, dead agents, salvage, file conflicts."""
    since_ms = int(time.time() * 1000) - duration_ms(since) if since else None
    result = call("sitrep", project=project, since=since_ms, limit=limit)

    def human(r: dict) -> str:
        a = r["agents"]
        lines = [f"agents: {a['alive']} alive, {a['stale']} stale, {a['dead']} dead"
                 + (f"  (project {r['project']})" if r.get("project") else ""),
                 f"active sessions ({r['activeSessionCount']}):"]
        lines += [f"  {s['id']} {s['agentId'] or '-'} [{s['phase']}] {one_line(s['purpose'])}"
                  for s in r["activeSessions"]] or ["  (none)"]
        lines.append("recent notes:")
        lines += [f"  [{when(n['createdAt'])}] {n['agentId'] or '-'} {n['type']}: {one_line(n['content'])}"
                  for n in r["recentNotes"]] or ["  (none)"]
        lines.append("dead agents:")
        lines += [f"  {d['id']} died {when(d['diedAt'])} ({one_line(d['deadReason'])})" for d in r["deadAgents"]] \
            or ["  (none)"]
        lines.append(f"salvage ({r['salvageCount']} pending):")
        lines += [f"  {e['agentId']}: {one_line(e['purpose'])!r} -> pd salvage claim {e['agentId']}"
                  for e in r["salvage"]] or ["  (none)"]
        lines.append("file conflicts:")
        lines += [f"  {one_line(' vs '.join(c['paths']))} ({' / '.join(c['sessions'])})" for c in r["conflicts"]] \
            or ["  (none)"]
        return "\n".join(lines)

    output(result, human, quiet=result["salvageCount"])


# -- guard ----------------------------------------------------------------------------------
@click.group()
def guard() -> None:
    """A git pre-commit guard over file claims."""


def _git_dir() -> Path:
    try:
        out = subprocess.run(["git", "rev-parse", "--git-path", "hooks"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        fail("not inside a git repository (git rev-parse failed)")
    return Path(out)


@guard.command("install")
@click.option("--force", is_flag=True, help="Replace a pre-commit hook that pd did not write.")
def guard_install(force: bool) -> None:
    """Write .git/hooks/pre-commit: refuse commits touching strictly claimed files, warn on advisory ones."""
    hooks = _git_dir()
    hooks.mkdir(parents=True, exist_ok=True)
    hook = hooks / "pre-commit"
    if hook.exists() and GUARD_MARK not in hook.read_text(errors="replace") and not force:
        fail(f"{hook} exists and was not written by pd; pass --force to replace it")
    hook.write_text(
        "#!/bin/sh\n"
        f"{GUARD_MARK}\n"
        "# Passes silently when pd is missing or the daemon is down.\n"
        "command -v pd >/dev/null 2>&1 || exit 0\n"
        "PORT_DADDY_NO_AUTOSTART=1 exec pd guard check --staged\n"
    )
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    click.echo(f"installed {hook}")


@guard.command("uninstall")
def guard_uninstall() -> None:
    """Remove the pre-commit hook written by pd guard install."""
    hook = _git_dir() / "pre-commit"
    if hook.exists() and GUARD_MARK in hook.read_text(errors="replace"):
        hook.unlink()
        click.echo(f"removed {hook}")
    else:
        click.echo("no pd guard hook installed")


@guard.command("check")
@click.argument("paths", nargs=-1)
@click.option("--staged", is_flag=True, help="Check the files staged for commit (git diff --cached).")
@output_options
def guard_check(paths: tuple[str, ...], staged: bool) -> None:
    """Exit 1 if PATHS touch files another live session holds with --strict; warn for advisory claims."""
    files = list(paths)
    if staged:
        try:
            out = subprocess.run(["git", "diff", "--cached", "--name-only", "-z"], capture_output=True,
                                 timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return
        files += [p for p in out.decode(errors="replace").split("\0") if p]
    if not files:
        return
    here = current()
    try:
        client = Client(options().config, timeout=2.0)
        result = client.call("files.check", paths=files[:1000], sessionId=here.session_id, agentId=here.agent_id,
                             project=ctxmod.default_identity())
    except OpError:
        return  # daemon down or unreachable: never stand in the way of a commit
    except OSError:
        return
    if options().json:
        output(result)
    for c in result["conflicts"]:
        level = "refused" if c["strict"] else "warning"
        click.echo(f"pd guard: {level}: {c['path']} is claimed by {c['agentId'] or c['sessionId']} "
                   f"({c['purpose']!r}) as {c['heldPath']}", err=True)
    if result["blocked"]:
        click.echo("pd guard: commit refused (strict claims); coordinate with the holder or drop those files",
                   err=True)
        sys.exit(1)


def register(cli: click.Group) -> None:
    for cmd in (begin, done, whoami, note, notes, session, sessions, sitrep, guard):
        cli.add_command(cmd)
