"""Agents, sessions and notes shared by a team (docs/team.md).

An agent and its sessions live on one host: its reaper (pid + start time) decides the agent's
death, and its SQLite keeps them as in local mode. The host publishes them to the team: each
agent in the `agents` bucket, each session (with its file claims) in the `sessions` bucket, and
each note, sealed with the team key (AES-256-GCM, associated data = its position and session,
never the team key itself), on `pd.<space>.notes.<session>` with a hash chain of its own
(keyed by the team key), so any host of the team decrypts and verifies it.

Publishing is replication of the host's own records, idempotent: a change marks the record
dirty; the op that made it answers once JetStream acknowledged the flush (`acked`); a flush
that fails puts the records back, and every (re)connect publishes all of them again. Heartbeats
are only marked: they go out in one batch every `team_heartbeat_ms`, so the local heartbeat
path stays as fast as in local mode.

A host whose daemon stopped beating for `team_host_timeout_ms` has its agents declared dead
by the surviving hosts: each agent record is updated with compare-and-set on its revision, so
exactly one host declares each, and that host queues the agent's active session for salvage.
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
from pdcore.state.base import Await
from pdcore.state.trie import matches
from pdcore.team.keyfile import read_key_file
from pdcore.team.link import TeamLink, stream_full, team_full, team_unavailable, ttl_seconds
from pdcore.team.locks import lock_kv_key, lock_name
from pdcore.team.space import AGENTS, NOTES, SERVICES, SESSIONS, bucket_name, stream_name

log = logging.getLogger("pd.team")

_WRONG_LAST = (10071, 10164)
_NOTE_COLUMNS = ("id, session_id, agent_id, type, created_at, CAST(nonce AS BLOB), CAST(ciphertext AS BLOB), "
                 "prev_hash, hash")


def _clock() -> int:
    return int(time.time() * 1000)


def _dump(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


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
        self._lock = asyncio.Lock()  # flushes go out one after another, in order
        self.notes_stream = stream_name(link.space, NOTES.short)
        link.watch(AGENTS.short, self._agent_changed)
        link.watch(SESSIONS.short, self._session_changed)
        link.watch(SERVICES.short, self._services_changed)
        link.on_ready.append(self._resync)
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
            return
        try:
            self.agents[agent_id] = (revision, json.loads(value))
        except ValueError:
            self.agents.pop(agent_id, None)

    def _session_changed(self, key: str, revision: int, value: bytes | None) -> None:
        if value is None:
            # only an ended session's record has a TTL: gone, its notes leave the team's stream too
            # (every host that sees it purges; the same purge twice is harmless)
            self.sessions.pop(key, None)
            if self.link.available:
                self.link.spawn(self._purge_notes, key)
            return
        try:
            self.sessions[key] = (revision, json.loads(value))
        except ValueError:
            self.sessions.pop(key, None)

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
        """The op's answer once JetStream holds what it changed (an Await), or the result when nothing is due."""
        if not self._pending():
            return result
        return self.link.call(self._flush, self._take(), True, then=lambda _: result)

    def kick(self) -> None:
        """Publish what is dirty now, nobody waiting (the reaper, heartbeats)."""
        if self._pending() and self.link.available:
            self.link.spawn(self._flush, self._take(), False)

    # -- publishing -------------------------------------------------------------------------------
    async def _flush(self, batch: tuple[set, set, set, set], waited: bool) -> None:
        """Publish a batch of dirty records. A full notes stream holds back only the notes (they stay dirty);
        an op that waits (`waited`) is answered team_full when a note it added is one of them."""
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
        if waited and held_back & fresh:
            raise self._notes_full()

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
        kv = self.link.buckets[AGENTS.short]
        agent = self.root.agents.get_agent(agent_id)
        if agent is None:
            seen = self.agents.get(agent_id)
            if seen is not None and seen[1].get("host") == self.host:
                await kv.delete(lock_kv_key(agent_id))
            return
        seen = self.agents.get(agent_id)
        if (seen is not None and seen[1].get("host") != self.host and seen[1].get("diedAt") is None
                and agent.dead_at is not None):
            return  # it registered again on another host since: that host owns the record now
        record = self.agent_record(agent)
        ttl = ttl_seconds(self.config.agent_dead_retention_ms) if agent.dead_at is not None else None
        await self.link.js.publish(f"$KV.{bucket_name(self.link.space, AGENTS.short)}.{lock_kv_key(agent_id)}",
                                   _dump(record), msg_ttl=ttl)

    async def _put_session(self, sid: str) -> None:
        session = self.root.sessions.find(sid)
        if session is None:
            return
        record = session.to_dict()
        shared, head, _ = self.note_heads.get(sid, (0, GENESIS, 0))
        record.update(host=self.host, sharedNotes=shared, notesHead=head, notesSealed=self.cipher is not None)
        ttl = None if session.active else ttl_seconds(self.config.agent_dead_retention_ms)
        await self.link.js.publish(f"$KV.{bucket_name(self.link.space, SESSIONS.short)}.{sid}", _dump(record),
                                   msg_ttl=ttl)
        await self.root.sessions.team_claims.sync_session(session)

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
        info = await self.link.js.stream_info(self.notes_stream, subjects_filter=prefix + ">")
        cutoff = _clock() - self.config.agent_dead_retention_ms
        for subject in info.state.subjects or {}:
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
        if self.link.ready_at is None or now - self.link.ready_at < self.config.team_host_timeout_ms:
            return  # the hosts seen so far may not be every host yet
        for host in {r.get("host") for _, r in self.agents.values() if r.get("diedAt") is None}:
            if host and host != self.host and host not in self.declaring and not self._host_alive(host, now):
                self.declaring.add(host)
                self.link.spawn(self._declare_dead, host)

    def _host_alive(self, host: str, now: int) -> bool:
        beat = self.link.hosts.get(host)
        return beat is not None and now - int(beat.get("ts", 0)) < self.config.team_host_timeout_ms

    async def _declare_dead(self, host: str) -> None:
        """Declare the agents of a vanished host dead; compare-and-set makes exactly one host declare each."""
        try:
            kv = self.link.buckets[AGENTS.short]
            now = _clock()
            reason = f"host {host} stopped beating"
            for agent_id, (revision, record) in list(self.agents.items()):
                if record.get("host") != host or record.get("diedAt") is not None:
                    continue
                dead = {**record, "diedAt": now, "deadReason": reason, "status": "dead", "liveness": "dead",
                        "isActive": False, "declaredBy": self.host}
                try:
                    await kv.update(lock_kv_key(agent_id), _dump(dead), last=revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # another host declared it (or it beat again)
                log.warning("event=team.agent_declared_dead agent=%s host=%s", agent_id, host)
                sid = record.get("sessionId")
                session = self.sessions.get(sid)[1] if sid and sid in self.sessions else None
                if session is not None and session.get("status") == "active":
                    await self.root.salvage.team.create_for_dead_session(session, record, now, reason)
                    await self._end_remote_session(sid, "abandoned")
        finally:
            self.declaring.discard(host)

    async def _end_remote_session(self, sid: str, status: str) -> None:
        seen = self.sessions.get(sid)
        if seen is None:
            return
        revision, record = seen
        ended = {**record, "status": status, "phase": "abandoned", "endedAt": _clock(), "files": []}
        try:  # compare-and-set, with the TTL of an ended session's record (then its notes leave too)
            await self.link.js.publish(f"$KV.{bucket_name(self.link.space, SESSIONS.short)}.{sid}", _dump(ended),
                                       msg_ttl=ttl_seconds(self.config.agent_dead_retention_ms),
                                       headers={"Nats-Expected-Last-Subject-Sequence": str(revision)})
        except nats.js.errors.APIError as err:
            if err.err_code not in _WRONG_LAST:
                raise
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
