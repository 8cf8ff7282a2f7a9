"""The salvage queue: the unfinished work of dead agents (SPEC.md §5).

When the reaper declares an agent dead (`on_agent_dead`), its active session ends as
`abandoned` and an entry is queued with the session's purpose, identity and file claims.
Another agent claims it (exactly one claimer wins: the core runs one operation at a time and
the first claim flips the entry to `claimed`), its session inherits the files, and it later
completes or abandons it (back to `pending`); anyone may dismiss it. Entries keep note ids
only: note bodies are decrypted from the notes table when an entry is shown.
"""

from __future__ import annotations

import json
from typing import Any

from pdcore.errors import OpError
from pdcore.state.base import Ctx, Primitive

CHANNEL = "pd:salvage"
OPEN = ("pending", "claimed")

_COLUMNS = ("id, agent_id, session_id, identity, project, purpose, last_heartbeat, died_at, reason, files, status, "
            "claimed_by, claimed_at, claimed_session, ended_at, updated_at")


class SalvageEntry:
    __slots__ = ("id", "agent_id", "session_id", "identity", "project", "purpose", "last_heartbeat", "died_at",
                 "reason", "files", "status", "claimed_by", "claimed_at", "claimed_session", "ended_at", "updated_at")

    def __init__(self, row: tuple) -> None:
        for name, value in zip(self.__slots__, row, strict=True):
            setattr(self, name, value)
        self.files = json.loads(self.files) if isinstance(self.files, str) else (self.files or [])

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "agentId": self.agent_id,
            "sessionId": self.session_id,
            "identity": self.identity,
            "project": self.project,
            "purpose": self.purpose,
            "lastHeartbeat": self.last_heartbeat,
            "diedAt": self.died_at,
            "reason": self.reason,
            "files": list(self.files),
            "status": self.status,
            "claimedBy": self.claimed_by,
            "claimedAt": self.claimed_at,
            "claimedSessionId": self.claimed_session,
            "endedAt": self.ended_at,
            "updatedAt": self.updated_at,
        }


