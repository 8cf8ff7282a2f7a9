"""Immutable, encrypted notes with a per-session hash chain (SPEC.md §4).

There is no edit or delete operation, and triggers in the database refuse both. A body is
encrypted (AES-256-GCM, `pdcore.crypto`) before it reaches SQL, so no note text is ever written
to `state.db` or its WAL in plain form; activity records and events name a note, never quote it.
Every note stores the chain link of the previous note of its session and its own link; the
session row keeps the last link and the count, so a removed tail is caught too. The previous
link is read from the database when appending (not cached), so a rolled-back operation can
never leave a wrong link in memory.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from pdcore.choices import NOTE_TYPES
from pdcore.crypto import GENESIS, NoteCipher, key_check, load_or_create_key
from pdcore.errors import OpError
from pdcore.state.base import Ctx, Park, Primitive
from pdcore.store import KEY_CHECK

log = logging.getLogger("pd.notes")

QUICK_PURPOSE = "Quick notes"
CHANNEL = "pd:notes"
AUDIT_BATCH = 2000  # notes checked per arbiter sweep

_INSERT_COLUMNS = "id, session_id, agent_id, type, created_at, nonce, ciphertext, prev_hash, hash"
# read as BLOB whatever is stored, so a row rewritten as text behind our back is reported, not a crash
_NOTE_COLUMNS = ("id, session_id, agent_id, type, created_at, CAST(nonce AS BLOB), CAST(ciphertext AS BLOB), "
                 "prev_hash, hash")


class Notes(Primitive):
    name = "notes"
    load_order = 25

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.cipher: NoteCipher | None = None
        self.added = 0
        self._audited = 0  # highest note id the arbiter's audit has checked
        self._verifies: dict[str, _VerifyJobs] = {}  # scope ("" = every session) -> its jobs

    def load(self, now: int) -> None:
        sealed_exist = (self.store.read_one("SELECT 1 FROM notes LIMIT 1") is not None
                        or self.store.read_one("SELECT 1 FROM webhooks WHERE typeof(secret) = 'blob' LIMIT 1")
                        is not None)  # webhook secrets are sealed with the same key
        key = load_or_create_key(self.config.key_path, sealed_exist)
        self.cipher = NoteCipher(key)
        if self.store.meta(KEY_CHECK) is None:  # a new database, or one from before the check (pdcore.startcheck)
            self.store.set_meta(KEY_CHECK, key_check(key))

    def counts(self) -> dict[str, int]:
        return {"notes_added": self.added}

    # -- appending -------------------------------------------------------------------------
    def check_note(self, content: Any, type: str = "note", field: str = "content") -> None:
        """Refuse a note before anything changes: empty, too large, or of an unknown type."""
        if not isinstance(content, str) or not content.strip():
            raise OpError("missing_field", f"{field} must be the text of the note", field)
        size = len(content.encode())
        if size > self.config.note_max_bytes:
            raise OpError("too_large", f"{field} is {size} bytes; a note holds at most {self.config.note_max_bytes} "
                          "bytes (split it, or raise note_max_bytes)", field)
        if type not in NOTE_TYPES:
            raise OpError("invalid_argument", f"type must be one of: {', '.join(NOTE_TYPES)}", "type")
        team = self.root.agents.team
        if team is not None:  # the team's notes stream is full: team_full before anything is written
            team.require_room_for_notes()

    def apply_add(self, ctx: Ctx, session: Any, content: str, type: str = "note",
                  agent_id: str | None = None) -> dict:
        """Append a checked note to an active session. Must be the last step of an operation."""
        assert self.cipher is not None
        store = self.store
        note_id = (store.read_one("SELECT MAX(id) FROM notes")[0] or 0) + 1
        head = store.read_one("SELECT note_head FROM sessions WHERE id=?", (session.id,))
        prev = head[0] if head and head[0] else GENESIS
        agent = agent_id or session.agent_id
        nonce, ciphertext = self.cipher.encrypt(note_id, session.id, content)
        link = self.cipher.link(prev, note_id, session.id, agent, type, ctx.now, nonce, ciphertext)
        store.write(f"INSERT INTO notes ({_INSERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                    (note_id, session.id, agent, type, ctx.now, nonce, ciphertext, prev, link))
        store.write("UPDATE sessions SET note_count = note_count + 1, note_head=?, updated_at=? WHERE id=?",
                    (link, ctx.now, session.id))
        session.note_count += 1
        session.updated_at = ctx.now
        self.added += 1
        team = self.root.agents.team
        if team is not None:  # shared with the team, sealed with the team key (pdcore/team/members.py)
            team.note_added(session.id)
        self.root.activity.record(ctx, "note.add", session.id, actor=agent, noteId=note_id, noteType=type,
                                  bytes=len(content.encode()))
        self.root.publish(CHANNEL, {"event": "note.added", "noteId": note_id, "sessionId": session.id,
                                    "agentId": agent, "type": type}, None, ctx.now)
        return {"noteId": note_id, "id": note_id, "sessionId": session.id, "agentId": agent, "type": type,
                "createdAt": ctx.now, "hash": link}

    # -- reading ---------------------------------------------------------------------------
    def _view(self, r: tuple) -> dict:
        assert self.cipher is not None
        content = self.cipher.decrypt(r[0], r[1], r[5], r[6])
        return {"id": r[0], "noteId": r[0], "sessionId": r[1], "agentId": r[2], "type": r[3], "createdAt": r[4],
                "content": content, "hash": r[8], "integrity": "ok" if content is not None else "failed"}

    def recent(self, session_id: str, limit: int) -> list[dict]:
        """The last `limit` notes of a session, oldest first."""
        rows = self.store.read(f"SELECT {_NOTE_COLUMNS} FROM notes WHERE session_id=? ORDER BY id DESC LIMIT ?",
                               (session_id, limit))
        return [self._view(r) for r in reversed(rows)]

    def recent_everywhere(self, limit: int, project: str | None = None, since: int | None = None) -> list[dict]:
        """The last notes of every session (or of one project's sessions), oldest first."""
        cols = ("n.id, n.session_id, n.agent_id, n.type, n.created_at, CAST(n.nonce AS BLOB), "
                "CAST(n.ciphertext AS BLOB), n.prev_hash, n.hash")
        sql = f"SELECT {cols} FROM notes n"
        where: list[str] = []
        params: list[Any] = []
        if project is not None:
            sql += " JOIN sessions s ON s.id = n.session_id"
            where.append("s.project = ?")
            params.append(project)
        if since is not None:
            where.append("n.created_at >= ?")
            params.append(since)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.store.read(sql + " ORDER BY n.id DESC LIMIT ?", [*params, limit])
        return [self._view(r) for r in reversed(rows)]

    def _query(self, session_id: str | None, agent_id: str | None, type: str | None, limit: int,
               before: int | None, after: int | None) -> dict:
        where, params = [], []
        for column, op, value in (("session_id", "=", session_id), ("agent_id", "=", agent_id),
                                  ("type", "=", type), ("id", "<", before), ("id", ">", after)):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        order = "ASC" if after is not None else "DESC"
        rows = self.store.read(f"SELECT {_NOTE_COLUMNS} FROM notes{clause} ORDER BY id {order} LIMIT ?",
                               [*params, limit])
        if order == "DESC":
            rows.reverse()
        notes = [self._view(r) for r in rows]
        return {"notes": notes, "count": len(notes)}

    # -- operations ------------------------------------------------------------------------
    def add(self, ctx: Ctx, id: str, content: str, type: str = "note", agentId: str | None = None) -> dict:
        session = self.root.sessions.require_active(id)
        self.check_note(content, type)
        team = self.root.agents.team
        if team is None:
            return self.apply_add(ctx, session, content, type, agentId or ctx.agent_id)
        team.require()
        return team.acked(self.apply_add(ctx, session, content, type, agentId or ctx.agent_id))

    def quick(self, ctx: Ctx, content: str, type: str = "note", sessionId: str | None = None,
              agentId: str | None = None) -> dict:
        """A note for the caller's active session; a session is started when there is none."""
        sessions = self.root.sessions
        agent_id = agentId or ctx.agent_id
        self.check_note(content, type)
        team = self.root.agents.team
        if team is not None:
            team.require()
        if sessionId is not None:
            session = sessions.require_active(sessionId, "sessionId")
        elif agent_id is not None:
            session = sessions.active_for_agent(agent_id)
        else:
            session = next((s for s in sessions.active.values() if s.agent_id is None and s.purpose == QUICK_PURPOSE),
                           None)
        created = session is None
        if session is None:
            session = sessions.apply_start(ctx, agent_id, None, QUICK_PURPOSE)
        out = self.apply_add(ctx, session, content, type, agent_id)
        out["sessionCreated"] = created
        return out if team is None else team.acked(out)

    def list(self, ctx: Ctx, limit: int = 50, type: str | None = None, agentId: str | None = None,
             sessionId: str | None = None, before: int | None = None, after: int | None = None) -> dict:
        if sessionId is not None and self._remote(sessionId):
            return self._team_notes(sessionId, limit, type, before, after)
        return self._query(sessionId, agentId, type, limit, before, after)

    def _remote(self, session_id: str) -> bool:
        """Team mode: a session of another host (its notes are read from the team's stream)."""
        team = self.root.agents.team
        return (team is not None and self.root.sessions.find(session_id) is None
                and team.remote_session(session_id) is not None)

    def _team_notes(self, session_id: str, limit: int, type: str | None, before: int | None,
                    after: int | None) -> Any:
        """The notes of another host's session, from the stream; `before`/`after` are the notes' `n`."""
        team = self.root.agents.team
        record = team.remote_session(session_id)

        def then(found: list[dict]) -> dict:
            views = [team.note_view(n) for n in found if (type is None or n["type"] == type)
                     and (before is None or n["n"] < before) and (after is None or n["n"] > after)]
            views = views[:limit] if after is not None else views[-limit:]
            return {"notes": views, "count": len(views), "sessionId": session_id}

        return team.link.call(team.read_notes, session_id, int(record.get("sharedNotes") or 0) + 1000, then=then)

    def session_notes(self, ctx: Ctx, id: str, limit: int = 100, type: str | None = None,
                      before: int | None = None, after: int | None = None) -> dict:
        if self._remote(id):
            return self._team_notes(id, limit, type, before, after)
        self.root.sessions.require(id)
        out = self._query(id, None, type, limit, before, after)
        out["sessionId"] = id
        return out

    # -- verifying -------------------------------------------------------------------------
    # A verify reads and decrypts every note it covers: O(notes), about 0.3 s per 100k. It runs
    # on a pool thread over its own read-only connection, in one read transaction (so the notes
    # and the session heads it compares come from one snapshot, taken after the tick that asked
    # has committed), while the core keeps serving; the call parks until its job is done. A
    # caller that arrives while a job for the same scope runs waits for the next one, started
    # when that one ends, so a result never predates the call it answers.
    def verify(self, ctx: Ctx, sessionId: str | None = None) -> dict:
        """Walk the chain of one session (or all) and decrypt every note: report what does not hold."""
        if sessionId is not None and self._remote(sessionId):
            team = self.root.agents.team
            record = team.remote_session(sessionId)
            return team.link.call(team.read_notes, sessionId, int(record.get("sharedNotes") or 0) + 1000,
                                  then=lambda found: team.verify_notes(sessionId, found, record))
        if sessionId is not None:
            self.root.sessions.require(sessionId, "sessionId")
        job = self._verifies.get(sessionId or "")
        if job is None:
            job = self._verifies[sessionId or ""] = _VerifyJobs(sessionId)
        if ctx.retry:  # woken by the end of the job this call waits for
            return job.answer()
        if job.running:
            job.again = True
            wanted = job.running + 1
        else:
            wanted = self._start_verify(job)
        if job.finished >= wanted:  # the job ran inline (in-process tests)
            return job.answer()
        return Park(keys=(job.key(wanted),), deadline=ctx.now + self.config.note_verify_wait_ms,
                    on_timeout=OpError("timeout", "note verification is still running; ask again later"))

    def _start_verify(self, job: _VerifyJobs) -> int:
        job.running = seq = job.finished + 1
        cipher, path = self.cipher, self.store.path
        assert cipher is not None

        def done(result: dict | None, error: BaseException | None) -> None:
            self._verify_done(job, seq, result, error)

        self.root.offload(lambda: _verify_snapshot(path, cipher, job.session_id), done)
        return seq

    def _verify_done(self, job: _VerifyJobs, seq: int, result: dict | None, error: BaseException | None) -> None:
        job.running = 0
        job.finished = seq
        job.result, job.error = result, None
        if error is not None or result is None:
            log.error("event=notes.verify_failed error=%s", error)
            job.error = OpError("internal", f"note verification failed: {error}; see daemon.log")
        else:
            self._report_broken(result["broken"])
        self.root.wake(job.key(seq))
        if job.again:
            job.again = False
            self._start_verify(job)

    def _report_broken(self, broken: list[dict]) -> None:
        arbiter = getattr(self.root, "arbiter", None)
        if arbiter is None:
            return
        ctx = Ctx(self.root.clock(), source="internal")
        for b in broken:
            reasons = b["reasons"]
            if "decrypt_failed" in reasons:
                arbiter.check_note_integrity(ctx, b["noteId"], b["sessionId"], False, None, "verify")
            if set(reasons) - {"decrypt_failed"}:
                arbiter.check_note_chain(ctx, b["sessionId"], False, b["noteId"], None, ", ".join(reasons))

    def arbiter_audit(self, ctx: Ctx, arbiter: Any) -> None:
        """The arbiter's sweep: check the notes appended since the last sweep (chain link and
        decryption), a bounded batch per sweep, so the audit never stalls the core."""
        assert self.cipher is not None
        cipher, store = self.cipher, self.store
        rows = store.read(f"SELECT {_NOTE_COLUMNS} FROM notes WHERE id > ? ORDER BY id LIMIT ?",
                          (self._audited, AUDIT_BATCH))
        for row in rows:
            note_id, sid, agent = row[0], row[1], row[2]
            before = store.read_one("SELECT hash FROM notes WHERE session_id=? AND id<? ORDER BY id DESC LIMIT 1",
                                    (sid, note_id))
            faults = note_faults(cipher, row, before[0] if before else GENESIS)
            chain = [f for f in faults if f != "decrypt_failed"]
            arbiter.check_note_chain(ctx, sid, not chain, note_id, agent, ", ".join(chain))
            arbiter.check_note_integrity(ctx, note_id, sid, "decrypt_failed" not in faults, agent)
            self._audited = note_id


PRIMITIVE = Notes


def note_faults(cipher: NoteCipher, row: tuple, expected_prev: str) -> list[str]:
    """What does not hold for one stored note (a row of `_NOTE_COLUMNS`), given the link the
    note before it in its session ends with: `chain_broken` (a note before it is missing,
    moved or altered), `hash_mismatch` (a stored field changed), `decrypt_failed`."""
    note_id, sid, agent, type_, created_at, nonce, ciphertext, prev, link = row
    faults = []
    if prev != expected_prev:
        faults.append("chain_broken")
    if cipher.link(prev, note_id, sid, agent, type_, created_at, nonce, ciphertext) != link:
        faults.append("hash_mismatch")
    if cipher.decrypt(note_id, sid, nonce, ciphertext) is None:
        faults.append("decrypt_failed")
    return faults


class _VerifyJobs:
    """The verify jobs of one scope: at most one running, at most one more asked for."""

    def __init__(self, session_id: str | None) -> None:
        self.session_id = session_id
        self.running = 0  # sequence number of the running job, 0 when none
        self.finished = 0  # sequence number of the last finished job
        self.again = False  # a caller arrived while a job ran: run another after it
        self.result: dict | None = None
        self.error: OpError | None = None

    def key(self, seq: int) -> tuple:
        return ("notes.verify", self.session_id or "", seq)

    def answer(self) -> dict:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _verify_snapshot(path: str, cipher: NoteCipher, session_id: str | None) -> dict:
    """Check the notes (of one session, or all) in one read transaction of a connection of its own."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("BEGIN")  # one snapshot for the notes and the session heads
        if session_id is not None:
            cursor = db.execute(f"SELECT {_NOTE_COLUMNS} FROM notes WHERE session_id=? ORDER BY id", (session_id,))
        else:
            cursor = db.execute(f"SELECT {_NOTE_COLUMNS} FROM notes ORDER BY id")
        heads: dict[str, str] = {}
        counts: dict[str, int] = {}
        broken: list[dict] = []
        checked = 0
        for row in cursor:
            note_id, sid, link = row[0], row[1], row[8]
            checked += 1
            reasons = note_faults(cipher, row, heads.get(sid, GENESIS))
            if reasons:
                broken.append({"noteId": note_id, "sessionId": sid, "reasons": reasons})
            heads[sid] = link
            counts[sid] = counts.get(sid, 0) + 1
        # the session rows remember the last link: a removed tail shows here
        if session_id is not None:
            rows = db.execute("SELECT id, note_count, note_head FROM sessions WHERE id=?", (session_id,)).fetchall()
        else:
            rows = db.execute("SELECT id, note_count, note_head FROM sessions WHERE note_count > 0").fetchall()
        db.execute("COMMIT")
    finally:
        db.close()
    expected = {sid: (count, head) for sid, count, head in rows}
    for sid in sorted(set(expected) | set(counts)):
        count, head = expected.get(sid, (0, None))
        if counts.get(sid, 0) != count or heads.get(sid) != head:
            broken.append({"noteId": None, "sessionId": sid, "reasons": ["head_mismatch"],
                           "expectedCount": count, "foundCount": counts.get(sid, 0)})
    return {"ok": not broken, "verified": not broken, "checked": checked, "sessions": len(counts), "broken": broken}
