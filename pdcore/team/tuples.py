"""The tuple space shared by a team: the space's `tuples` stream, mirrored on every host (docs/team.md).

Each tuple is one message on a subject of its own, `pd.<space>.tuples.<harbor>.<id>`; its stream
sequence is its id (so ids grow team-wide, and poll's `after` means the same on every host).
An `in` replaces the tuple by a **tombstone** on the same subject, published with "expected last
subject sequence" = the tuple's sequence: JetStream accepts exactly one such write, so exactly one
taker on any host wins; a loser tries the next match. The stream keeps one message per subject,
so the tombstone also discards the tuple; the tombstone carries the taken tuple, the taker and
its `requestId`, and lives `take_record_ttl_ms` on the server when it has one: the take record is
written in the very step that takes the tuple, so a repeat after a lost reply (on this host, after
a kill -9 and restart, or on another host) is answered from it. A take that ended here without an
answer marks its request id: its repeat first waits until the mirror holds all the stream holds,
so a tombstone whose acknowledgement was lost is found rather than a second tuple taken. So does
a take whose id is marked `<host id>:...` for another host (it was first sent there): its tombstone
may be stored but not yet in this host's mirror. Unmarked ids (the SDK's) cost no extra round trip.

Every host follows the stream with an ordered consumer into the local index of
pdcore.state.tuples (the mirror): `rd`, `scan`, `count`, `poll` read it, tuples appear there when
their message arrives and leave when their tombstone does (or their `expiresAt` passes; the
server drops the message after its TTL too). An `out` answers once JetStream acknowledged it and
the local mirror has it, so a host reads its own writes; another host sees it once its consumer
delivered it. Parked `rd`/`in`/`poll` wait on the usual keys, woken by the mirror.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import OrderedDict
from typing import Any

import nats.js.errors

from pdcore.errors import OpError
from pdcore.state.base import Await, Ctx, Park
from pdcore.state.takerecords import fingerprint
from pdcore.state.tuplepattern import Pattern
from pdcore.state.tuples import TupleRecord, out_keys, tuple_channel, wait_keys
from pdcore.team.link import ParkedKeys, TeamLink, team_unavailable, ttl_seconds
from pdcore.team.space import TUPLES, stream_name
from pdcore.team.takes import first_host

_WRONG_LAST = (10071, 10164)  # JetStream: "wrong last sequence" (another taker got there first)
TOMBSTONE_TTL_S = 300  # server life of a tombstone without a requestId: long enough for every mirror to see it
_SPARE = 8  # matches tried beyond `limit` in one round, for the ones another host takes first


def harbor_token(harbor: str | None) -> str:
    """A harbor as one subject token: `_` for the global space, else `h` + base64url (no padding)."""
    if harbor is None:
        return "_"
    return "h" + base64.urlsafe_b64encode(harbor.encode()).decode().rstrip("=")


class TeamTuples:
    """The team side of pdcore.state.tuples.Tuples: out and in on the stream, reads on the mirror."""

    def __init__(self, tuples: Any, link: TeamLink) -> None:
        self.tuples = tuples  # the Tuples primitive: its index is the mirror
        self.root = tuples.root
        self.config = tuples.config
        self.link = link
        self.subjects: dict[int, str] = {}  # tuple id (stream sequence) -> its subject
        self.claiming: set[int] = set()  # tuple ids a take of this host is trying right now
        self.inflight: set[str] = set()  # request ids of takes in flight on this host
        self.uncertain: OrderedDict[str, None] = OrderedDict()  # request ids whose take here ended unanswered
        # marked request ids first sent to another host, for which the mirror caught up with the stream
        self.checked: OrderedDict[str, None] = OrderedDict()
        self.records = link.takes  # requestId -> the take's record, from tombstones (every host's)
        self.waited = ParkedKeys()  # keys calls of this host parked on (woken when the link goes down)
        link.follow(TUPLES.short, self._opened, self._message)
        link.on_down.append(self._link_down)

    # -- the mirror --------------------------------------------------------------------------
    def _opened(self, last_seq: int) -> int:
        """(Re)build the mirror from the whole stream: what changed while away is then right too."""
        tuples = self.tuples
        for rec in list(tuples.by_id.values()):
            tuples._unindex(rec)
        self.subjects.clear()  # (the take records stay: the tombstones come again and add nothing new)
        return 1

    def _message(self, seq: int, subject: str, data: bytes, headers: dict) -> None:
        try:
            body = json.loads(data)
        except ValueError:
            return
        tuples = self.tuples
        if body.get("op") == "in":
            taken = tuples.by_id.get(body.get("of"))
            if taken is not None:
                tuples._unindex(taken)
                self.subjects.pop(taken.id, None)
            if body.get("requestId"):
                self._remember(body["requestId"], body.get("fp", ""), body.get("tuple") or {},
                               int(body.get("recordUntil") or 0))
            return
        expires_at = body.get("expiresAt")
        if expires_at is not None and expires_at <= self.root.clock():
            return
        rec = TupleRecord(seq, body.get("harbor"), body.get("fields") or [None], body.get("writtenBy"),
                          int(body.get("createdAt") or 0), expires_at)
        tuples._index(rec)
        self.subjects[seq] = subject
        tuples.last_id = max(tuples.last_id, seq)
        for key in out_keys(rec.harbor, rec.fields, rec.head):
            self.root.wake(key)

    def forget(self, rec: TupleRecord) -> None:
        """The mirror dropped `rec` by itself (its expiresAt passed)."""
        self.subjects.pop(rec.id, None)

    def _remember(self, request_id: str, fp: str, tuple_: dict, until: int) -> None:
        """Index one tombstone's record: a take of several tuples writes one tombstone per tuple."""
        record = self.records.put(request_id, "tuple.in", fp, [], until)
        if record[0] == "tuple.in" and all(t.get("id") != tuple_.get("id") for t in record[2]):
            record[2].append(tuple_)

    def _link_down(self) -> None:
        self.waited.wake_all(self.root)  # parked reads and takes retry now and fail with team_unavailable

    def require(self) -> None:
        """Reads answer from the mirror only while it follows the stream."""
        if not self.link.available:
            raise team_unavailable(self.link.last_error or "not connected")

    def park(self, harbor: str | None, pattern: Pattern, deadline: int, on_timeout: Any) -> Park:
        keys = wait_keys(harbor, pattern)
        self.waited.add(keys, deadline, self.root.clock())
        return Park(keys, deadline, on_timeout)

    # -- out ---------------------------------------------------------------------------------
    def out(self, ctx: Ctx, harbor: str | None, fields: list, written_by: str | None, ttl_ms: int | None) -> Await:
        expires_at = ctx.now + ttl_ms if ttl_ms else None
        body = {"op": "out", "harbor": harbor, "fields": fields, "writtenBy": written_by, "createdAt": ctx.now,
                "expiresAt": expires_at}
        subject = self.link.subject(TUPLES.short, harbor_token(harbor), secrets.token_hex(8))
        ttl_s = ttl_seconds(ttl_ms) if ttl_ms else None

        def then(seq: int) -> dict:
            out = {"id": seq, "harbor": harbor, "fields": fields, "writtenBy": written_by, "createdAt": ctx.now,
                   "expiresAt": expires_at}
            self.root.activity.record(ctx, "tuple.out", harbor, actor=written_by, id=seq, host=self.link.host_id)
            self.root.publish(tuple_channel(harbor), {"event": "tuple.out", "tuple": out}, written_by, ctx.now)
            return {"tuple": out}

        return self.link.call(self._publish, subject, json.dumps(body, separators=(",", ":")).encode(), ttl_s,
                              then=then)

    async def _publish(self, subject: str, payload: bytes, ttl_s: int | None) -> int:
        ack = await self.link.js.publish(subject, payload, msg_ttl=ttl_s)
        await self.link.applied(TUPLES.short, ack.seq)
        return ack.seq

    # -- in ----------------------------------------------------------------------------------
    def take(self, ctx: Ctx, pattern: Pattern, harbor: str | None, limit: int, wait_ms: int, actor: str | None,
             request_id: str | None, asked: dict) -> dict | Park | Await:
        """Take the oldest matches: a tombstone per tuple, compare-and-set on its subject; retry past losers."""
        if request_id is not None and request_id in self.inflight:  # its first try is still in flight here
            key = ("tuple.request", request_id)
            deadline = ctx.now + 2 * self.config.team_op_timeout_ms
            self.waited.add((key,), deadline, ctx.now)
            return Park((key,), deadline, team_unavailable("an earlier take with this requestId is still unanswered"))
        if request_id is not None and request_id in self.uncertain:
            # its tombstone may be stored but not in the mirror yet: catch up with the stream, then look
            del self.uncertain[request_id]
            return self.link.call(self._catch_up, request_id, then=lambda _: self.take(
                ctx, pattern, harbor, limit, wait_ms, actor, request_id, asked))
        repeat = self.recall(ctx, request_id, asked)
        if repeat is not None:
            return repeat
        if request_id is not None and self._elsewhere(request_id):
            # first sent to another host: its tombstone may be stored but not in this mirror yet
            return self.link.call(self._catch_up, request_id, True, then=lambda _: self.take(
                ctx, pattern, harbor, limit, wait_ms, actor, request_id, asked))
        self.require()
        found = self.tuples._find(ctx.now, harbor, pattern, limit + _SPARE, skip=self.claiming)
        if not found:
            if wait_ms > 0:
                return self.park(harbor, pattern, ctx.now + wait_ms, {"taken": [], "count": 0})
            return {"taken": [], "count": 0}
        fp = fingerprint(asked)
        record_until = ctx.now + self.config.take_record_ttl_ms if request_id else 0
        ttl_s = ttl_seconds(self.config.take_record_ttl_ms) if request_id else TOMBSTONE_TTL_S
        tries = []
        for rec in found:
            tombstone = {"op": "in", "of": rec.id, "tuple": rec.to_dict(), "takenBy": actor, "host": self.link.host_id,
                         "requestId": request_id, "fp": fp if request_id else None, "recordUntil": record_until}
            tries.append((self.subjects[rec.id], rec.id, json.dumps(tombstone, separators=(",", ":")).encode()))

        def then(outcome: tuple[list[int], list[int], OpError | None]) -> Any:
            won, lost, error = outcome
            by_id = {rec.id: rec for rec in found}
            for seq in (*won, *lost):
                rec = self.tuples.by_id.get(seq)
                if rec is not None:
                    self.tuples._unindex(rec)
                    self.subjects.pop(seq, None)
            for rec in found:  # untried or failed ones: other takers of this host may try them now
                if rec.id not in won and rec.id not in lost:
                    for key in out_keys(rec.harbor, rec.fields, rec.head):
                        self.root.wake(key)
            if not won:
                if error is not None:
                    raise error
                return self.take(ctx, pattern, harbor, limit, wait_ms, actor, request_id, asked)  # all lost: next
            taken = [by_id[seq].to_dict() for seq in won]
            if request_id is not None:
                for tuple_ in taken:
                    self._remember(request_id, fp, tuple_, record_until)
            self.root.activity.record(ctx, "tuple.in", harbor, actor=actor, ids=won, host=self.link.host_id)
            self.root.publish(tuple_channel(harbor), {"event": "tuple.in", "ids": won, "takenBy": actor}, actor,
                              ctx.now)
            return {"taken": taken, "count": len(taken)}

        self.require()
        self.claiming.update(rec.id for rec in found)
        if request_id is not None:
            self.inflight.add(request_id)
        return self.link.call(self._take_each, tries, limit, ttl_s, request_id, then=then)

    async def _take_each(self, tries: list[tuple[str, int, bytes]], limit: int, ttl_s: int,
                         request_id: str | None) -> tuple[list[int], list[int], OpError | None]:
        """Tombstone the candidates in age order until `limit` are won: (won, lost to another taker, error).

        A failure after some were won still reports them (they are taken; the caller must get them).
        The candidates are free for this host's other takers again however the call ends."""
        answered = False
        try:
            outcome = await self._tombstones(tries, limit, ttl_s)
            answered = outcome[2] is None
            return outcome
        finally:
            self.claiming.difference_update(seq for _, seq, _ in tries)
            if request_id is not None:
                if not answered:
                    self._uncertain(request_id)
                self.inflight.discard(request_id)
                self.root.wake(("tuple.request", request_id))
                self.link.after_change()

    async def _tombstones(self, tries: list[tuple[str, int, bytes]], limit: int,
                          ttl_s: int) -> tuple[list[int], list[int], OpError | None]:
        won: list[int] = []
        lost: list[int] = []
        for subject, seq, payload in tries:
            if len(won) >= limit:
                break
            try:
                await self.link.js.publish(subject, payload, msg_ttl=ttl_s,
                                           headers={"Nats-Expected-Last-Subject-Sequence": str(seq)})
            except nats.js.errors.APIError as err:
                if err.err_code in _WRONG_LAST:
                    lost.append(seq)
                    continue
                return won, lost, team_unavailable(self.link._failed(f"{type(err).__name__}: {err}"))
            except Exception as exc:  # noqa: BLE001 - a NATS failure: what was won is still answered
                return won, lost, team_unavailable(self.link._failed(f"{type(exc).__name__}: {exc}"))
            won.append(seq)
        return won, lost, None

    def _uncertain(self, request_id: str) -> None:
        self._mark(self.uncertain, request_id)

    def _mark(self, marks: OrderedDict[str, None], request_id: str) -> None:
        marks[request_id] = None
        while len(marks) > self.config.take_records_max:
            marks.popitem(last=False)

    def _elsewhere(self, request_id: str) -> bool:
        """A requestId marked `<host id>:...` for another host, not yet looked up after a catch-up here."""
        if request_id in self.checked:
            return False
        host = first_host(request_id)
        return host is not None and host != self.link.host_id

    async def _catch_up(self, request_id: str, marked: bool = False) -> None:
        """Wait until the mirror holds everything the stream holds now (tombstones of an earlier try too).

        `marked`: the id names another host; once caught up, its later tries here look up the mirror only."""
        try:
            info = await self.link.js.stream_info(stream_name(self.link.space, TUPLES.short))
            await self.link.applied(TUPLES.short, info.state.last_seq)
        except BaseException:
            if not marked:
                self._uncertain(request_id)
            raise
        if marked:
            self._mark(self.checked, request_id)

    def recall(self, ctx: Ctx, request_id: str | None, asked: dict) -> dict | None:
        """The recorded answer of a take with this requestId (team-wide), or None when none was made."""
        taken = self.records.recall(request_id, "tuple.in", asked, ctx.now)
        if not taken:
            return None
        taken = sorted(taken, key=lambda t: t.get("id") or 0)
        return {"taken": taken, "count": len(taken), "repeated": True}
