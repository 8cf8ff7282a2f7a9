"""Changelog entries (SPEC.md §14): what changed, said once, at the most specific identity.

An agent reports a change at `project:stack:context` (or less); listing by an identity also
lists its children (`myapp` lists `myapp:api` and `myapp:api:auth`), which is the 3.7 rollup.
When the caller names no identity, the entry takes the identity of the agent's active session
(else the agent's own). Entries are durable, newest first, bounded by `changelog_max`.
"""

from __future__ import annotations

import json
from typing import Any

from pdcore.errors import OpError
from pdcore.state.base import Ctx, Primitive

CHANNEL = "pd:changelog"
_COLUMNS = "id, identity, project, session_id, agent_id, type, summary, description, metadata, created_at"


def ancestors(identity: str | None) -> list[str]:
    """`myapp:api:auth` -> [`myapp:api`, `myapp`]: where the entry rolls up to."""
    if not identity:
        return []
    parts = identity.split(":")
    return [":".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]


def _entry(r: tuple) -> dict:
    return {"id": r[0], "identity": r[1], "project": r[2], "sessionId": r[3], "agentId": r[4], "type": r[5],
            "summary": r[6], "description": r[7], "metadata": json.loads(r[8]) if r[8] else None,
            "createdAt": r[9]}


class Changelog(Primitive):
    name = "changelog"
    load_order = 50

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self._since_prune = 0

    def add(self, ctx: Ctx, summary: str, identity: str | None = None, type: str = "feature",
            description: str | None = None, agentId: str | None = None, sessionId: str | None = None,
            metadata: dict | None = None) -> dict:
        """Record one change; identity and session default to the agent's active session."""
        text = summary.strip()
        if not text:
            raise OpError("missing_field", "summary must say in one line what changed", "summary")
        agent_id = agentId or ctx.agent_id
        sessions = self.root.sessions
        session = sessions.require(sessionId, "sessionId") if sessionId else sessions.active_for_agent(agent_id)
        if identity is None:
            agent = self.root.agents.get_agent(agent_id) if agent_id else None
            identity = (session.identity if session else None) or (agent.identity if agent else None)
        project = identity.split(":", 1)[0] if identity else None
        session_id = session.id if session else None
        cur = self.store.write(
            f"INSERT INTO changelog ({_COLUMNS}) VALUES (NULL,?,?,?,?,?,?,?,?,?)",
            (identity, project, session_id, agent_id, type, text, description,
             json.dumps(metadata) if metadata is not None else None, ctx.now),
        )
        self._prune()
        entry = {"id": cur.lastrowid, "identity": identity, "project": project, "sessionId": session_id,
                 "agentId": agent_id, "type": type, "summary": text, "description": description,
                 "metadata": metadata, "createdAt": ctx.now}
        self.root.activity.record(ctx, "changelog.add", identity, actor=agent_id, entryId=entry["id"],
                                  changeType=type)
        self.root.publish(CHANNEL, {"event": "changelog.added", "id": entry["id"], "identity": identity,
                                    "type": type, "summary": text, "agentId": agent_id}, agent_id, ctx.now)
        return {"id": entry["id"], "identity": identity, "ancestors": ancestors(identity), "entry": entry,
                "message": f"changelog entry {entry['id']} recorded" + (f" for {identity}" if identity else "")}

    def _prune(self) -> None:
        self._since_prune += 1
        if self._since_prune >= max(100, self.config.changelog_max // 10):
            self._since_prune = 0
            self.store.write("DELETE FROM changelog WHERE id <= (SELECT MAX(id) FROM changelog) - ?",
                             (self.config.changelog_max,))

    def list(self, ctx: Ctx, project: str | None = None, identity: str | None = None, agentId: str | None = None,
             sessionId: str | None = None, type: str | None = None, since: int | None = None,
             before: int | None = None, limit: int = 50) -> dict:
        """Entries newest first; `identity` also matches its children (`myapp` -> `myapp:api:auth`)."""
        where, params = self._filters(project, identity, agentId, sessionId, type, since, before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.store.read(f"SELECT {_COLUMNS} FROM changelog{clause} ORDER BY id DESC LIMIT ?", [*params, limit])
        entries = [_entry(r) for r in rows]
        return {"entries": entries, "count": len(entries), "project": project, "identity": identity,
                "nextBefore": entries[-1]["id"] if len(entries) == limit else None}

    def recent(self, project: str | None, limit: int) -> list[dict]:
        """The newest entries of a project (or of all), for the briefing."""
        where, params = self._filters(project, None, None, None, None, None, None)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.store.read(f"SELECT {_COLUMNS} FROM changelog{clause} ORDER BY id DESC LIMIT ?", [*params, limit])
        return [_entry(r) for r in rows]

    @staticmethod
    def _filters(project: str | None, identity: str | None, agent_id: str | None, session_id: str | None,
                 type: str | None, since: int | None, before: int | None) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if project is not None:
            where.append("project = ?")
            params.append(project)
        if identity is not None:
            # the identity itself or a child: 'x:' <= identity < 'x;' (';' follows ':'), no LIKE escaping
            where.append("(identity = ? OR (identity >= ? AND identity < ?))")
            params += [identity, identity + ":", identity + ";"]
        for column, value in (("agent_id", agent_id), ("session_id", session_id), ("type", type)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        return where, params


PRIMITIVE = Changelog
