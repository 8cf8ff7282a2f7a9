"""The salvage queue shared by a team: one key per dead agent's session in the `salvage` bucket.

An entry is created once (create-if-absent, keyed by the session id: the host whose reaper saw
the agent die, or the one host that declared a vanished host's agents dead). Every step after
that (claim, complete, abandon, dismiss) is a compare-and-set on the entry's revision, so of two
hosts claiming the same entry at once exactly one wins. Lists answer from the watch's copy.

A claim with a `requestId` writes its take record into the entry in that same compare-and-set
(`claim`: the id, a fingerprint of the arguments, the answer's fields, until when it answers).
Every host's watch indexes it (link.takes, shared with the tuple takes), so a repeat with the id
gets the first answer on any host whose copy has the claim. A host whose copy is older sends its
compare-and-set on an older revision: it fails, the host reads the entry back, finds its own
requestId there and answers the repeat, so neither a reply lost on the way back nor a stale copy
makes a repeat claim again or answer already_claimed. A repeat on the host that made the claim
also finishes the claim's local side (the claimer's session and its inherited files) when the
first try ended before it (its caller gone, the core killed).
"""

from __future__ import annotations

import json
from typing import Any

import nats.js.errors

from pdcore.errors import OpError
from pdcore.state.base import Await, Ctx
from pdcore.state.takerecords import fingerprint
from pdcore.team.link import TeamLink, team_unavailable
from pdcore.team.space import SALVAGE

OPEN = ("pending", "claimed")


