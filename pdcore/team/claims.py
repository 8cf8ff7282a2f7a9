"""File claims judged across a team: one key per project in the `claims` bucket (docs/team.md).

The key holds every live file claim of the project, of every host. A claim reads the key,
looks for overlaps with other sessions' claims (pdcore.state.pathglob.overlaps, both ways, as
locally), and writes the key back with "expected last revision" = what it read. Of two hosts
claiming overlapping globs at once, both read the same revision and only one write lands; the
other reads again, sees the winner's claim, and is refused (strict) or told (advisory). The
owner host keeps its sessions' entries in step with its sessions (claims dropped, sessions
ended) when it publishes them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import nats.js.errors

from pdcore.errors import OpError
from pdcore.state.base import Ctx
from pdcore.state.pathglob import overlaps
from pdcore.team.link import TeamLink
from pdcore.team.locks import lock_kv_key
from pdcore.team.space import CLAIMS

_CAS_ROUNDS = 16


def project_key(project: str | None) -> str:
    return lock_kv_key("p:" + (project or ""))


def _live(entry: dict, now: int) -> bool:
    return entry.get("expiresAt") is None or entry["expiresAt"] > now


class TeamClaims:
    """The team side of the file claims of pdcore.state.sessions."""

    def __init__(self, sessions: Any, link: TeamLink) -> None:
        self.sessions = sessions
        self.root = sessions.root
        self.link = link

    async def _read(self, project: str | None) -> tuple[int, list[dict]]:
        kv = self.link.buckets[CLAIMS.short]
        try:
            entry = await kv.get(project_key(project))
        except nats.js.errors.KeyNotFoundError:
            return 0, []
        return entry.revision, (json.loads(entry.value)["claims"] if entry.value else [])

    async def _write(self, project: str | None, revision: int, claims: list[dict]) -> bool:
        kv = self.link.buckets[CLAIMS.short]
        value = json.dumps({"claims": claims}, separators=(",", ":")).encode()
        try:
            if revision:
                await kv.update(project_key(project), value, last=revision)
            else:
                await kv.create(project_key(project), value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def _claim(self, project: str | None, session_id: str, agent_id: str | None, purpose: str | None,
                     paths: list[str], ttl: int | None, strict: bool) -> tuple[str, list[dict]]:
        """("claimed" | "refused", conflicts with other sessions' claims, of every host)."""
        for _ in range(_CAS_ROUNDS):
            revision, claims = await self._read(project)
            now = int(time.time() * 1000)
            claims = [c for c in claims if _live(c, now)]
            conflicts = [{"path": p, "heldPath": c["path"], "sessionId": c["sessionId"], "agentId": c.get("agentId"),
                          "purpose": c.get("purpose"), "since": c["claimedAt"], "strict": c["strict"],
                          "host": c.get("host")}
                         for p in paths for c in claims if c["sessionId"] != session_id and overlaps(p, c["path"])]
            if any(strict or c["strict"] for c in conflicts):
                return "refused", [c for c in conflicts if strict or c["strict"]]
            kept = [c for c in claims if not (c["sessionId"] == session_id and c["path"] in paths)]
            mine = [{"path": p, "sessionId": session_id, "agentId": agent_id, "purpose": purpose,
                     "host": self.link.host_id, "strict": strict, "claimedAt": now,
                     "expiresAt": now + ttl if ttl else None} for p in paths]
            if await self._write(project, revision, kept + mine):
                return "claimed", conflicts
        return "refused", [{"path": paths[0], "heldPath": None, "sessionId": None, "agentId": None,
                            "since": None, "strict": False, "host": None}]

    def claim_then(self, ctx: Ctx, project: str | None, session_id: str, agent_id: str | None, paths: list[str],
                   ttl: int | None, strict: bool, apply: Callable[[list[dict], str | None], dict]) -> Any:
        """Judge the claim team-wide, then `apply(conflicts of other hosts, session_id)` here; the op
        answers once the session it changed is published too."""
        team = self.root.agents.team
        if not paths:
            return team.acked(apply([], session_id))
        purpose = None
        current = self.sessions.active.get(session_id)
        if current is not None:
            purpose = current.purpose

        def then(outcome: tuple[str, list[dict]]) -> Any:
            kind, conflicts = outcome
            if kind == "refused":
                first = conflicts[0]
                raise OpError("file_conflict", f"{first['path']} is held by session {first['sessionId']} (agent "
                              f"{first['agentId']}, host {first['host']}) since {first['since']}"
                              + (" with a strict claim" if first["strict"] and not strict else "")
                              + "; nothing was claimed", "files", conflicts=conflicts)
            theirs = [c for c in conflicts if c.get("host") != self.link.host_id]
            return team.acked(apply(theirs, session_id))

        return self.link.call(self._claim, project, session_id, agent_id, purpose, paths, ttl, strict, then=then)

    async def sync_session(self, session: Any) -> None:
        """Make the key hold exactly this host's current claims of `session` (none once it ended)."""
        files = session.files if session.active else {}
        for _ in range(_CAS_ROUNDS):
            revision, claims = await self._read(session.project)
            theirs = [c for c in claims if c["sessionId"] != session.id]
            ours = {c["path"]: c for c in claims if c["sessionId"] == session.id}
            if set(ours) == set(files) and all(ours[p]["expiresAt"] == f.expires_at and ours[p]["strict"] == f.strict
                                               for p, f in files.items()):
                return
            mine = [{"path": p, "sessionId": session.id, "agentId": session.agent_id, "purpose": session.purpose,
                     "host": self.link.host_id, "strict": f.strict, "claimedAt": f.claimed_at,
                     "expiresAt": f.expires_at} for p, f in sorted(files.items())]
            if not revision and not mine:
                return
            if await self._write(session.project, revision, theirs + mine):
                return

    async def drop_session(self, project: str | None, session_id: str) -> None:
        """Remove every claim of a session (of a host declared dead)."""
        for _ in range(_CAS_ROUNDS):
            revision, claims = await self._read(project)
            kept = [c for c in claims if c["sessionId"] != session_id]
            if len(kept) == len(claims) or await self._write(project, revision, kept):
                return
