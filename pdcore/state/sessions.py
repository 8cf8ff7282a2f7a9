"""Sessions, phases and advisory file claims (SPEC.md §4).

Active sessions live in memory with their file claims; ended sessions are read from the
database. An agent has at most one active session. File claims are advisory: claiming what
another active session of the same project holds succeeds and returns the conflict, unless the
claimer asks for `strict` (then it is refused) or the holder claimed with `strict` (a hard
claim, also what the git guard enforces). Overlap is decided by `pathglob.overlaps`, both ways.
Each operation checks everything before it changes anything; the `check_*` / `apply_*` halves
exist so that sugar can run several steps atomically.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

from pdcore.errors import OpError
from pdcore.state.base import Ctx, Primitive
from pdcore.state.pathglob import normalize, overlaps
from pdcore.timers import Timer

CHANNEL = "pd:sessions"


def new_session_id() -> str:
    return f"session-{secrets.token_hex(6)}"


def project_of(identity: str | None) -> str | None:
    return identity.split(":", 1)[0] if identity else None


class FileClaim:
    __slots__ = ("path", "session_id", "claimed_at", "expires_at", "strict", "timer")

    def __init__(self, path: str, session_id: str, claimed_at: int, expires_at: int | None, strict: bool) -> None:
        self.path = path
        self.session_id = session_id
        self.claimed_at = claimed_at
        self.expires_at = expires_at
        self.strict = strict
        self.timer: Timer | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "claimedAt": self.claimed_at, "expiresAt": self.expires_at, "strict": self.strict}


class Session:
    __slots__ = ("id", "agent_id", "identity", "project", "purpose", "phase", "status", "metadata",
                 "created_at", "updated_at", "ended_at", "files", "note_count")

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))
        self.files: dict[str, FileClaim] = kw.get("files") or {}
        self.note_count = kw.get("note_count") or 0

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "sessionId": self.id,
            "agentId": self.agent_id,
            "identity": self.identity,
            "project": self.project,
            "purpose": self.purpose,
            "phase": self.phase,
            "status": self.status,
            "metadata": self.metadata,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "endedAt": self.ended_at,
            "files": [c.to_dict() for c in sorted(self.files.values(), key=lambda c: c.path)],
            "noteCount": self.note_count,
        }


_SESSION_COLUMNS = ("id, agent_id, identity, project, purpose, phase, status, metadata, created_at, updated_at, "
                    "ended_at, note_count")


def _row_to_session(r: tuple) -> Session:
    return Session(id=r[0], agent_id=r[1], identity=r[2], project=r[3], purpose=r[4], phase=r[5], status=r[6],
                   metadata=json.loads(r[7]) if r[7] else None, created_at=r[8], updated_at=r[9], ended_at=r[10],
                   note_count=r[11])


class Sessions(Primitive):
    name = "sessions"
    load_order = 30

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.active: dict[str, Session] = {}
        self.active_by_agent: dict[str, str] = {}
        # project ('' when none) -> path -> session id -> claim
        self.claims: dict[str, dict[str, dict[str, FileClaim]]] = {}
        self.team: Any = None  # TeamMembers in team mode (pdcore/team/members.py): sessions are published
        self.team_claims: Any = None  # TeamClaims in team mode: file-claim conflicts are judged team-wide

    def on_team_link(self, link: Any) -> None:
        from pdcore.team.claims import TeamClaims

        self.team = self.root.agents.team
        self.team_claims = TeamClaims(self, link)

    def new_id(self) -> str:
        return new_session_id()

    def _changed(self, session: Session) -> None:
        if self.team is not None:
            self.team.session_changed(session.id)

    # -- loading ---------------------------------------------------------------------------
    def load(self, now: int) -> None:
        for r in self.store.read(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE status='active'"):
            session = _row_to_session(r)
            self.active[session.id] = session
            if session.agent_id:
                self.active_by_agent[session.agent_id] = session.id
        expired = []
        for sid, path, claimed_at, expires_at, strict in self.store.read(
            "SELECT session_id, path, claimed_at, expires_at, strict FROM file_claims"
        ):
            session = self.active.get(sid)
            if session is None:
                expired.append((sid, path))
            elif expires_at is not None and expires_at <= now:
                expired.append((sid, path))
            else:
                self._index_claim(session, FileClaim(path, sid, claimed_at, expires_at, bool(strict)))
        if expired:
            self.store.write_many("DELETE FROM file_claims WHERE session_id=? AND path=?", expired)

    def counts(self) -> dict[str, int]:
        return {"sessions_active": len(self.active),
                "file_claims": sum(len(s.files) for s in self.active.values())}

    # -- lookups used by other primitives --------------------------------------------------
    def active_for_agent(self, agent_id: str | None) -> Session | None:
        if not agent_id:
            return None
        sid = self.active_by_agent.get(agent_id)
        return self.active.get(sid) if sid else None

    def find(self, session_id: str) -> Session | None:
        """An active session from memory, else an ended one from the database."""
        session = self.active.get(session_id)
        if session is not None:
            return session
        row = self.store.read_one(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id=?", (session_id,))
        return None if row is None else _row_to_session(row)

    def require(self, session_id: str, field: str = "id") -> Session:
        session = self.find(session_id)
        if session is None:
            raise OpError("not_found", f"no session {session_id}", field)
        return session

    def require_active(self, session_id: str, field: str = "id") -> Session:
        session = self.require(session_id, field)
        if not session.active:
            raise OpError("session_ended", f"session {session_id} is {session.status}; start a new one with "
                          "pd begin", field)
        return session

    def active_claims(self, project: str | None = None) -> Iterator[tuple[FileClaim, Session]]:
        """Every live file claim (of one project, or all): for file heat and the guard."""
        buckets = [self.claims.get(project or "", {})] if project is not None else list(self.claims.values())
        for bucket in buckets:
            for holders in bucket.values():
                for claim in holders.values():
                    yield claim, self.active[claim.session_id]

    # -- starting and ending ---------------------------------------------------------------
    def check_start(self, agent_id: str | None, force: bool) -> Session | None:
        """Refuse a second active session for an agent unless `force`; return the one to replace."""
        current = self.active_for_agent(agent_id)
        if current is not None and not force:
            raise OpError("session_active", f"agent {agent_id} already has active session {current.id} "
                          f"({current.purpose!r}); end it with pd done, or pass force to replace it", "agentId",
                          sessionId=current.id)
        return current

    def apply_start(self, ctx: Ctx, agent_id: str | None, identity: str | None, purpose: str,
                    phase: str = "planning", metadata: dict | None = None, replace: Session | None = None,
                    session_id: str | None = None) -> Session:
        now = ctx.now
        if replace is not None:
            self.apply_end(ctx, replace, "abandoned", reason="replaced")
        session = Session(id=session_id or new_session_id(), agent_id=agent_id, identity=identity, project=project_of(identity),
                          purpose=purpose, phase=phase, status="active", metadata=metadata, created_at=now,
                          updated_at=now, ended_at=None)
        self.store.write(
            f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,NULL,0)",
            (session.id, agent_id, identity, session.project, purpose, phase, "active",
             json.dumps(metadata) if metadata is not None else None, now, now),
        )
        self.active[session.id] = session
        if agent_id:
            self.active_by_agent[agent_id] = session.id
        self._changed(session)
        if self.team is not None and agent_id:
            self.team.agent_changed(agent_id)  # its record names its session
        self.root.activity.record(ctx, "session.start", session.id, actor=agent_id, identity=identity)
        self.root.publish(CHANNEL, {"event": "session.started", "sessionId": session.id, "agentId": agent_id,
                                    "identity": identity, "purpose": purpose}, None, now)
        return session

    def apply_end(self, ctx: Ctx, session: Session, status: str, reason: str | None = None) -> list[str]:
        """End an active session: release its claims, record it. Returns the released paths."""
        now = ctx.now
        released = self.drop_claims(session, list(session.files))
        session.status = status
        session.phase = "completed" if status == "completed" else "abandoned"
        session.ended_at = session.updated_at = now
        self.store.write("UPDATE sessions SET status=?, phase=?, ended_at=?, updated_at=? WHERE id=?",
                         (status, session.phase, now, now, session.id))
        del self.active[session.id]
        if session.agent_id and self.active_by_agent.get(session.agent_id) == session.id:
            del self.active_by_agent[session.agent_id]
        self._changed(session)
        self.root.activity.record(ctx, f"session.{status}", session.id, actor=session.agent_id,
                                  reason=reason, releasedFiles=len(released))
        self.root.publish(CHANNEL, {"event": f"session.{status}", "sessionId": session.id,
                                    "agentId": session.agent_id, "reason": reason}, None, now)
        return released

    # -- file claims -----------------------------------------------------------------------
    def normalize_files(self, files: Any, field: str = "files") -> list[str]:
        """Validate a path, or a list of paths/globs, into canonical claims (deduplicated, in order)."""
        if isinstance(files, str):
            files = [files]
        if not isinstance(files, list):
            raise OpError("invalid_argument", f"{field} must be a path or a list of paths", field)
        if len(files) > self.config.session_max_files:
            raise OpError("invalid_argument", f"{field} has more than {self.config.session_max_files} paths", field)
        out: dict[str, None] = {}
        for f in files:
            out[normalize(f, field)] = None
        return list(out)

    def conflicts_for(self, project: str | None, paths: list[str], session_id: str | None) -> list[dict]:
        """Claims of other active sessions of `project` that overlap any of `paths`."""
        bucket = self.claims.get(project or "")
        if not bucket:
            return []
        found = []
        for path in paths:
            for held_path, holders in bucket.items():
                if not overlaps(path, held_path):
                    continue
                for sid, claim in holders.items():
                    if sid == session_id:
                        continue
                    holder = self.active[sid]
                    found.append({"path": path, "heldPath": held_path, "sessionId": sid, "agentId": holder.agent_id,
                                  "purpose": holder.purpose, "since": claim.claimed_at, "strict": claim.strict})
        return found

    def check_claim(self, project: str | None, paths: list[str], session_id: str | None, strict: bool,
                    held_after: int = 0) -> list[dict]:
        """The conflicts of a claim; refused when strict (ours or the holder's) and there is one."""
        if held_after > self.config.session_max_files:
            raise OpError("invalid_argument", f"a session holds at most {self.config.session_max_files} file "
                          "claims", "files")
        conflicts = self.conflicts_for(project, paths, session_id)
        hard = conflicts if strict else [c for c in conflicts if c["strict"]]
        if hard:
            first = hard[0]
            raise OpError("file_conflict", f"{first['path']} is held by session {first['sessionId']} "
                          f"(agent {first['agentId']}) since {first['since']}"
                          + (" with a strict claim" if first["strict"] and not strict else "")
                          + "; nothing was claimed", "files", conflicts=hard)
        return conflicts

    def apply_claim(self, ctx: Ctx, session: Session, paths: list[str], ttl: int | None, strict: bool) -> list[str]:
        now = ctx.now
        expires_at = now + ttl if ttl else None
        rows = []
        for path in paths:
            claim = session.files.get(path)
            if claim is not None:
                self._unindex_claim(session, claim)
            claim = FileClaim(path, session.id, claim.claimed_at if claim else now, expires_at, strict)
            self._index_claim(session, claim)
            rows.append((session.id, path, claim.claimed_at, expires_at, int(strict)))
        if rows:
            self.store.write_many(
                "INSERT INTO file_claims (session_id, path, claimed_at, expires_at, strict) VALUES (?,?,?,?,?) "
                "ON CONFLICT(session_id, path) DO UPDATE SET expires_at=excluded.expires_at, strict=excluded.strict",
                rows,
            )
            self.root.activity.record(ctx, "files.claim", session.id, actor=session.agent_id, files=paths[:50],
                                      count=len(paths))
            self._changed(session)
        return paths

    def _index_claim(self, session: Session, claim: FileClaim) -> None:
        session.files[claim.path] = claim
        self.claims.setdefault(session.project or "", {}).setdefault(claim.path, {})[session.id] = claim
        if claim.expires_at is not None:
            claim.timer = self.root.timers.add(claim.expires_at, self._expire_claim, session.id, claim.path,
                                               claim.expires_at)

    def _unindex_claim(self, session: Session, claim: FileClaim) -> None:
        session.files.pop(claim.path, None)
        if claim.timer is not None:
            claim.timer.cancel()
        bucket = self.claims.get(session.project or "")
        if bucket is None:
            return
        holders = bucket.get(claim.path)
        if holders is not None:
            holders.pop(session.id, None)
            if not holders:
                del bucket[claim.path]
        if not bucket:
            del self.claims[session.project or ""]

    def drop_claims(self, session: Session, paths: list[str]) -> list[str]:
        dropped = [p for p in paths if p in session.files]
        for path in dropped:
            self._unindex_claim(session, session.files[path])
        if dropped:
            self.store.write_many("DELETE FROM file_claims WHERE session_id=? AND path=?",
                                  [(session.id, p) for p in dropped])
            self._changed(session)
        return dropped

    def _expire_claim(self, session_id: str, path: str, expires_at: int) -> None:
        session = self.active.get(session_id)
        claim = session.files.get(path) if session else None
        if claim is not None and claim.expires_at == expires_at:
            self.drop_claims(session, [path])
            self.root.activity.record(Ctx(self.root.clock()), "files.expired", session_id, actor=session.agent_id,
                                      files=[path])

    def take_files_for_salvage(self, ctx: Ctx, session: Session) -> list[str]:
        """The agent of `session` died: end it as abandoned; its claims move to the salvage entry."""
        files = sorted(session.files)
        self.apply_end(ctx, session, "abandoned", reason="agent dead")
        return files

    # -- operations ------------------------------------------------------------------------
    def start(self, ctx: Ctx, purpose: str, agentId: str | None = None, identity: str | None = None,
              files: Any = None, phase: str = "planning", metadata: dict | None = None, force: bool = False,
              strict: bool = False) -> dict:
        agent_id = agentId or ctx.agent_id
        purpose = _purpose(purpose)
        paths = self.normalize_files(files) if files is not None else []
        replace = self.check_start(agent_id, force)
        conflicts = self.check_claim(project_of(identity), paths, None, strict) if paths else []

        def apply(team_conflicts: list[dict], session_id: str | None = None) -> dict:
            session = self.apply_start(ctx, agent_id, identity, purpose, phase, metadata, replace, session_id)
            if paths:
                self.apply_claim(ctx, session, paths, None, strict)
            # `id`, `purpose` and `status` at the top are 3.7's shape; `sessionId` and `session` ours.
            return {"id": session.id, "purpose": session.purpose, "status": session.status, "sessionId": session.id,
                    "session": session.to_dict(), "conflicts": conflicts + team_conflicts,
                    "replaced": replace.id if replace else None}

        if self.team is None:
            return apply([])
        self.team.require()
        return self.team_claims.claim_then(ctx, project_of(identity), self.new_id(), agent_id, paths, None, strict,
                                           apply)

    def list(self, ctx: Ctx, status: str | None = None, agentId: str | None = None, project: str | None = None,
             limit: int = 100) -> dict:
        if self.team is not None:
            return self._team_list(status, agentId, project, limit)
        return self._local_list(status, agentId, project, limit)

    def _local_list(self, status: str | None, agentId: str | None, project: str | None, limit: int) -> dict:
        if status == "active":
            found = [s for s in self.active.values()
                     if (agentId is None or s.agent_id == agentId) and (project is None or s.project == project)]
            found.sort(key=lambda s: s.created_at, reverse=True)
            return {"sessions": [s.to_dict() for s in found[:limit]], "count": len(found)}
        where, params = [], []
        for column, value in (("status", status), ("agent_id", agentId), ("project", project)):
            if value is not None:
                where.append(f"{column}=?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = self.store.read_one(f"SELECT COUNT(*) FROM sessions{clause}", params)[0]
        rows = self.store.read(f"SELECT {_SESSION_COLUMNS} FROM sessions{clause} ORDER BY created_at DESC, rowid DESC "
                               "LIMIT ?", [*params, limit])
        out = []
        for r in rows:
            live = self.active.get(r[0])
            out.append(live.to_dict() if live is not None else _row_to_session(r).to_dict())
        return {"sessions": out, "count": total}

    def _team_list(self, status: str | None, agent_id: str | None, project: str | None, limit: int) -> dict:
        """Team mode: this host's sessions (active, and the ended ones in the database) and the other
        hosts' as they published them (active ones, and ended ones until their retention ends)."""
        mine = self._local_list(status, agent_id, project, limit)["sessions"]
        theirs = [r for r in self.team.remote_sessions() if (status is None or r.get("status") == status)
                  and (agent_id is None or r.get("agentId") == agent_id) and (project is None or r.get("project") == project)]
        found = sorted(mine + theirs, key=lambda r: r.get("createdAt") or 0, reverse=True)
        return {"sessions": found[:limit], "count": len(found)}

    def get(self, ctx: Ctx, id: str, notes: int = 50) -> dict:
        if self.team is not None and self.find(id) is None and self.team.remote_session(id) is not None:
            return self.team.session_with_notes(id, notes)
        session = self.require(id)
        recent = self.root.notes.recent(id, notes) if notes else []
        return {"session": session.to_dict(), "notes": recent, "files": session.to_dict()["files"]}

    def update(self, ctx: Ctx, id: str, purpose: str | None = None, phase: str | None = None,
               status: str | None = None, identity: str | None = None, metadata: dict | None = None,
               note: str | None = None) -> dict:
        session = self.require_active(id)
        if purpose is not None:
            purpose = _purpose(purpose)
        if identity is not None and identity != session.identity and session.files:
            raise OpError("invalid_argument", "identity cannot change while the session holds file claims "
                          "(they are relative to its project); release them first", "identity")
        if status == "active":
            status = None
        if note is not None:
            self.root.notes.check_note(note, "handoff", "note")
        now = ctx.now
        if purpose is not None:
            session.purpose = purpose
        if phase is not None:
            session.phase = phase
        if identity is not None:
            session.identity, session.project = identity, project_of(identity)
        if metadata is not None:
            session.metadata = metadata
        if self.team is not None:
            self.team.require()
            self._changed(session)
        session.updated_at = now
        self.store.write("UPDATE sessions SET purpose=?, phase=?, identity=?, project=?, metadata=?, updated_at=? "
                         "WHERE id=?", (session.purpose, session.phase, session.identity, session.project,
                                        json.dumps(session.metadata) if session.metadata is not None else None,
                                        now, id))
        if note is not None:
            self.root.notes.apply_add(ctx, session, note, "handoff" if status else "note")
        released: list[str] = []
        if status is not None:
            released = self.apply_end(ctx, session, status)
        else:
            self.root.activity.record(ctx, "session.update", id, actor=session.agent_id, phase=session.phase)
        return self._acked({"sessionId": id, "session": session.to_dict(), "releasedFiles": released})

    def _acked(self, result: dict) -> Any:
        return result if self.team is None else self.team.acked(result)

    def _require_team(self) -> None:
        if self.team is not None:
            self.team.require()

    def end(self, ctx: Ctx, id: str, status: str = "completed", note: str | None = None) -> dict:
        session = self.require_active(id)
        if note is not None:
            self.root.notes.check_note(note, "handoff", "note")
        self._require_team()
        if note is not None:
            self.root.notes.apply_add(ctx, session, note, "handoff")
        released = self.apply_end(ctx, session, status)
        return self._acked({"sessionId": id, "status": status, "endedAt": session.ended_at,
                            "releasedFiles": released, "session": session.to_dict()})

    def set_phase(self, ctx: Ctx, id: str, phase: str) -> dict:
        session = self.require_active(id)
        self._require_team()
        self._changed(session)
        previous = session.phase
        session.phase = phase
        session.updated_at = ctx.now
        self.store.write("UPDATE sessions SET phase=?, updated_at=? WHERE id=?", (phase, ctx.now, id))
        self.root.activity.record(ctx, "session.phase", id, actor=session.agent_id, phase=phase, previous=previous)
        return self._acked({"sessionId": id, "phase": phase, "previousPhase": previous})

    def claim_files(self, ctx: Ctx, id: str, files: Any, strict: bool = False, ttl: int | None = None) -> dict:
        session = self.require_active(id)
        paths = self.normalize_files(files)
        if not paths:
            raise OpError("missing_field", "files must name at least one path", "files")
        held_after = len(session.files) + sum(1 for p in paths if p not in session.files)
        conflicts = self.check_claim(session.project, paths, session.id, strict, held_after)

        def apply(team_conflicts: list[dict], _: str | None = None) -> dict:
            self.apply_claim(ctx, session, paths, ttl, strict)
            return {"sessionId": id, "claimed": paths, "conflicts": conflicts + team_conflicts,
                    "files": session.to_dict()["files"]}

        if self.team is None:
            return apply([])
        self.team.require()
        return self.team_claims.claim_then(ctx, session.project, session.id, session.agent_id, paths, ttl, strict,
                                           apply)

    def release_files(self, ctx: Ctx, id: str, files: Any = None) -> dict:
        session = self.require_active(id)
        paths = list(session.files) if files is None else self.normalize_files(files)
        self._require_team()
        released = self.drop_claims(session, paths)
        if released:
            self.root.activity.record(ctx, "files.release", id, actor=session.agent_id, files=released[:50],
                                      count=len(released))
        return self._acked({"sessionId": id, "released": released, "files": session.to_dict()["files"]})

    def files_list(self, ctx: Ctx, sessionId: str | None = None, agentId: str | None = None,
                   project: str | None = None, limit: int = 1000) -> dict:
        if sessionId is not None:
            session = self.require(sessionId, "sessionId")
            pairs = [(c, session) for c in session.files.values()] if session.active else []
        else:
            pairs = [(c, s) for c, s in self.active_claims(project) if agentId is None or s.agent_id == agentId]
        pairs.sort(key=lambda p: (p[0].path, p[0].claimed_at))
        files = [_claim_view(c, s) for c, s in pairs[:limit]]
        return {"files": files, "count": len(pairs)}

    def who_owns(self, ctx: Ctx, path: str, project: str | None = None) -> dict:
        canonical = normalize(path, "path")
        owners = [_claim_view(c, s) for c, s in self.active_claims(project) if overlaps(canonical, c.path)]
        owners.sort(key=lambda o: o["claimedAt"])
        return {"path": canonical, "owners": owners, "owned": bool(owners), "count": len(owners)}

    def check_files(self, ctx: Ctx, paths: Any, sessionId: str | None = None, agentId: str | None = None,
                    project: str | None = None) -> dict:
        """What a commit touching `paths` would step on (the git guard's question)."""
        canonical = self.normalize_files(paths, "paths")
        mine = self.active.get(sessionId) if sessionId else self.active_for_agent(agentId or ctx.agent_id)
        if project is None and mine is not None:
            project = mine.project
        conflicts = self.conflicts_for(project, canonical, mine.id if mine else None)
        blocking = [c for c in conflicts if c["strict"]]
        return {"conflicts": conflicts, "blocking": blocking, "blocked": bool(blocking), "checked": len(canonical)}


def _purpose(purpose: str) -> str:
    text = purpose.strip()
    if not text:
        raise OpError("missing_field", "purpose must say what the session is for", "purpose")
    return text


def _claim_view(claim: FileClaim, session: Session) -> dict:
    return {"path": claim.path, "sessionId": session.id, "agentId": session.agent_id, "identity": session.identity,
            "project": session.project, "purpose": session.purpose, "claimedAt": claim.claimed_at,
            "expiresAt": claim.expires_at, "strict": claim.strict}


PRIMITIVE = Sessions