def _dump(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _public(entry: dict) -> dict:
    """An entry as callers see it: without the take record of its last claim."""
    return {k: v for k, v in entry.items() if k != "claim"}


def _answer(entry: dict) -> dict:
    """The answer of the claim recorded in `entry` (as its first try gave it), from any later state of the entry."""
    c = entry["claim"]
    won = {**_public(entry), "status": "claimed", "claimedBy": c["claimedBy"], "claimedAt": c["claimedAt"],
           "claimedSessionId": c["sessionId"], "updatedAt": c["claimedAt"], "endedAt": None, "claimedOn": c["host"]}
    return {"agentId": entry["agentId"], "claimedBy": c["claimedBy"], "sessionId": c["sessionId"],
            "sessionCreated": c["sessionCreated"], "inheritedFiles": c["inheritedFiles"],
            "conflicts": c["conflicts"], "entry": won}


class TeamSalvage:
    """The team side of pdcore.state.salvage.Salvage: the same operations, on the bucket."""

    def __init__(self, salvage: Any, link: TeamLink) -> None:
        self.salvage = salvage
        self.root = salvage.root
        self.config = salvage.config
        self.link = link
        self.entries: dict[str, tuple[int, dict]] = {}  # session id -> (revision, entry), from the watch
        link.watch(SALVAGE.short, self._changed)

    def _changed(self, key: str, revision: int, value: bytes | None) -> None:
        if value is None:
            self.entries.pop(key, None)
            return
        try:
            entry = json.loads(value)
            self.entries[key] = (revision, entry)
            self._index(entry)
        except (ValueError, KeyError, TypeError, AttributeError):
            self.entries.pop(key, None)
        self.root.wake(("salvage", key))

    def _index(self, entry: dict) -> None:
        """Index the take record of the entry's last claim (every host does, from its watch)."""
        claim = entry.get("claim")
        if isinstance(claim, dict) and claim.get("requestId"):
            self.link.takes.put(claim["requestId"], "salvage.claim", claim.get("fp", ""), _answer(entry),
                                int(claim.get("until") or 0))

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
        out = _public(entry)
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

    async def _read(self, sid: str) -> dict | None:
        """The entry as the bucket holds it now (not the watch's copy)."""
        return (await self.link.latest(SALVAGE.short, sid))[1]

    def claim(self, ctx: Ctx, agent_id: str, claimer: str, session_id: str | None, request_id: str | None = None,
              asked: dict | None = None) -> Any:
        """Exactly one claimer across the team wins; the winner's session here inherits the files.

        With `request_id`, a repeat gets the first answer (see the module doc)."""
        asked = asked if asked is not None else {}
        repeat = self.link.takes.recall(request_id, "salvage.claim", asked, ctx.now)
        if repeat is not None:
            return self._repeated(ctx, repeat)
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
        conflicts = sessions.conflicts_for(entry.get("project"), paths, session.id if session else None)
        won = {**entry, "status": "claimed", "claimedBy": claimer, "claimedAt": ctx.now,
               "claimedSessionId": new_sid, "updatedAt": ctx.now, "claimedOn": self.link.host_id}
        if request_id is not None:  # the take record, written by the very compare-and-set that claims
            won["claim"] = {"requestId": request_id, "fp": fingerprint(asked), "host": self.link.host_id,
                            "claimedBy": claimer, "claimedAt": ctx.now, "sessionId": new_sid,
                            "sessionCreated": session is None, "inheritedFiles": paths, "conflicts": conflicts,
                            "until": ctx.now + self.config.take_record_ttl_ms}

        def then(ok: bool) -> Any:
            if not ok:
                if request_id is None:
                    raise self._claimed_first(agent_id, self.entries.get(entry["sessionId"], (0, {}))[1])
                # a newer revision: maybe an earlier try of this very take (its answer lost, or not yet
                # in this host's copy of the bucket). Read the entry back and look.
                return self.link.call(self._read, entry["sessionId"], then=lost)
            if request_id is not None:
                self._index(won)  # a repeat here is recognised before the watch brings the entry back
            mine = sessions.active_for_agent(claimer)
            # what the take record says: a repeat in flight on this host may have made the session already
            created = session is None
            if mine is None:
                mine = self._start_heir_session(ctx, claimer, entry, new_sid)
            if paths:
                sessions.apply_claim(ctx, mine, paths, None, False)
            self.root.activity.record(ctx, "salvage.claim", agent_id, actor=claimer, sessionId=mine.id)
            self._event(ctx, "salvage.claimed", won)
            result = {"agentId": agent_id, "claimedBy": claimer, "sessionId": mine.id, "sessionCreated": created,
                      "inheritedFiles": paths, "conflicts": conflicts, "entry": _public(won)}
            return self.root.agents.team.acked(result)

        def lost(latest: dict | None) -> Any:
            claim = (latest or {}).get("claim")
            if isinstance(claim, dict) and claim.get("requestId") == request_id:
                self._index(latest)  # type: ignore[arg-type]
                repeat = self.link.takes.recall(request_id, "salvage.claim", asked, ctx.now)  # conflict: other args
                if repeat is not None:
                    return self._repeated(ctx, repeat)
            raise self._claimed_first(agent_id, latest or {})

        return self.link.call(self._update, entry["sessionId"], revision, won, then=then)

    def _start_heir_session(self, ctx: Ctx, claimer: str, entry: dict, sid: str) -> Any:
        """The claimer's new session, under the id the claim recorded."""
        return self.root.sessions.apply_start(ctx, claimer, entry.get("identity"),
                                              f"Salvage of {entry['agentId']}: {entry.get('purpose')}", session_id=sid)

    def _claimed_first(self, agent_id: str, latest: dict) -> OpError:
        return OpError("already_claimed", f"the salvage of {agent_id} was claimed by "
                       f"{latest.get('claimedBy') or 'another agent'} first", "agentId",
                       claimedBy=latest.get("claimedBy"), claimedAt=latest.get("claimedAt"))

    def _repeated(self, ctx: Ctx, answer: dict) -> Any:
        """The first answer of a claim again; on the host that made it, its local side finished if it was not."""
        out = {**answer, "repeated": True}
        entry = answer["entry"]
        if entry.get("claimedOn") != self.link.host_id:
            return out
        sessions = self.root.sessions
        claimer, sid = answer["claimedBy"], answer["sessionId"]
        mine = sessions.active_for_agent(claimer)
        if mine is None and sessions.find(sid) is None:  # the first try ended before its session was made
            self._require()
            mine = self._start_heir_session(ctx, claimer, entry, sid)
        if mine is None or mine.id != sid:
            return out  # its session ran and ended here, or the claimer moved on to another one
        missing = [p for p in answer["inheritedFiles"] if p not in mine.files]
        if missing:
            self._require()
            sessions.apply_claim(ctx, mine, missing, None, False)
        return self.root.agents.team.acked(out)

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
            return {"agentId": agent_id, "status": "completed", "entry": _public(entry)}

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
                                                "releasedFiles": released, "entry": _public(entry)})

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
