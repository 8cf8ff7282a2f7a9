"""The briefing (SPEC.md §14): a markdown snapshot of a project for an agent that just arrived.

Pure reading: it gathers what the other primitives already hold (services, live agents, active
sessions and their file claims, conflicts, salvage, locks, recent notes, integration signals,
changelog, harbors, recent activity) for one project, or for everything, and renders it as
markdown beside the same data as JSON. It changes nothing and keeps nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pdcore.state.base import Ctx, Primitive
from pdcore.state.projects import check_project, in_project, project_of

ACTIVITY_SCAN = 500  # recent activity records looked through for the project's own
LINE_MAX = 160  # characters of a note or summary shown on one markdown line


def stamp(ms: int | None) -> str:
    """Epoch ms as `2026-01-02 03:04:05Z`."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(now: int, ms: int | None) -> str:
    """How long before `now` (or after it, for deadlines): `42s ago`, `in 5m`."""
    if ms is None:
        return "-"
    delta = (now - ms) // 1000
    future = delta < 0
    delta = abs(delta)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if delta >= size:
            text = f"{delta // size}{unit}"
            break
    else:
        text = f"{delta}s"
    return f"in {text}" if future else f"{text} ago"


def one_line(text: Any, limit: int = LINE_MAX) -> str:
    """The first line of `text`, cut to `limit` characters, safe inside markdown lists."""
    if text is None:
        return ""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return line.replace("|", "\\|")