class Salvage(Primitive):
    name = "salvage"
    load_order = 40

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.open: dict[int, SalvageEntry] = {}
        self.team: Any = None  # TeamSalvage in team mode: the queue is the team's bucket; this table its outbox

    def on_team_link(self, link: Any) -> None:
        """Team mode (docs/team.md): entries go to the space's `salvage` bucket; every step is compare-and-set."""
        from pdcore.team.salvage import TeamSalvage

        self.team = TeamSalvage(self, link)

    def load(self, now: int) -> None:
        for row in self.store.read(f"SELECT {_COLUMNS} FROM salvage WHERE status IN ('pending', 'claimed')"):
            entry = SalvageEntry(row)
            self.open[entry.id] = entry

    def counts(self) -> dict[str, int]:
        pending = sum(1 for e in self.open.values() if e.status == "pending")
        return {"salvage_pending": pending, "salvage_claimed": len(self.open) - pending}

    # -- entering the queue ----------------------------------------------------------------
    def on_agent_dead(self, ctx: Ctx, agent_id: str, pid: int | None) -> None:
        session = self.root.sessions.active_for_agent(agent_id)
        if session is not None:
            agent = self.root.agents.get_agent(agent_id)
            reason = (agent.dead_reason if agent else None) or "agent dead"
            self.enqueue(ctx, session, reason, agent.last_heartbeat if agent else None)

    def enqueue(self, ctx: Ctx, session: Any, reason: str, last_heartbeat: int | None = None) -> SalvageEntry:
        """Move an active session into the queue (the reaper; the arbiter's man-overboard)."""
        files = self.root.sessions.take_files_for_salvage(ctx, session)
        cur = self.store.write(
            "INSERT INTO salvage (agent_id, session_id, identity, project, purpose, last_heartbeat, died_at, reason, "
            "files, status, updated_at) VALUES (?,?,?,?,?,?,?,?,?,'pending',?)",
            (session.agent_id, session.id, session.identity, session.project, session.purpose, last_heartbeat,
             ctx.now, reason, json.dumps(files), ctx.now),
        )
        entry = SalvageEntry((cur.lastrowid, session.agent_id, session.id, session.identity, session.project,
                              session.purpose, last_heartbeat, ctx.now, reason, files, "pending", None, None, None,
                              None, ctx.now))
        self.open[entry.id] = entry
        if self.team is not None:
            self.root.agents.team.salvage_queued(entry.id)
        self.root.activity.record(ctx, "salvage.queued", session.agent_id, actor=session.agent_id,
                                  sessionId=session.id, reason=reason, files=len(files))
        self._event(ctx, "salvage.queued", entry)
        return entry

    def hint_for(self, project: str | None, limit: int = 5) -> dict | None:
        """What `pd begin` says when dead agents of the project left work behind."""
        if project is None:
            return None
        if self.team is not None:
            return self.team.hint_for(project, limit)
        found = sorted((e for e in self.open.values() if e.status == "pending" and e.project == project),
                       key=lambda e: e.died_at, reverse=True)
        if not found:
            return None
        return {
            "count": len(found),
            "project": project,
            "entries": [{"agentId": e.agent_id, "sessionId": e.session_id, "purpose": e.purpose,
                         "diedAt": e.died_at, "files": len(e.files)} for e in found[:limit]],
            "message": f"{len(found)} dead agent(s) of {project} left work to salvage: pd salvage --project {project}",
        }

    # -- helpers ---------------------------------------------------------------------------
    def _view(self, entry: SalvageEntry) -> dict:
        out = entry.to_dict()
        out["notes"] = self.root.notes.recent(entry.session_id, self.config.salvage_note_count)
        session = self.root.sessions.find(entry.session_id)
        out["noteCount"] = session.note_count if session else len(out["notes"])
        return out

    def _event(self, ctx: Ctx, event: str, entry: SalvageEntry) -> None:
        self.root.publish(CHANNEL, {"event": event, "agentId": entry.agent_id, "sessionId": entry.session_id,
                                    "project": entry.project, "status": entry.status, "claimedBy": entry.claimed_by},
                          None, ctx.now)

    def _save(self, entry: SalvageEntry) -> None:
        self.store.write("UPDATE salvage SET status=?, claimed_by=?, claimed_at=?, claimed_session=?, ended_at=?, "
                         "updated_at=? WHERE id=?",
                         (entry.status, entry.claimed_by, entry.claimed_at, entry.claimed_session, entry.ended_at,
                          entry.updated_at, entry.id))
        if entry.status not in OPEN:
            self.open.pop(entry.id, None)

    def _entries_of(self, agent_id: str, status: str | None, session_id: str | None) -> list[SalvageEntry]:
        found = [e for e in self.open.values() if e.agent_id == agent_id and (status is None or e.status == status)
                 and (session_id is None or e.session_id == session_id)]
        found.sort(key=lambda e: e.id, reverse=True)
        return found

    def _require_open(self, agent_id: str, session_id: str | None) -> None:
        if not self._entries_of(agent_id, None, session_id):
            raise OpError("not_found", f"no salvage entry for agent {agent_id}; see pd salvage", "agentId")

    # -- operations ------------------------------------------------------------------------
    def list(self, ctx: Ctx, project: str | None = None, status: str | None = None, agentId: str | None = None,
             limit: int = 100) -> dict:
        if self.team is not None:
            return self.team.list(ctx, project, status, agentId, limit)
        if status is None or status in OPEN:
            wanted = OPEN if status is None else (status,)
            found = [e for e in self.open.values() if e.status in wanted
                     and (project is None or e.project == project) and (agentId is None or e.agent_id == agentId)]
            found.sort(key=lambda e: e.died_at, reverse=True)
            total = len(found)
        else:
            where, params = [], []
            for column, value in (("status", None if status == "all" else status), ("project", project),
                                  ("agent_id", agentId)):
                if value is not None:
                    where.append(f"{column}=?")
                    params.append(value)
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            total = self.store.read_one(f"SELECT COUNT(*) FROM salvage{clause}", params)[0]
            rows = self.store.read(f"SELECT {_COLUMNS} FROM salvage{clause} ORDER BY id DESC LIMIT ?", [*params, limit])
            found = [self.open.get(r[0]) or SalvageEntry(r) for r in rows]
        entries = [self._view(e) for e in found[:limit]]
        return {"agents": entries, "entries": entries, "count": total, "project": project}  # agents: 3.7's name

    def pending(self, ctx: Ctx, project: str | None = None, limit: int = 100) -> dict:
        return self.list(ctx, project=project, status="pending", limit=limit)

    def claim(self, ctx: Ctx, agentId: str, claimedBy: str | None = None, sessionId: str | None = None,
              newAgentId: str | None = None, requestId: str | None = None) -> dict:
        """Exactly one claimer wins; with `requestId`, a repeat of the winning claim gets its reply again."""
        # not ctx.agent_id: on these routes the payload's agentId names the dead agent
        claimer = claimedBy or newAgentId  # newAgentId: 3.7's name of the claimer
        if not claimer:
            raise OpError("missing_field", "claimedBy (or newAgentId: the agent taking over the work) is required",
                          "claimedBy")
        asked = {"agentId": agentId, "claimedBy": claimer, "sessionId": sessionId}
        if self.team is not None:  # the take record travels in the team's entry (pdcore/team/salvage.py)
            return self.team.claim(ctx, agentId, claimer, sessionId, requestId, asked)
        repeat = self.root.take_records.recall(requestId, "salvage.claim", asked)
        if repeat is not None:
            return repeat
        pending = self._entries_of(agentId, "pending", sessionId)
        if not pending:
            claimed = self._entries_of(agentId, "claimed", sessionId)
            if claimed:
                e = claimed[0]
                raise OpError("already_claimed", f"the salvage of {agentId} was claimed by {e.claimed_by} at "
                              f"{e.claimed_at}", "agentId", claimedBy=e.claimed_by, claimedAt=e.claimed_at)
            self._require_open(agentId, sessionId)
        entry = pending[0]
        sessions = self.root.sessions
        session = sessions.active_for_agent(claimer)
        paths = [p for p in entry.files if session is None or p not in session.files]
        held = len(session.files) if session else 0
        sessions.check_claim(entry.project, [], None, False, held + len(paths))
        conflicts = sessions.conflicts_for(entry.project, paths, session.id if session else None)
        # everything is checked: change state
        created = session is None
        if session is None:
            session = sessions.apply_start(ctx, claimer, entry.identity, f"Salvage of {agentId}: {entry.purpose}")
        if paths:
            sessions.apply_claim(ctx, session, paths, None, False)
        entry.status = "claimed"
        entry.claimed_by = claimer
        entry.claimed_at = entry.updated_at = ctx.now
        entry.claimed_session = session.id
        self._save(entry)
        self.root.activity.record(ctx, "salvage.claim", agentId, actor=claimer, sessionId=session.id)
        self._event(ctx, "salvage.claimed", entry)
        result = {"agentId": agentId, "claimedBy": claimer, "sessionId": session.id, "sessionCreated": created,
                  "inheritedFiles": paths, "conflicts": conflicts, "entry": self._view(entry)}
        self.root.take_records.remember(ctx, requestId, "salvage.claim", asked, result)
        return result

    def _claimed_entry(self, agent_id: str, claimed_by: str | None, session_id: str | None, step: str) -> SalvageEntry:
        claimed = self._entries_of(agent_id, "claimed", session_id)
        if not claimed:
            self._require_open(agent_id, session_id)
            raise OpError("invalid_state", f"the salvage of {agent_id} is pending; claim it before you {step} it",
                          "agentId")
        entry = claimed[0]
        if claimed_by is not None and claimed_by != entry.claimed_by:
            raise OpError("not_owner", f"the salvage of {agent_id} is claimed by {entry.claimed_by}, not {claimed_by}",
                          "claimedBy", claimedBy=entry.claimed_by)
        return entry

    def complete(self, ctx: Ctx, agentId: str, claimedBy: str | None = None, sessionId: str | None = None,
                 newAgentId: str | None = None) -> dict:
        """The claimer says the work is done; it must name itself (newAgentId, as 3.7, or claimedBy)."""
        claimer = claimedBy or newAgentId
        if not claimer:
            raise OpError("missing_field", "newAgentId (the agent that carried the work on) is required", "newAgentId")
        if self.team is not None:
            return self.team.complete(ctx, agentId, claimer, sessionId)
        entry = self._claimed_entry(agentId, claimer, sessionId, "complete")
        entry.status = "completed"
        entry.ended_at = entry.updated_at = ctx.now
        self._save(entry)
        self.root.activity.record(ctx, "salvage.complete", agentId, actor=entry.claimed_by)
        self._event(ctx, "salvage.completed", entry)
        return {"agentId": agentId, "status": "completed", "entry": entry.to_dict()}

    def abandon(self, ctx: Ctx, agentId: str, claimedBy: str | None = None, sessionId: str | None = None) -> dict:
        """Give the work back; an agent with no entry at all is already in that state (idempotent, as 3.7)."""
        if self.team is not None:
            return self.team.abandon(ctx, agentId, claimedBy, sessionId)
        if not self._entries_of(agentId, None, sessionId):
            return {"agentId": agentId, "status": None, "abandoned": False, "releasedFiles": [], "entry": None}
        entry = self._claimed_entry(agentId, claimedBy, sessionId, "abandon")
        claimer, claimer_session = entry.claimed_by, entry.claimed_session
        released: list[str] = []
        session = self.root.sessions.active.get(claimer_session) if claimer_session else None
        if session is not None:  # the inherited claims go back with the work
            released = self.root.sessions.drop_claims(session, list(entry.files))
        entry.status = "pending"
        entry.claimed_by = entry.claimed_at = entry.claimed_session = None
        entry.updated_at = ctx.now
        self._save(entry)
        self.root.activity.record(ctx, "salvage.abandon", agentId, actor=claimer)
        self._event(ctx, "salvage.abandoned", entry)
        return {"agentId": agentId, "status": "pending", "abandoned": True, "releasedFiles": released,
                "entry": entry.to_dict()}

    def dismiss(self, ctx: Ctx, agentId: str, sessionId: str | None = None) -> dict:
        if self.team is not None:
            return self.team.dismiss(ctx, agentId, sessionId)
        found = self._entries_of(agentId, None, sessionId)  # none: nothing to drop (idempotent, as 3.7)
        for entry in found:
            entry.status = "dismissed"
            entry.ended_at = entry.updated_at = ctx.now
            self._save(entry)
            self._event(ctx, "salvage.dismissed", entry)
        self.root.activity.record(ctx, "salvage.dismiss", agentId, count=len(found))
        return {"agentId": agentId, "dismissed": len(found), "status": "dismissed"}


PRIMITIVE = Salvage
