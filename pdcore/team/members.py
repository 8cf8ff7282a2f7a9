"""Agents, sessions and notes shared by a team (docs/team.md).

An agent and its sessions live on one host: its reaper (pid + start time) decides the agent's
death, and its SQLite keeps them as in local mode. The host publishes them to the team: each
agent in the `agents` bucket, each session (with its file claims) in the `sessions` bucket, and
each note, sealed with the team key (AES-256-GCM, associated data = its position and session,
never the team key itself), on `pd.<space>.notes.<session>` with a hash chain of its own
(keyed by the team key), so any host of the team decrypts and verifies it.

Publishing is replication of the host's own records, idempotent: a change marks the record
dirty; the op that made it answers once JetStream acknowledged the flush (`acked`), or, when the
link fails after the change was made here, succeeds with `teamPending: true`; a flush that fails
puts the records back, and the next tick or every (re)connect publishes them again. Heartbeats
are only marked: they go out in one batch every `team_heartbeat_ms`, so the local heartbeat
path stays as fast as in local mode. Agent and session records are written with compare-and-set
on the revision this host last wrote or saw, so a verdict of another host is never overwritten
unseen.

A host from which no new heartbeat arrived for `team_host_timeout_ms` (judged on this host's
monotonic clock, never by the `ts` it wrote) has its agents declared dead by the surviving hosts:
each agent record is updated with compare-and-set on its revision, so exactly one host declares
each, and that host queues the agent's active session for salvage. When the host comes back it
applies the verdict to its own agents (as its reaper would, without a second salvage entry).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
from typing import Any

import nats.js.errors

from pdcore.crypto import GENESIS, NoteCipher
from pdcore.errors import OpError
from pdcore.state.base import Await, Ctx
from pdcore.state.trie import matches
from pdcore.team.keyfile import read_key_file
from pdcore.team.link import (
    TeamLink,
    stream_full,
    stream_subjects,
    team_full,
    team_unavailable,
    ttl_seconds,
)
from pdcore.team.locks import lock_kv_key, lock_name
from pdcore.team.space import AGENTS, NOTES, SERVICES, SESSIONS, bucket_name, stream_name

log = logging.getLogger("pd.team")

_WRONG_LAST = (10071, 10164)
_CAS_ROUNDS = 8  # a record of this host written by another host meanwhile: read it, decide, write again
_NOTE_COLUMNS = ("id, session_id, agent_id, type, created_at, CAST(nonce AS BLOB), CAST(ciphertext AS BLOB), "
                 "prev_hash, hash")


def _clock() -> int:
    return int(time.time() * 1000)


def _dump(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _consume(task: asyncio.Task) -> None:
    """Retrieve the outcome of a flush nobody waits for any more (its failure is logged, not lost)."""
    if not task.cancelled() and task.exception() is not None:
        log.info("event=team.flush_failed error=%s", task.exception())


class TeamMembers:
    """The team side of agents, sessions and notes; see the module doc."""

    def __init__(self, root: Any, link: TeamLink) -> None:
        self.root = root
        self.config = root.config
        self.link = link
        self.host = link.host_id
        key_file = self.config.team_key_file
        self.cipher = NoteCipher(read_key_file(key_file)) if key_file else None
        self.agents: dict[str, tuple[int, dict]] = {}  # agent id -> (revision, record), from the watch
        self.sessions: dict[str, tuple[int, dict]] = {}  # session id -> (revision, record), from the watch
        self.services: dict[str, dict] = {}  # host id -> its services record, from the watch
        self.dirty_agents: set[str] = set()
        self.dirty_sessions: set[str] = set()
        self.dirty_notes: set[str] = set()  # sessions whose notes the team has not all got yet
        self.dirty_salvage: set[int] = set()  # local salvage rows to publish (create-if-absent)
        self.beats: set[str] = set()  # agents that beat since the last batch
        self.note_heads: dict[str, tuple[int, str, int]] = {}  # session -> (notes shared, head link, last seq)
        self.unshared: set[str] = set()  # sessions whose notes met the full notes stream and wait for room
        self.declaring: set[str] = set()  # hosts whose agents this host is declaring dead right now
        # session id -> when this host (monotonic s) first saw it active under a dead agent of a vanished host
        self.orphans: dict[str, float] = {}
        self.finishing: set[str] = set()  # orphaned sessions this host is queueing for salvage right now
        # the revision of this host's last write of each of its agent / session records: the next write
        # is a compare-and-set on it, so a verdict another host wrote meanwhile is never overwritten unseen
        self.agent_revs: dict[str, int] = {}
        self.session_revs: dict[str, int] = {}
        self._lock = asyncio.Lock()  # flushes go out one after another, in order
        self.notes_stream = stream_name(link.space, NOTES.short)
        link.watch(AGENTS.short, self._agent_changed)
        link.watch(SESSIONS.short, self._session_changed)
        link.watch(SERVICES.short, self._services_changed)
        link.on_ready.append(self._resync)
        link.on_down.append(self._link_down)
        self._down_waiters: set[asyncio.Future] = set()  # one per op waiting for its flush's acknowledgement
        self._ticking = False  # the tick starts with the first connection
        self._services_sent: list[dict] | None = None
        self._services_at = 0

    # -- watches ----------------------------------------------------------------------------------
    def _agent_changed(self, key: str, revision: int, value: bytes | None) -> None:
        try:
            agent_id = lock_name(key)
        except ValueError:
            return
        if value is None:
            self.agents.pop(agent_id, None)
            self.agent_revs.pop(agent_id, None)
            return
        try:
            record = json.loads(value)
        except ValueError:
            self.agents.pop(agent_id, None)
            return
        self.agents[agent_id] = (revision, record)
        agent = self.root.agents.get_agent(agent_id)
        if agent is not None and agent.dead_at is None and self._is_verdict(record, agent):
            self._apply_verdict(agent_id, record)

    def _session_changed(self, key: str, revision: int, value: bytes | None) -> None:
        if value is None:
            # only an ended session's record has a TTL: gone, its notes leave the team's stream too
            # (every host that sees it purges; the same purge twice is harmless)
            self.sessions.pop(key, None)
            self.session_revs.pop(key, None)
            if self.link.available:
                self.link.spawn(self._purge_notes, key)
            return
        try:
            record = json.loads(value)
        except ValueError:
            self.sessions.pop(key, None)
            return
        self.sessions[key] = (revision, record)
        self._session_verdict(key, record)

    def _services_changed(self, key: str, revision: int, value: bytes | None) -> None:
        if value is None:
            self.services.pop(key, None)
            return
        try:
            self.services[key] = json.loads(value)
        except ValueError:
            self.services.pop(key, None)

    # -- what handlers call -----------------------------------------------------------------------
    def require(self) -> None:
        """Refuse a team op before it changes anything while NATS is away."""
        if not self.link.available:
            raise team_unavailable(self.link.last_error or "not connected")

    def require_room_for_notes(self) -> None:
        """Refuse a new note before it is written while notes of this host wait for room in the full notes stream."""
        if self.unshared:
            raise self._notes_full()

    def _notes_full(self) -> OpError:
        return team_full("notes", "team_notes_max_bytes", self.config.team_notes_max_bytes,
                         "this host keeps the notes it wrote (its chains are whole here) and shares them once notes "
                         "of ended sessions have expired (agent_dead_retention_ms); new notes are refused until then")

    def agent_changed(self, agent_id: str) -> None:
        self.dirty_agents.add(agent_id)

    def agent_beat(self, agent_id: str) -> None:
        self.beats.add(agent_id)

    def session_changed(self, session_id: str) -> None:
        self.dirty_sessions.add(session_id)

    def note_added(self, session_id: str) -> None:
        self.dirty_notes.add(session_id)
        self.dirty_sessions.add(session_id)

    def salvage_queued(self, row_id: int) -> None:
        self.dirty_salvage.add(row_id)

    def _pending(self) -> bool:
        return bool(self.dirty_agents or self.dirty_sessions or self.dirty_notes or self.dirty_salvage)

    def _take(self) -> tuple[set, set, set, set]:
        batch = (self.dirty_agents, self.dirty_sessions, self.dirty_notes, self.dirty_salvage)
        self.dirty_agents, self.dirty_sessions, self.dirty_notes, self.dirty_salvage = set(), set(), set(), set()
        return batch

    def acked(self, result: Any) -> Any:
        """The op's answer once JetStream holds what it changed (an Await), or the result when nothing is due.

        The op has changed this host's database already (durable). If the link fails before
        JetStream acknowledges (down, timeout), the answer is still the op's result, with
        `teamPending: true`: the records stay dirty and go out at the next tick or reconnect, so a
        caller that retried would do the change twice (a second note) for nothing."""
        if not self._pending():
            return result
        pending = {**result, "teamPending": True}
        if not self.link.available:  # dropped since the op's require(): published on reconnect (resync)
            return pending
        timeout_ms = self.config.team_op_timeout_ms
        return Await(self._flush_for(self._take(), result, pending), _clock() + timeout_ms + 250, None, pending)

    async def _flush_for(self, batch: tuple[set, set, set, set], result: Any, pending: Any) -> Any:
        """Flush for one op: its result once acknowledged, else `pending` (the records stay dirty):
        at once when the link goes down meanwhile, else when the flush failed or timed out."""
        loop = asyncio.get_running_loop()
        flush = loop.create_task(self.link.guard(self._flush(batch)))
        down = loop.create_future()
        self._down_waiters.add(down)
        try:
            await asyncio.wait((flush, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._down_waiters.discard(down)
            if not flush.done():  # it ends by itself (team_op_timeout_ms); a failure puts the records back
                flush.add_done_callback(_consume)
        if not flush.done():
            return pending
        err = flush.exception()
        if err is None:
            return result if flush.result() else pending  # False: its note waits for room in the notes stream
        if isinstance(err, OpError) and err.code == "team_unavailable":
            return pending
        raise err

    def _link_down(self) -> None:
        """The link dropped: ops waiting for their flush's acknowledgement answer `teamPending` now."""
        for fut in self._down_waiters:
            if not fut.done():
                fut.set_result(None)
        self._down_waiters.clear()

    def kick(self) -> None:
        """Publish what is dirty now, nobody waiting (the reaper, heartbeats)."""
        if self._pending() and self.link.available:
            self.link.spawn(self._flush, self._take())

    # -- publishing -------------------------------------------------------------------------------
    async def _flush(self, batch: tuple[set, set, set, set]) -> bool:
        """Publish a batch of dirty records; False when the full notes stream held back a note this batch
        brought (only notes are held back: they stay dirty, and the op that added one answers teamPending)."""
        agents, sessions, notes, salvage = batch
        held_back: set[str] = set()
        async with self._lock:
            try:
                fresh = notes - self.unshared  # notes not met by the full stream before this flush
                for sid in sorted(notes):  # before the session records, which carry the notes' head
                    try:
                        await self._sync_notes(sid)
                    except nats.js.errors.APIError as err:
                        if not stream_full(err):
                            raise
                        held_back.add(sid)
                self._held_back(notes, held_back)
                for agent_id in sorted(agents):
                    await self._put_agent(agent_id)
                for sid in sorted(sessions):
                    await self._put_session(sid)
                for row_id in sorted(salvage):
                    await self.root.salvage.team.create_from_row(row_id)
            except BaseException:
                self.dirty_agents |= agents
                self.dirty_sessions |= sessions
                self.dirty_notes |= notes
                self.dirty_salvage |= salvage
                raise
        return not held_back & fresh

    def _held_back(self, tried: set[str], held_back: set[str]) -> None:
        """Sessions whose notes the full notes stream refused stay dirty (retried every tick) and block new notes."""
        was = bool(self.unshared)
        self.unshared = (self.unshared - tried) | held_back
        self.dirty_notes |= held_back
        if bool(self.unshared) != was:
            log.warning("event=team.notes_stream_full full=%s sessions=%d limit=%d", bool(self.unshared),
                        len(self.unshared), self.config.team_notes_max_bytes)

    def agent_record(self, agent: Any) -> dict:
        now = _clock()
        record = self.root.agents.describe(agent, now)
        session = self.root.sessions.active_for_agent(agent.id)
        record.update(host=self.host, hostname=self.link.hosts.get(self.host, {}).get("hostname"),
                      sessionId=session.id if session else None)
        return record

    async def _put_agent(self, agent_id: str) -> None:
        key = lock_kv_key(agent_id)
        for _ in range(_CAS_ROUNDS):
            agent = self.root.agents.get_agent(agent_id)
            seen = self.agents.get(agent_id)
            if agent is None:
                if seen is not None and seen[1].get("host") == self.host:
                    await self.link.buckets[AGENTS.short].delete(key)
                return
            if (seen is not None and seen[1].get("host") != self.host and seen[1].get("diedAt") is None
                    and agent.dead_at is not None):
                return  # it registered again on another host since: that host owns the record now
            if seen is not None and self._is_verdict(seen[1], agent):
                if agent.dead_at is None:
                    self._apply_verdict(agent_id, seen[1])
                return  # the team's record is the verdict on this registration: it stands as written
            ttl = ttl_seconds(self.config.agent_dead_retention_ms) if agent.dead_at is not None else None
            if await self._write_own(AGENTS.short, key, agent_id, self.agents, self.agent_revs,
                                     self.agent_record(agent), ttl):
                return
        log.warning("event=team.agent_not_published agent=%s reason=contended", agent_id)
        self.dirty_agents.add(agent_id)  # the next tick tries again

    async def _put_session(self, sid: str) -> None:
        for _ in range(_CAS_ROUNDS):
            session = self.root.sessions.find(sid)
            if session is None:
                return
            seen = self.sessions.get(sid)
            if seen is not None and self._session_verdict(sid, seen[1]):
                continue  # ended here now: publish that
            record = session.to_dict()
            shared, head, _ = self.note_heads.get(sid, (0, GENESIS, 0))
            record.update(host=self.host, sharedNotes=shared, notesHead=head, notesSealed=self.cipher is not None)
            if seen is not None and seen[1].get("endedBy"):
                record["endedBy"] = seen[1]["endedBy"]  # the host that declared its agent dead ended it first
            ttl = None if session.active else ttl_seconds(self.config.agent_dead_retention_ms)
            if await self._write_own(SESSIONS.short, sid, sid, self.sessions, self.session_revs, record, ttl):
                await self.root.sessions.team_claims.sync_session(session)
                return
        log.warning("event=team.session_not_published session=%s reason=contended", sid)
        self.dirty_sessions.add(sid)

    async def _write_own(self, short: str, key: str, name: str, copies: dict[str, tuple[int, dict]],
                         revs: dict[str, int], record: dict, ttl: int | None) -> bool:
        """Write one of this host's records with compare-and-set on the revision it last wrote or saw.
        False when another write came first (a verdict, a newer registration, an expiry): the watch's
        copy then holds what the bucket holds, for the caller to look at and decide again."""
        seen = copies.get(name)
        known = max(revs.get(name, 0), seen[0] if seen is not None else 0)
        published, revision, current = await self._cas_publish(short, key, record, ttl, known)
        revs[name] = revision
        if not published:
            if current is None:  # deleted or expired meanwhile: written again over the marker next round
                copies.pop(name, None)
            else:
                copies[name] = (revision, current)
        return published

    async def _cas_publish(self, short: str, key: str, record: dict, ttl: int | None,
                           known: int) -> tuple[bool, int, dict | None]:
        """Write `record` under `key` of bucket `short` if its last revision is still `known` (0: absent).
        (True, new revision, None) when written; (False, its revision, its record or None) when another
        write came first."""
        subject = f"$KV.{bucket_name(self.link.space, short)}.{key}"
        try:
            ack = await self.link.js.publish(subject, _dump(record), msg_ttl=ttl,
                                             headers={"Nats-Expected-Last-Subject-Sequence": str(known)})
        except nats.js.errors.APIError as err:
            if err.err_code not in _WRONG_LAST:
                raise
            revision, current = await self.link.latest(short, key)
            return False, revision, current
        return True, ack.seq, None

    # -- a verdict of another host on this host's agents -------------------------------------------
    def _is_verdict(self, record: dict, agent: Any) -> bool:
        """`record` (the team's) says another host declared this registration of our agent dead."""
        by = record.get("declaredBy")
        return (record.get("host") == self.host and record.get("diedAt") is not None and by is not None
                and by != self.host and record.get("registeredAt") == agent.registered_at)

    def _apply_verdict(self, agent_id: str, record: dict) -> None:
        """Another host declared this host's agent dead while it could not hear this host (a partition,
        a paused daemon). The verdict stands: the agent dies here as the reaper would have it die,
        except that its session is not queued for salvage again (the declarer queued it in the team's
        bucket): the session ends as abandoned, then `mark_dead` releases what the agent held."""
        agents, sessions = self.root.agents, self.root.sessions
        agent = agents.get_agent(agent_id)
        if agent is None or agent.dead_at is not None:
            return
        by = record.get("declaredBy") or record.get("endedBy")
        reason = f"declared dead by host {by} ({record.get('deadReason') or 'this host stopped beating'})"
        ctx = Ctx(self.root.clock(), source="internal")
        session = sessions.active_for_agent(agent_id)
        if session is not None:
            sessions.apply_end(ctx, session, "abandoned", reason=reason)
        agents.mark_dead(ctx, agent, reason)
        log.warning("event=team.verdict_applied agent=%s declared_by=%s", agent_id, by)
        self.link.after_change()

    def _session_verdict(self, sid: str, record: dict) -> bool:
        """The team's record of one of this host's active sessions was ended by the host that declared
        its agent dead: apply the verdict here. True when it changed something."""
        by = record.get("endedBy")
        if record.get("host") != self.host or not by or by == self.host or record.get("status") == "active":
            return False
        session = self.root.sessions.active.get(sid)
        if session is None:
            return False
        agent = self.root.agents.get_agent(session.agent_id) if session.agent_id else None
        if agent is not None and agent.dead_at is None:
            self._apply_verdict(agent.id, {"declaredBy": by, "deadReason": record.get("deadReason")})
        else:
            self.root.sessions.apply_end(Ctx(self.root.clock(), source="internal"), session, "abandoned",
                                         reason=f"ended by host {by}, which declared its agent dead")
            self.link.after_change()
        return True

    async def _notes_head(self, sid: str) -> tuple[int, str, int]:
        """(notes the team holds for the session, the last one's link, its stream sequence)."""
        try:
            msg = await self.link.js.get_msg(self.notes_stream, subject=self.link.subject(NOTES.short, sid))
        except nats.js.errors.NotFoundError:
            return 0, GENESIS, 0
        note = json.loads(msg.data)
        return int(note["n"]), note["hash"], msg.seq

    async def _sync_notes(self, sid: str) -> None:
        """Publish the session's local notes the team does not hold yet, in order, each with
        compare-and-set on the subject's last sequence (so a repeat after a lost ack adds nothing)."""
        if self.cipher is None:
            return
        if sid not in self.root.sessions.active:
            ended = self.root.store.read_one("SELECT ended_at FROM sessions WHERE id=?", (sid,))
            if ended is not None and ended[0] is not None and ended[0] <= _clock() - self.config.agent_dead_retention_ms:
                return  # its record has expired and its notes left the team: nothing to share any more
        subject = self.link.subject(NOTES.short, sid)
        notes = self.root.notes
        for _ in range(8):
            shared, head, last = self.note_heads.get(sid) or await self._notes_head(sid)
            rows = self.root.store.read(f"SELECT {_NOTE_COLUMNS} FROM notes WHERE session_id=? ORDER BY id "
                                        "LIMIT -1 OFFSET ?", (sid, shared))
            try:
                for row in rows:
                    note_id, _, agent, type_, created_at, nonce, ciphertext = row[:7]
                    text = notes.cipher.decrypt(note_id, sid, nonce, ciphertext)
                    if text is None:
                        log.error("event=team.note_undecryptable note=%s session=%s", note_id, sid)
                        return
                    n = shared + 1
                    sealed_nonce, sealed = self.cipher.encrypt(n, sid, text)
                    link = self.cipher.link(head, n, sid, agent, type_, created_at, sealed_nonce, sealed)
                    body = {"n": n, "sessionId": sid, "noteId": note_id, "host": self.host, "agentId": agent,
                            "type": type_, "createdAt": created_at, "prev": head, "hash": link,
                            "nonce": base64.b64encode(sealed_nonce).decode(), "ct": base64.b64encode(sealed).decode()}
                    ack = await self.link.js.publish(subject, _dump(body),
                                                     headers={"Nats-Expected-Last-Subject-Sequence": str(last)})
                    shared, head, last = n, link, ack.seq
                    self.note_heads[sid] = (shared, head, last)
                return
            except nats.js.errors.APIError as err:
                if err.err_code not in _WRONG_LAST:
                    raise
                self.note_heads.pop(sid, None)  # the team holds more than we thought: read its head again

    async def _purge_notes(self, sid: str) -> None:
        """Drop an ended session's notes from the team's stream (its record expired: agent_dead_retention_ms)."""
        if self.root.sessions.active.get(sid) is None:
            await self.link.js.purge_stream(self.notes_stream, subject=self.link.subject(NOTES.short, sid))
            self.note_heads.pop(sid, None)

    async def _sweep_notes(self) -> None:
        """At each (re)connect: purge the notes of this host's sessions that ended more than
        agent_dead_retention_ms ago (their record's expiry may have passed while no host watched)."""
        if self.cipher is None:
            return
        prefix = self.link.subject(NOTES.short, "")
        cutoff = _clock() - self.config.agent_dead_retention_ms
        async for subject in stream_subjects(self.link.nc, self.notes_stream, prefix + ">",
                                             self.config.team_op_timeout_ms / 1000):
            sid = subject[len(prefix):]
            row = self.root.store.read_one("SELECT status, ended_at FROM sessions WHERE id=?", (sid,))
            if row is not None and row[0] != "active" and row[1] is not None and row[1] <= cutoff:
                await self._purge_notes(sid)

    # -- reading the team's notes -----------------------------------------------------------------
    async def read_notes(self, sid: str, limit: int) -> list[dict]:
        """Every note the team holds for session `sid` (at most `limit`), decrypted, in order."""
        subject = self.link.subject(NOTES.short, sid)
        out: list[dict] = []
        seq = 1
        while len(out) < limit:
            try:
                msg = await self.link.js.get_msg(self.notes_stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            out.append({**json.loads(msg.data), "seq": msg.seq})
            seq = msg.seq + 1
        return out

    def note_view(self, note: dict) -> dict:
        content = self._open(note)
        return {"id": note["noteId"], "noteId": note["noteId"], "n": note["n"], "sessionId": note["sessionId"],
                "agentId": note["agentId"], "type": note["type"], "createdAt": note["createdAt"], "content": content,
                "hash": note["hash"], "host": note["host"], "integrity": "ok" if content is not None else "failed"}

    def _open(self, note: dict) -> str | None:
        if self.cipher is None:
            return None
        try:
            nonce, ct = base64.b64decode(note["nonce"]), base64.b64decode(note["ct"])
        except (ValueError, KeyError):
            return None
        return self.cipher.decrypt(int(note["n"]), note["sessionId"], nonce, ct)

    def verify_notes(self, sid: str, notes: list[dict], record: dict | None) -> dict:
        """Walk the team chain of one session: link by link, decrypt each, then the head the owner published."""
        if self.cipher is None:
            raise OpError("invalid_state", "this host has no team key (team.key_file), so it cannot open or verify "
                          "shared notes; pd team join ... --key-file FILE", "sessionId")
        broken: list[dict] = []
        head, expected_n = GENESIS, 1
        for note in notes:
            reasons = []
            try:
                nonce, ct = base64.b64decode(note["nonce"]), base64.b64decode(note["ct"])
                if note["prev"] != head or int(note["n"]) != expected_n:
                    reasons.append("chain_broken")
                if self.cipher.link(note["prev"], int(note["n"]), sid, note["agentId"], note["type"],
                                    note["createdAt"], nonce, ct) != note["hash"]:
                    reasons.append("hash_mismatch")
                if self.cipher.decrypt(int(note["n"]), sid, nonce, ct) is None:
                    reasons.append("decrypt_failed")
            except (KeyError, ValueError, TypeError):
                reasons.append("malformed")
            if reasons:
                broken.append({"noteId": note.get("noteId"), "n": note.get("n"), "sessionId": sid,
                               "reasons": reasons})
            head, expected_n = note.get("hash", head), expected_n + 1
        if record is not None:
            count, want = int(record.get("sharedNotes") or 0), record.get("notesHead") or GENESIS
            if len(notes) < count or (len(notes) == count and head != want):
                broken.append({"noteId": None, "sessionId": sid, "reasons": ["head_mismatch"],
                               "expectedCount": count, "foundCount": len(notes)})
        return {"ok": not broken, "verified": not broken, "checked": len(notes), "sessions": 1 if notes else 0,
                "broken": broken, "team": True}

    def remote_session(self, sid: str) -> dict | None:
        """The record of a session of another host, from the watch's copy of the bucket."""
        seen = self.sessions.get(sid)
        return seen[1] if seen is not None and seen[1].get("host") != self.host else None

    def remote_sessions(self) -> list[dict]:
        return [r for _, r in self.sessions.values() if r.get("host") != self.host]

    def remote_agent(self, agent_id: str) -> dict | None:
        seen = self.agents.get(agent_id)
        return seen[1] if seen is not None and seen[1].get("host") != self.host else None

    def session_with_notes(self, sid: str, limit: int) -> Await:
        """sessions.get for a session of another host: its record and its notes, read from JetStream."""
        record = self.remote_session(sid)
        assert record is not None

        def then(notes: list[dict]) -> dict:
            views = [self.note_view(n) for n in notes[-limit:]] if limit else []
            return {"session": record, "notes": views, "files": record.get("files", [])}

        return self.link.call(self.read_notes, sid, int(record.get("sharedNotes") or 0) + 1000, then=then)

    # -- the tick: heartbeats in one batch, vanished hosts ----------------------------------------
    def _tick(self) -> None:
        now = _clock()
        self.root.timers.add(now + self.config.team_heartbeat_ms, self._tick)
        if not self.link.available:
            return
        self.dirty_agents |= {a for a in self.beats if self.root.agents.get_agent(a) is not None}
        self.beats.clear()
        self.kick()
        self._publish_services(now)
        ready = self.link.ready_mono
        if ready is None or (time.monotonic() - ready) * 1000 < self.config.team_host_timeout_ms:
            return  # the hosts seen so far may not be every host yet (nor their latest beats)
        for host in {r.get("host") for _, r in self.agents.values() if r.get("diedAt") is None}:
            if host and host != self.host and host not in self.declaring and not self.link.host_alive(host):
                self.declaring.add(host)
                self.link.spawn(self._declare_dead, host)
        self._finish_orphans()

    def _finish_orphans(self) -> None:
        """A dead agent of a vanished host whose session the team still shows active: the host that
        declared it (or the agent's own host, after its reaper) stopped between the agent's record and
        the session's salvage. Once this host has seen that state for `team_host_timeout_ms`, it queues
        the salvage and ends the session itself (both idempotent: create-if-absent, compare-and-set)."""
        now = time.monotonic()
        current: set[str] = set()
        for _, record in list(self.agents.values()):
            host, sid = record.get("host"), record.get("sessionId")
            if record.get("diedAt") is None or not sid or not host or host == self.host or self.link.host_alive(host):
                continue
            seen = self.sessions.get(sid)
            if seen is None or seen[1].get("status") != "active" or seen[1].get("host") != host:
                continue
            current.add(sid)
            first = self.orphans.setdefault(sid, now)
            if (now - first) * 1000 >= self.config.team_host_timeout_ms and sid not in self.finishing:
                self.finishing.add(sid)
                self.link.spawn(self._finish_orphan, sid, record, seen[1])
        self.orphans = {sid: at for sid, at in self.orphans.items() if sid in current}

    async def _finish_orphan(self, sid: str, agent: dict, session: dict) -> None:
        try:
            reason = agent.get("deadReason") or f"host {agent.get('host')} stopped beating"
            log.warning("event=team.orphan_session_salvaged session=%s agent=%s", sid, agent.get("id"))
            await self._salvage_remote_session(session, agent, int(agent["diedAt"]), reason)
        finally:
            self.finishing.discard(sid)

    async def _declare_dead(self, host: str) -> None:
        """Declare the agents of a vanished host dead; compare-and-set makes exactly one host declare each."""
        try:
            now = _clock()
            reason = f"host {host} stopped beating"
            retention = ttl_seconds(self.config.agent_dead_retention_ms)
            for agent_id, (revision, record) in list(self.agents.items()):
                if record.get("host") != host or record.get("diedAt") is not None:
                    continue
                dead = {**record, "diedAt": now, "deadReason": reason, "status": "dead", "liveness": "dead",
                        "isActive": False, "declaredBy": self.host}
                published, _, _ = await self._cas_publish(AGENTS.short, lock_kv_key(agent_id), dead, retention,
                                                          revision)
                if not published:
                    continue  # another host declared it (or it beat again)
                log.warning("event=team.agent_declared_dead agent=%s host=%s", agent_id, host)
                sid = record.get("sessionId")
                session = self.sessions.get(sid)[1] if sid and sid in self.sessions else None
                if session is not None and session.get("status") == "active":
                    await self._salvage_remote_session(session, record, now, reason)
        finally:
            self.declaring.discard(host)

    async def _salvage_remote_session(self, session: dict, agent: dict, died_at: int, reason: str) -> None:
        """Queue a dead agent's session of another host for salvage (create-if-absent), then end it in the
        team's bucket (compare-and-set, with the TTL of an ended session) and drop its file claims."""
        await self.root.salvage.team.create_for_dead_session(session, agent, died_at, reason)
        sid = session["id"]
        seen = self.sessions.get(sid)
        if seen is None:
            return
        revision, record = seen
        ended = {**record, "status": "abandoned", "phase": "abandoned", "endedAt": _clock(), "files": [],
                 "endedBy": self.host, "deadReason": reason}
        await self._cas_publish(SESSIONS.short, sid, ended, ttl_seconds(self.config.agent_dead_retention_ms),
                                revision)
        await self.root.sessions.team_claims.drop_session(record.get("project"), sid)

    # -- after a (re)connect ---------------------------------------------------------------------
    def _resync(self) -> None:
        """Publish every record of this host again (what an outage may have kept back)."""
        if not self._ticking:
            self._ticking = True
            self.root.timers.add(_clock() + self.config.team_heartbeat_ms, self._tick)
        agents, sessions = self.root.agents, self.root.sessions
        self.dirty_agents |= set(agents.by_id)
        self.dirty_sessions |= set(sessions.active)
        self.dirty_notes |= set(sessions.active)
        # What the team still shows of this host but this host no longer has (the watches hold the
        # whole buckets by now): changes made here whose publishing a restart forgot (a teamPending
        # answer, a death the reaper found while the link was down) go out now too.
        for agent_id, (_, record) in list(self.agents.items()):
            if record.get("host") == self.host and record.get("diedAt") is None and agent_id not in agents.by_id:
                self.dirty_agents.add(agent_id)  # unregistered here: _put_agent deletes the team's record
        for sid, (_, record) in list(self.sessions.items()):
            if record.get("host") == self.host and record.get("status") == "active" and sid not in sessions.active:
                self.dirty_sessions.add(sid)  # ended here: _put_session publishes the end
        self.note_heads.clear()
        for row_id, in self.root.store.read("SELECT id FROM salvage WHERE status='pending'"):
            self.dirty_salvage.add(row_id)
        self.kick()
        self.link.spawn(self._sweep_notes)

    # -- services (pd find --team) ---------------------------------------------------------------
    async def _put_services(self, record: dict) -> None:
        """This host's services under its id; the key expires with the host timeout, so a vanished host leaves."""
        await self.link.js.publish(f"$KV.{bucket_name(self.link.space, SERVICES.short)}.{self.host}", _dump(record),
                                   msg_ttl=ttl_seconds(self.config.team_host_timeout_ms))

    def _publish_services(self, now: int) -> None:
        """Publish the services when they changed, and at least twice per host timeout."""
        services = [{"id": s.id, "port": s.port, "status": s.status} for s in self.root.ports.trie.values()]
        services.sort(key=lambda s: s["id"])
        if services != self._services_sent or now - self._services_at >= self.config.team_host_timeout_ms // 2:
            self._services_sent, self._services_at = services, now
            self.link.spawn(self._put_services, {"host": self.host, "hostname": socket.gethostname(),
                                                 "services": services, "ts": now})

    def services_of_team(self, pattern: str | None, status: str | None, limit: int) -> dict:
        """Every host's services as `host:port` (ports stay bound to their host), from the watch's copy."""
        self.require()
        found = []
        for host, record in sorted(self.services.items()):
            for svc in record.get("services", []):
                if (pattern is None or matches(pattern, svc["id"])) and (status is None or svc["status"] == status):
                    found.append({**svc, "host": host, "hostname": record.get("hostname"),
                                  "address": f"{record.get('hostname') or host}:{svc['port']}"})
        return {"services": found[:limit], "count": len(found)}