class Briefing(Primitive):
    name = "briefing"
    load_order = 80

    def get(self, ctx: Ctx, project: str | None = None, limit: int | None = None) -> dict:
        """The snapshot of `project` (None: every project) as data and as markdown."""
        project = check_project(project)
        limit = limit or self.config.briefing_limit_default
        data = self._gather(ctx, project, limit)
        data["markdown"] = self._render(data, ctx.now)
        return data

    # -- gathering -------------------------------------------------------------------------
    def _gather(self, ctx: Ctx, project: str | None, limit: int) -> dict:
        root, now = self.root, ctx.now
        trie = root.ports.trie
        if project is None:
            found = list(trie.values())
        else:
            found = [s for s in (trie.get(project),) if s is not None] + list(trie.find(project + ":*"))
        services = [{"id": s.id, "port": s.port, "pid": s.pid, "status": s.status, "cmd": s.cmd,
                     "lastSeen": s.updated_at} for s in sorted(found, key=lambda s: s.id)]

        sessions = [s for s in root.sessions.active.values() if project is None or s.project == project]
        sessions.sort(key=lambda s: s.updated_at, reverse=True)
        session_ids = {s.id for s in sessions}
        agents_prim = root.agents
        agent_ids = {s.agent_id for s in sessions if s.agent_id}
        agents = [a for a in agents_prim.by_id.values()
                  if agents_prim.liveness_of(a, now) != "dead"
                  and (project is None or a.id in agent_ids or project_of(a.identity) == project)]
        agents.sort(key=lambda a: a.last_heartbeat, reverse=True)
        agent_ids |= {a.id for a in agents}
        sitrep = root.sugar.sitrep(ctx, project=project, limit=limit)
        # the activity of the project's dead agents and their sessions belongs to its story too
        related_agents = agent_ids | {e["agentId"] for e in sitrep["salvage"]} | {d["id"] for d in sitrep["deadAgents"]}
        related_sessions = session_ids | {e["sessionId"] for e in sitrep["salvage"]}
        claims = root.sessions.files_list(ctx, project=project, limit=1000)

        locks = [lk for lk in root.locks.locks.values()
                 if (lk.expires_at is None or lk.expires_at > now)
                 and (project is None or in_project(lk.name, project) or lk.owner in agent_ids
                      or lk.agent_id in agent_ids)]
        locks.sort(key=lambda lk: lk.name)
        signals = root.integration.list(ctx, project=project, limit=limit)
        harbors = [h for h in root.harbors.harbors.values()
                   if (h.expires_at is None or h.expires_at > now) and in_project(h.name, project)]
        harbors.sort(key=lambda h: h.name)
        tuple_ctx = Ctx(now, source="internal")
        return {
            "project": project,
            "generatedAt": now,
            "services": services,
            "agents": [{"id": a.id, "name": a.name, "type": a.type, "identity": a.identity, "purpose": a.purpose,
                        "liveness": agents_prim.liveness_of(a, now), "lastHeartbeat": a.last_heartbeat,
                        "sessionId": root.sessions.active_by_agent.get(a.id)} for a in agents[:limit]],
            "agentCount": len(agents),
            "activeSessions": [{"id": s.id, "agentId": s.agent_id, "identity": s.identity, "purpose": s.purpose,
                                "phase": s.phase, "createdAt": s.created_at, "updatedAt": s.updated_at,
                                "noteCount": s.note_count, "files": sorted(s.files)} for s in sessions[:limit]],
            "activeSessionCount": len(sessions),
            "fileClaims": claims["files"],
            "fileClaimCount": claims["count"],
            "conflicts": sitrep["conflicts"],
            "salvage": [{"agentId": e["agentId"], "sessionId": e["sessionId"], "identity": e["identity"],
                         "purpose": e["purpose"], "diedAt": e["diedAt"], "reason": e["reason"], "files": e["files"],
                         "noteCount": e["noteCount"]} for e in sitrep["salvage"]],
            "salvageCount": sitrep["salvageCount"],
            "deadAgents": [{"id": d["id"], "diedAt": d["diedAt"], "deadReason": d["deadReason"]}
                           for d in sitrep["deadAgents"]],
            "locks": [lk.to_dict() for lk in locks],
            "recentNotes": [{"id": n["id"], "sessionId": n["sessionId"], "agentId": n["agentId"], "type": n["type"],
                             "createdAt": n["createdAt"], "content": n["content"]}
                            for n in reversed(sitrep["recentNotes"])],
            "integration": signals["signals"],
            "changelog": root.changelog.recent(project, limit),
            "harbors": [{"name": h.name, "memberCount": len(h.members), "capabilities": h.capabilities,
                         "tuples": root.tuples.count(tuple_ctx, harbor=h.name)["count"]} for h in harbors],
            "activity": self._activity(ctx, project, related_sessions, related_agents, limit),
        }

    def _activity(self, ctx: Ctx, project: str | None, session_ids: set[str], agent_ids: set[str],
                  limit: int) -> list[dict]:
        """The newest activity records that concern the project (its identities, sessions or agents)."""
        if project is None:
            return self.root.activity.list(ctx, limit=limit)["activities"]
        out = []
        for rec in self.root.activity.list(ctx, limit=ACTIVITY_SCAN)["activities"]:
            target, details = rec["target"], rec["details"]
            if (in_project(target, project) or target in session_ids or rec["agentId"] in agent_ids
                    or in_project(details.get("identity"), project) or details.get("sessionId") in session_ids):
                out.append(rec)
                if len(out) >= limit:
                    break
        return out

    # -- rendering -------------------------------------------------------------------------
    def _render(self, d: dict, now: int) -> str:
        project = d["project"]
        lines = [f"# Briefing: {project or 'all projects'}",
                 f"Generated {stamp(now)} by Port Daddy. Everything below is live daemon state.", ""]
        liveness = [a["liveness"] for a in d["agents"]]
        ports = ", ".join(f"{s['id']} → {s['port']}" for s in d["services"][:8])
        if len(d["services"]) > 8:
            ports += " …"
        lines += ["## At a glance",
                  f"- **Services:** {len(d['services'])}" + (f" ({ports})" if ports else ""),
                  f"- **Agents:** {d['agentCount']} ({liveness.count('alive')} alive, {liveness.count('stale')} stale)",
                  f"- **Active sessions:** {d['activeSessionCount']}, holding {d['fileClaimCount']} file claim(s)",
                  f"- **File conflicts:** {len(d['conflicts'])}",
                  f"- **Salvage pending:** {d['salvageCount']}",
                  f"- **Locks held:** {len(d['locks'])}", ""]

        def section(title: str, items: list[str], empty: str | None = None) -> None:
            if items or empty:
                lines.append(f"## {title}")
                lines.extend(items or [empty])  # type: ignore[list-item]
                lines.append("")

        section("Services", [f"- `{s['id']}` → port {s['port']}" + (f", pid {s['pid']}" if s["pid"] else "")
                             + (f" ({one_line(s['cmd'], 60)})" if s["cmd"] else "") for s in d["services"]],
                "- none claimed")
        section("Agents", [f"- `{a['id']}` {a['liveness']}, last heartbeat {ago(now, a['lastHeartbeat'])}"
                           + (f": {one_line(a['purpose'])}" if a["purpose"] else "") for a in d["agents"]],
                "- nobody else is registered")
        sessions = []
        for s in d["activeSessions"]:
            sessions.append(f"- `{s['id']}` by `{s['agentId'] or '-'}` [{s['phase']}] \"{one_line(s['purpose'])}\" "
                            f"since {ago(now, s['createdAt'])}, {s['noteCount']} note(s)")
            if s["files"]:
                shown = ", ".join(f"`{f}`" for f in s["files"][:10])
                sessions.append(f"  - files: {shown}{' …' if len(s['files']) > 10 else ''}")
        section("Active sessions", sessions, "- none")
        section("File conflicts", [f"- {' vs '.join('`' + p + '`' for p in c['paths'])} "
                                   f"({' / '.join(c['sessions'])})" for c in d["conflicts"]])
        section("Salvage: dead agents' unfinished work",
                [f"- `{e['agentId']}` died {ago(now, e['diedAt'])}: \"{one_line(e['purpose'])}\" "
                 f"({len(e['files'])} file(s), {e['noteCount']} note(s)) → `pd salvage claim {e['agentId']}`"
                 for e in d["salvage"]])
        section("Locks", [f"- `{lk['name']}` held by `{lk['owner']}` (fence {lk['fence']}"
                          + (f", expires {ago(now, lk['expiresAt'])}" if lk["expiresAt"] else ", connection-bound")
                          + ")" for lk in d["locks"]])
        section("Recent notes", [f"- {ago(now, n['createdAt'])} `{n['agentId'] or '-'}` {n['type']}: "
                                 f"{one_line(n['content'])}" for n in d["recentNotes"]])
        section("Integration signals", [f"- `{s['identity']}` {s['type']}"
                                        + (f": {one_line(s['message'])}" if s["message"] else "")
                                        + f" ({ago(now, s['createdAt'])})" for s in d["integration"]])
        section("Changelog", [f"- **[{c['type'].upper()}]** {one_line(c['summary'])} (`{c['identity'] or '-'}`, "
                              f"{ago(now, c['createdAt'])})" for c in d["changelog"]])
        section("Harbors", [f"- `{h['name']}`: {h['memberCount']} member(s), {h['tuples']} tuple(s)"
                            for h in d["harbors"]])
        section("Recent activity", [f"- {ago(now, a['timestamp'])} {a['type']} `{a['target'] or '-'}`"
                                    + (f" by `{a['agentId']}`" if a["agentId"] else "") for a in d["activity"]])
        hints = []
        if d["salvageCount"]:
            hints.append(f"- Dead agents left work: `pd salvage{f' --project {project}' if project else ''}`, "
                         "then `pd salvage claim AGENT` instead of starting over.")
        if d["fileClaims"]:
            hints.append("- Files are claimed: check the sessions above before editing; claim yours with "
                         "`pd session files claim PATH`.")
        hints.append(f"- Start your own session: `pd begin \"what you will do\"{f' --identity {project}' if project else ''}`.")
        section("Next steps", hints)
        return "\n".join(lines).rstrip() + "\n"


PRIMITIVE = Briefing
