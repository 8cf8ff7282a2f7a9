"""One-call lifecycle: begin, done, whoami, and the sitrep (SPEC.md §4, 3.7 sugar routes).

`begin` registers the agent, starts its session and claims its files as one step: every check
(purpose, identity, pid, an existing session, strict file conflicts) runs before anything is
changed, so a refused begin leaves nothing behind. `done` writes the closing note, ends the
session and unregisters the agent, also checked first.
"""

from __future__ import annotations

from typing import Any

from pdcore.errors import OpError
from pdcore.state.agents import new_agent_id
from pdcore.state.base import Ctx, Primitive
from pdcore.state.pathglob import overlaps
from pdcore.state.sessions import project_of


class Sugar(Primitive):
    name = "sugar"
    load_order = 60

    def begin(self, ctx: Ctx, purpose: str, identity: str | None = None, agentId: str | None = None,
              type: str | None = None, files: Any = None, force: bool = False, pid: int | None = None,
              name: str | None = None, strict: bool = False, metadata: dict | None = None) -> dict:
        root = self.root
        agents, sessions = root.agents, root.sessions
        # -- check everything ---------------------------------------------------------------
        text = purpose.strip()
        if not text:
            raise OpError("missing_field", "purpose must say what you are about to do", "purpose")
        paths = sessions.normalize_files(files) if files is not None else []
        agent_id = agentId or ctx.agent_id or new_agent_id()
        pid_start = agents.check_pid(pid)
        replace = sessions.check_start(agent_id, force)
        project = project_of(identity)
        conflicts: list[dict] = []
        if paths:
            conflicts = sessions.check_claim(project, paths, replace.id if replace else None, strict, len(paths))
        if agents.team is None:
            return self._begin(ctx, agent_id, pid, pid_start, name, type, identity, text, metadata, replace, paths,
                               strict, conflicts, project)
        # team mode: the files are judged team-wide first (compare-and-set), then the same steps
        agents.team.require()
        return sessions.team_claims.claim_then(
            ctx, project, sessions.new_id(), agent_id, paths, None, strict,
            lambda theirs, sid: self._begin(ctx, agent_id, pid, pid_start, name, type, identity, text, metadata,
                                            replace, paths, strict, conflicts + theirs, project, sid))

    def _begin(self, ctx: Ctx, agent_id: str, pid: int | None, pid_start: float | None, name: str | None,
               type: str | None, identity: str | None, text: str, metadata: dict | None, replace: Any,
               paths: list[str], strict: bool, conflicts: list[dict], project: str | None,
               session_id: str | None = None) -> dict:
        """begin's changes, once everything is checked (nothing here refuses)."""
        root = self.root
        agents, sessions = root.agents, root.sessions
        _, created = agents.apply_register(ctx, agent_id, pid, pid_start, name=name, type=type, identity=identity,
                                           purpose=text, metadata=metadata)
        session = sessions.apply_start(ctx, agent_id, identity, text, phase="in_progress", metadata=metadata,
                                       replace=replace, session_id=session_id)
        if paths:
            sessions.apply_claim(ctx, session, paths, None, strict)
        out: dict[str, Any] = {
            "agentId": agent_id,
            "sessionId": session.id,
            "identity": identity,
            "purpose": text,
            "agentRegistered": True,
            "agentCreated": created,
            "sessionStarted": True,
            "replacedSessionId": replace.id if replace else None,
        }
        if paths:  # 3.7 shapes: the claimed paths, conflicts apart
            out["fileClaims"] = paths
            out["fileConflicts"] = conflicts
        salvage = root.salvage.hint_for(project)
        if salvage is not None:  # 3.7: a sentence; the entries in `salvage`
            out["salvageHint"] = salvage["message"]
            out["salvage"] = salvage
        return out

    def done(self, ctx: Ctx, agentId: str | None = None, sessionId: str | None = None, note: str | None = None,
             status: str = "completed", noteType: str = "handoff", keepAgent: bool = False) -> dict:
        root = self.root
        agents, sessions, notes = root.agents, root.sessions, root.notes
        agent_id = agentId or ctx.agent_id
        if sessionId is not None:
            session = sessions.require_active(sessionId, "sessionId")
            agent_id = agent_id or session.agent_id
        else:
            session = sessions.active_for_agent(agent_id)
        if session is None:
            if agent_id is None:
                raise OpError("missing_field", "agentId or sessionId is required (or run pd begin first)", "agentId")
            known = "is registered" if agents.get_agent(agent_id) is not None else "is not registered"
            raise OpError("not_found", f"agent {agent_id} has no active session ({known}); pd begin starts one",
                          "agentId")
        if note is not None:
            notes.check_note(note, noteType, "note")
        if agents.team is not None:
            agents.team.require()
        # -- everything checked ---------------------------------------------------------------
        note_id = None
        if note is not None:
            note_id = notes.apply_add(ctx, session, note, noteType, agent_id)["noteId"]
        released = sessions.apply_end(ctx, session, status)
        locks = root.locks.release_agent(ctx, agent_id, "session ended") if agent_id else []
        unregistered = False
        if agent_id and not keepAgent:
            unregistered = agents.apply_unregister(ctx, agent_id)
        out = {"agentId": agent_id, "sessionId": session.id, "sessionStatus": status,
               "agentUnregistered": unregistered, "notesCount": session.note_count, "finalNote": note is not None,
               "noteId": note_id, "releasedFiles": released, "releasedLocks": locks}
        return out if agents.team is None else agents.team.acked(out)

    def whoami(self, ctx: Ctx, agentId: str | None = None, sessionId: str | None = None) -> dict:
        root = self.root
        agent_id = agentId or ctx.agent_id
        session = None
        if sessionId is not None:
            session = root.sessions.find(sessionId)
            if session is not None:
                agent_id = agent_id or session.agent_id
        elif agent_id:
            session = root.sessions.active_for_agent(agent_id)
        agent = root.agents.get_agent(agent_id) if agent_id else None
        team = root.agents.team
        if team is not None and agent is None and session is None:  # an agent of another host
            return self._whoami_remote(ctx, team, agent_id, sessionId)
        active = session is not None and session.active
        out = _whoami_hint(agent_id, active, agent is not None)
        return out | {
            "active": active,
            "agentId": agent_id,
            "agentRegistered": agent is not None,
            "liveness": root.agents.liveness_of(agent, ctx.now) if agent else None,
            "sessionId": session.id if session else None,
            "sessionStatus": session.status if session else None,
            "purpose": session.purpose if session else None,
            "identity": session.identity if session else (agent.identity if agent else None),
            "phase": session.phase if session else None,
            "noteCount": session.note_count if session else 0,
            "files": sorted(session.files) if session else [],
            "startedAt": session.created_at if session else None,
            "duration": ((session.ended_at or ctx.now) - session.created_at) if session else 0,
        }

    def _whoami_remote(self, ctx: Ctx, team: Any, agent_id: str | None, session_id: str | None) -> dict:
        """whoami answered from what another host published of its agent and session."""
        session = team.remote_session(session_id) if session_id else None
        agent_id = agent_id or (session or {}).get("agentId")
        agent = team.remote_agent(agent_id) if agent_id else None
        if session is None and agent is not None and agent.get("sessionId"):
            session = team.remote_session(agent["sessionId"])
        s = session or {}
        active = s.get("status") == "active"
        out = _whoami_hint(agent_id, active, agent is not None)
        return out | {
            "active": active, "agentId": agent_id, "agentRegistered": agent is not None,
            "liveness": agent.get("liveness") if agent else None, "sessionId": s.get("id"),
            "sessionStatus": s.get("status"), "purpose": s.get("purpose"),
            "identity": s.get("identity") or (agent or {}).get("identity"), "phase": s.get("phase"),
            "noteCount": s.get("noteCount") or 0, "files": sorted(f["path"] for f in s.get("files", [])),
            "startedAt": s.get("createdAt"),
            "duration": ((s.get("endedAt") or ctx.now) - s["createdAt"]) if s.get("createdAt") else 0,
            "host": (agent or s).get("host"),
        }

    def sitrep(self, ctx: Ctx, project: str | None = None, since: int | None = None, limit: int = 20) -> dict:
        """What happened recently: sessions, notes, dead agents, salvage, conflicts, activity."""
        root = self.root
        now = ctx.now
        active = [s for s in root.sessions.active.values() if project is None or s.project == project]
        active.sort(key=lambda s: s.updated_at, reverse=True)
        agents = root.agents
        dead = [a for a in agents.by_id.values() if a.dead_at is not None and (since is None or a.dead_at >= since)
                and (project is None or project_of(a.identity) == project)]
        dead.sort(key=lambda a: a.dead_at, reverse=True)
        live = [a for a in agents.by_id.values() if a.dead_at is None]
        liveness = [agents.liveness_of(a, now) for a in live]
        salvage = root.salvage.list(ctx, project=project, status="pending", limit=limit)
        activity = root.activity.list(ctx, limit=limit, since=since)
        return {
            "project": project,
            "generatedAt": now,
            "agents": {"alive": liveness.count("alive"), "stale": liveness.count("stale"), "dead": len(dead)},
            "activeSessions": [s.to_dict() for s in active[:limit]],
            "activeSessionCount": len(active),
            "recentNotes": root.notes.recent_everywhere(limit, project, since),
            "deadAgents": [agents.describe(a, now) for a in dead[:limit]],
            "salvage": salvage["entries"],
            "salvageCount": salvage["count"],
            "conflicts": self._conflicts(project, limit),
            "activity": activity["activities"],
        }

    def _conflicts(self, project: str | None, limit: int) -> list[dict]:
        """Overlapping claims held by different active sessions of one project."""
        out: list[dict] = []
        buckets = self.root.sessions.claims
        keys = [project] if project is not None else list(buckets)
        for key in keys:
            held = [(path, sid, c) for path, holders in buckets.get(key, {}).items() for sid, c in holders.items()]
            for i, (path_a, sid_a, claim_a) in enumerate(held):
                for path_b, sid_b, claim_b in held[i + 1:]:
                    if sid_a != sid_b and overlaps(path_a, path_b):
                        out.append({"project": key or None, "paths": [path_a, path_b], "sessions": [sid_a, sid_b],
                                    "since": max(claim_a.claimed_at, claim_b.claimed_at)})
                        if len(out) >= limit:
                            return out
        return out


PRIMITIVE = Sugar


def _whoami_hint(agent_id: str | None, active: bool, registered: bool) -> dict[str, Any]:
    """whoami's `hint` (3.7): what to do when there is no agent or no active session."""
    if not agent_id:
        return {"hint": "No agent id given (agentId, or X-Agent-Id over HTTP). Use pd begin to start a session."}
    if not active:
        return {"hint": f"Agent {agent_id} has no active session. Use pd begin to start one." if registered else
                        f"Agent {agent_id} is not registered. Use pd begin to start a session."}
    return {}
