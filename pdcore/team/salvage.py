"""The salvage queue shared by a team: one key per dead agent's session in the `salvage` bucket.

An entry is created once (create-if-absent, keyed by the session id: the host whose reaper saw
the agent die, or the one host that declared a vanished host's agents dead). Every step after
that (claim, complete, abandon, dismiss) is a compare-and-set on the entry's revision, so of two
hosts claiming the same entry at once exactly one wins. Lists answer from the watch's copy.
"""

from __future__ import annotations

import json
from typing import Any

import nats.js.errors

from pdcore.errors import OpError
from pdcore.state.base import Await, Ctx
from pdcore.team.link import TeamLink, team_unavailable
from pdcore.team.space import SALVAGE

OPEN = ("pending", "claimed")


def _dump(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class TeamSalvage:
    """The team side of pdcore.state.salvage.Salvage: the same operations, on the bucket."""

    def __init__(self, salvage: Any, link: TeamLink) -> None:
        self.salvage = salvage
        self.root = salvage.root
        self.link = link
        self.entries: dict[str, tuple[int, dict]] = {}  # session id -> (revision, entry), from the watch
        link.watch(SALVAGE.short, self._changed)

    def _changed(self, key: str, revision: int, value: bytes | None) -> None:
        if value is None:
            self.entries.pop(key, None)
            return
        try:
            self.entries[key] = (revision, json.loads(value))
        except ValueError:
            self.entries.pop(key, None)
        self.root.wake(("salvage", key))

    # -- entering the queue (from a flush, or a host declaring another's agents dead) -------------
    async def _create(self, entry: dict) -> None:
        try:
            await self.link.buckets[SALVAGE.short].create(entry["sessionId"], _dump(entry))
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # queued already (by this host before an outage, or by another host)

    async def create_from_row(self, row_id: int) -> None:
        from pdcore.state.salvage import _COLUMNS, SalvageEntry

        row = self.root.store.read_one(f"SELECT {_COLUMNS} FROM salvage WHERE id=?", (row_id,))
        if row is not None:
            await self._create({**SalvageEntry(row).to_dict(), "host": self.link.host_id})

    async def create_for_dead_session(self, session: dict, agent: dict, now: int, reason: str) -> None:
        files = sorted(f["path"] for f in session.get("files", []))
        await self._create({"id": None, "agentId": agent["id"], "sessionId": session["id"],
                            "identity": session.get("identity"), "project": session.get("project"),
                            "purpose": session.get("purpose"), "lastHeartbeat": agent.get("lastHeartbeat"),
                            "diedAt": now, "reason": reason, "files": files, "status": "pending", "claimedBy": None,
                            "claimedAt": None, "claimedSessionId": None, "endedAt": None, "updatedAt": now,
                            "host": agent.get("host"), "declaredBy": self.link.host_id})

    # -- reads ------------------------------------------------------------------------------------
    def _require(self) -> None:
        if not self.link.available:
            raise team_unavailable(self.link.last_error or "not connected")

    def _found(self, agent_id: str, status: str | None, session_id: str | None) -> list[tuple[int, dict]]:
        found = [(rev, e) for rev, e in self.entries.values() if e["agentId"] == agent_id
                 and (status is None or e["status"] == status) and (session_id is None or e["sessionId"] == session_id)]
        found.sort(key=lambda p: p[1]["diedAt"] or 0, reverse=True)
        return found

    def _view(self, entry: dict) -> dict:
        out = dict(entry)
        session = self.root.sessions.find(entry["sessionId"])
        out["notes"] = self.root.notes.recent(entry["sessionId"], self.root.config.salvage_note_count) \
            if session is not None else []
        out["noteCount"] = session.note_count if session is not None else \
            int((self.root.agents.team.sessions.get(entry["sessionId"], (0, {}))[1]).get("noteCount") or 0)
        return out

    def list(self, ctx: Ctx, project: str | None, status: str | None, agent_id: str | None, limit: int) -> dict:
        self._require()
        wanted = None if status == "all" else (OPEN if status is None else (status,))
        found = [e for _, e in self.entries.values() if (wanted is None or e["status"] in wanted)
                 and (project is None or e.get("project") == project)
                 and (agent_id is None or e["agentId"] == agent_id)]
        found.sort(key=lambda e: e["diedAt"] or 0, reverse=True)
        entries = [self._view(e) for e in found[:limit]]
        return {"agents": entries, "entries": entries, "count": len(found), "project": project}

    def hint_for(self, project: str | None, limit: int) -> dict | None:
        found = sorted((e for _, e in self.entries.values() if e["status"] == "pending" and e.get("project") == project),
                       key=lambda e: e["diedAt"] or 0, reverse=True)
        if project is None or not found:
            return None
        return {"count": len(found), "project": project,
                "entries": [{"agentId": e["agentId"], "sessionId": e["sessionId"], "purpose": e.get("purpose"),
                             "diedAt": e["diedAt"], "files": len(e.get("files", []))} for e in found[:limit]],
                "message": f"{len(found)} dead agent(s) of {project} left work to salvage: pd salvage --project {project}"}

    # -- steps (compare-and-set on the entry) -----------------------------------------------------
    async def _update(self, sid: str, revision: int, entry: dict) -> bool:
        try:
            await self.link.buckets[SALVAGE.short].update(sid, _dump(entry), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    def claim(self, ctx: Ctx, agent_id: str, claimer: str, session_id: str | None) -> Await:
        """Exactly one claimer across the team wins; the winner's session here inherits the files."""
        self._require()
        sessions = self.root.sessions
        pending = self._found(agent_id, "pending", session_id)
        if not pending:
            claimed = self._found(agent_id, "claimed", session_id)
            if claimed:
                e = claimed[0][1]
                raise OpError("already_claimed", f"the salvage of {agent_id} was claimed by {e['claimedBy']} at "
                              f"{e['claimedAt']}", "agentId", claimedBy=e["claimedBy"], claimedAt=e["claimedAt"])
            raise OpError("not_found", f"no salvage entry for agent {agent_id}; see pd salvage", "agentId")
        revision, entry = pending[0]
        session = sessions.active_for_agent(claimer)
        paths = [p for p in entry.get("files", []) if session is None or p not in session.files]
        sessions.check_claim(entry.get("project"), [], None, False, (len(session.files) if session else 0) + len(paths))
        new_sid = session.id if session is not None else sessions.new_id()
        won = {**entry, "status": "claimed", "claimedBy": claimer, "claimedAt": ctx.now,
               "claimedSessionId": new_sid, "updatedAt": ctx.now, "claimedOn": self.link.host_id}

        def then(ok: bool) -> Any:
            if not ok:
                latest = self.entries.get(entry["sessionId"], (0, {}))[1]
                raise OpError("already_claimed", f"the salvage of {agent_id} was claimed by "
                              f"{latest.get('claimedBy') or 'another agent'} first", "agentId",
                              claimedBy=latest.get("claimedBy"), claimedAt=latest.get("claimedAt"))
            mine = sessions.active_for_agent(claimer)
            created = mine is None
            if mine is None:
                mine = sessions.apply_start(ctx, claimer, entry.get("identity"),
                                            f"Salvage of {agent_id}: {entry.get('purpose')}", session_id=new_sid)
            conflicts = sessions.conflicts_for(entry.get("project"), paths, mine.id)
            if paths:
                sessions.apply_claim(ctx, mine, paths, None, False)
            self.root.activity.record(ctx, "salvage.claim", agent_id, actor=claimer, sessionId=mine.id)
            self._event(ctx, "salvage.claimed", won)
            result = {"agentId": agent_id, "claimedBy": claimer, "sessionId": mine.id, "sessionCreated": created,
                      "inheritedFiles": paths, "conflicts": conflicts, "entry": won}
            return self.root.agents.team.acked(result)

        return self.link.call(self._update, entry["sessionId"], revision, won, then=then)

    def _step(self, ctx: Ctx, agent_id: str, session_id: str | None, change: Any, answer: Any) -> Await:
        """Compare-and-set `change(entry)` on the newest open entry of the agent, retried when another host moved first."""
        self._require()
        found = self._found(agent_id, None, session_id)
        if not found:
            return answer(None)
        revision, entry = found[0]
        new = change(entry)

        def then(ok: bool) -> Any:
            if not ok:
                return self._step(ctx, agent_id, session_id, change, answer)
            return answer(new)

        return self.link.call(self._update, entry["sessionId"], revision, new, then=then)

    def complete(self, ctx: Ctx, agent_id: str, claimer: str, session_id: str | None) -> Any:
        def change(entry: dict) -> dict:
            self._check_claimed(entry, agent_id, claimer, "complete")
            return {**entry, "status": "completed", "endedAt": ctx.now, "updatedAt": ctx.now}

        def answer(entry: dict | None) -> dict:
            if entry is None:
                raise OpError("not_found", f"no salvage entry for agent {agent_id}; see pd salvage", "agentId")
            self._event(ctx, "salvage.completed", entry)
            return {"agentId": agent_id, "status": "completed", "entry": entry}

        return self._step(ctx, agent_id, session_id, change, answer)

    def abandon(self, ctx: Ctx, agent_id: str, claimer: str | None, session_id: str | None) -> Any:
        given_back: dict[str, str | None] = {}

        def change(entry: dict) -> dict:
            self._check_claimed(entry, agent_id, claimer, "abandon")
            given_back["session"] = entry.get("claimedSessionId")
            return {**entry, "status": "pending", "claimedBy": None, "claimedAt": None, "claimedSessionId": None,
                    "updatedAt": ctx.now}

        def answer(entry: dict | None) -> Any:
            if entry is None:
                return {"agentId": agent_id, "status": None, "abandoned": False, "releasedFiles": [], "entry": None}
            released: list[str] = []
            session = self.root.sessions.active.get(given_back.get("session") or "")
            if session is not None:  # the inherited claims go back with the work (when the claimer is here)
                released = self.root.sessions.drop_claims(session, list(entry.get("files", [])))
            self._event(ctx, "salvage.abandoned", entry)
            return self.root.agents.team.acked({"agentId": agent_id, "status": "pending", "abandoned": True,
                                                "releasedFiles": released, "entry": entry})

        return self._step(ctx, agent_id, session_id, change, answer)

    def dismiss(self, ctx: Ctx, agent_id: str, session_id: str | None) -> Any:
        def change(entry: dict) -> dict:
            return {**entry, "status": "dismissed", "endedAt": ctx.now, "updatedAt": ctx.now}

        def answer(entry: dict | None) -> dict:
            if entry is not None:
                self._event(ctx, "salvage.dismissed", entry)
            return {"agentId": agent_id, "dismissed": 1 if entry else 0, "status": "dismissed"}

        return self._step(ctx, agent_id, session_id, change, answer)

    @staticmethod
    def _check_claimed(entry: dict, agent_id: str, claimer: str | None, step: str) -> None:
        if entry["status"] != "claimed":
            raise OpError("invalid_state", f"the salvage of {agent_id} is {entry['status']}; claim it before you "
                          f"{step} it", "agentId")
        if claimer is not None and claimer != entry["claimedBy"]:
            raise OpError("not_owner", f"the salvage of {agent_id} is claimed by {entry['claimedBy']}, not {claimer}",
                          "claimedBy", claimedBy=entry["claimedBy"])

    def _event(self, ctx: Ctx, event: str, entry: dict) -> None:
        self.root.publish("pd:salvage", {"event": event, "agentId": entry["agentId"], "sessionId": entry["sessionId"],
                                         "project": entry.get("project"), "status": entry["status"],
                                         "claimedBy": entry.get("claimedBy")}, None, ctx.now)
