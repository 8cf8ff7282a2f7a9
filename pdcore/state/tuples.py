"""The tuple space (SPEC.md §8): Linda's out / rd / in, plus scan, count and poll.

Tuples live in memory, indexed by (harbor, first element) and, inside that, by arity, each
bucket an insertion-ordered map id -> tuple (ids only grow, so insertion order is age order).
A pattern with a concrete first element looks only at its (harbor, first element) buckets of
arity >= its own length, merged by id; any other pattern looks at the harbor's buckets. So the
cost of a take does not grow with tuples in other harbors or under other first elements.

Tuples are written to SQLite (the core commits before replying), so an acknowledged `out`
survives kill -9 and an acknowledged `in` has deleted its tuple in the same transaction: a
taken tuple is never served again. Ids come from an AUTOINCREMENT sequence and are never
reused. `rd`, `in` and `poll` take `wait` (ms): with nothing to serve they park on the key of
their harbor and last exact-valued element (`wait_keys`) until an `out` of a tuple holding
that value there wakes them, or the wait ends (empty result).
Every `out` is published on channel `tuple` (global space) or `tuple:<harbor>`.
In team mode the index is a mirror of the team's stream and `out` / `in` go to JetStream
(pdcore/team/tuples.py); the local table is left as it is.
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from pdcore.errors import OpError
from pdcore.state.base import Await, Ctx, Park, Primitive
from pdcore.state.tuplepattern import ANY, Pattern, canon, check_fields, compile_pattern
from pdcore.timers import Timer

ALL_HARBORS = "*"
_INSERT_TUPLE = "INSERT INTO tuples (id, harbor, fields, written_by, created_at, expires_at) VALUES (?,?,?,?,?,?)"
_DELETE_TUPLE = "DELETE FROM tuples WHERE id = ?"
Bucket = OrderedDict  # id -> TupleRecord, oldest first


def tuple_channel(harbor: str | None) -> str:
    """The channel on which new tuples of a harbor are published."""
    return "tuple" if harbor is None else f"tuple:{harbor}"


def wait_keys(harbor: str | None, pattern: Pattern) -> tuple:
    """The wake key a parked rd/in/poll waits on: its last exact-valued element, else the harbor.

    A tuple it can match has that value at that position, so only an `out` of such a tuple
    retries it; waiters with different values (`["task", "a"]`, `["task", "b"]`) are not woken
    by each other's tuples. The last exact element is taken because it is usually the most
    particular (`["task", "build-auth", "*"]`).
    """
    if not pattern.exact:
        return (("tuple", harbor, "any"),)
    position, value = pattern.exact[-1]
    return (("tuple", harbor, "at", position, value),)


def out_keys(harbor: str | None, fields: list, head: Any) -> Iterator[tuple]:
    """The wake keys an `out` of `fields` wakes: one per position, and the harbor's."""
    yield ("tuple", harbor, "at", 0, head)
    for position in range(1, len(fields)):
        yield ("tuple", harbor, "at", position, canon(fields[position]))
    yield ("tuple", harbor, "any")


class TupleRecord:
    __slots__ = ("id", "harbor", "fields", "written_by", "created_at", "expires_at", "head", "timer")

    def __init__(self, id: int, harbor: str | None, fields: list, written_by: str | None, created_at: int,
                 expires_at: int | None) -> None:
        self.id = id
        self.harbor = harbor
        self.fields = fields
        self.written_by = written_by
        self.created_at = created_at
        self.expires_at = expires_at
        self.head = canon(fields[0])
        self.timer: Timer | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "harbor": self.harbor,
            "fields": self.fields,
            "writtenBy": self.written_by,
            "createdAt": self.created_at,
            "expiresAt": self.expires_at,
        }


def _record_id(rec: TupleRecord) -> int:
    return rec.id


def _oldest_first(buckets: list[Bucket]) -> Iterator[TupleRecord]:
    if not buckets:
        return iter(())
    if len(buckets) == 1:
        return iter(buckets[0].values())
    return heapq.merge(*(b.values() for b in buckets), key=_record_id)


class Tuples(Primitive):
    name = "tuples"
    load_order = 45

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.by_id: dict[int, TupleRecord] = {}  # lookups only: never iterated (see _candidates)
        # (harbor, head) -> arity -> bucket; harbor -> arity -> bucket
        self.by_head: dict[tuple, dict[int, Bucket]] = {}
        self.by_harbor: dict[str | None, dict[int, Bucket]] = {}
        self.last_id = 0
        self.team: Any = None  # TeamTuples in team mode: the index mirrors the team's stream

    def on_team_link(self, link: Any) -> None:
        """Team mode (docs/team.md): the space's `tuples` stream is the tuple space."""
        from pdcore.team.tuples import TeamTuples

        self.team = TeamTuples(self, link)

    # -- loading and indexing --------------------------------------------------------------
    def load(self, now: int) -> None:
        if self.team is not None:  # the mirror fills from the stream; this host's own tuples wait in the table
            return
        row = self.store.read_one("SELECT seq FROM sqlite_sequence WHERE name = 'tuples'")
        self.last_id = row[0] if row else 0
        expired = []
        for r in self.store.read(
            "SELECT id, harbor, fields, written_by, created_at, expires_at FROM tuples ORDER BY id"
        ):
            if r[5] is not None and r[5] <= now:
                expired.append((r[0],))
                continue
            self._index(TupleRecord(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5]))
            self.last_id = max(self.last_id, r[0])
        if expired:
            self.store.write_many(_DELETE_TUPLE, expired)

    def counts(self) -> dict[str, int]:
        return {"tuples": len(self.by_id)}

    def _index(self, rec: TupleRecord) -> None:
        self.by_id[rec.id] = rec
        arity = len(rec.fields)
        by_arity = self.by_head.setdefault((rec.harbor, rec.head), {})
        by_arity.setdefault(arity, OrderedDict())[rec.id] = rec
        by_arity = self.by_harbor.setdefault(rec.harbor, {})
        by_arity.setdefault(arity, OrderedDict())[rec.id] = rec
        if rec.expires_at is not None:
            rec.timer = self.root.timers.add(rec.expires_at, self._expire, rec.id)

    def _unindex(self, rec: TupleRecord) -> None:
        del self.by_id[rec.id]
        arity = len(rec.fields)
        for index, key in ((self.by_head, (rec.harbor, rec.head)), (self.by_harbor, rec.harbor)):
            by_arity = index[key]
            bucket = by_arity[arity]
            del bucket[rec.id]
            if not bucket:
                del by_arity[arity]
                if not by_arity:
                    del index[key]
        if rec.timer is not None:
            rec.timer.cancel()
            rec.timer = None

    def _remove(self, recs: list[TupleRecord]) -> None:
        stage = self.store.stage
        for rec in recs:
            self._unindex(rec)
            if self.team is None:
                stage(_DELETE_TUPLE, (rec.id,))
            else:
                self.team.forget(rec)

    # -- matching --------------------------------------------------------------------------
    def _candidates(self, harbor: str | None, pattern: Pattern) -> Iterator[TupleRecord]:
        """Tuples that may match, oldest first, never outside the pattern's index buckets."""
        if harbor == ALL_HARBORS:
            if pattern.head is ANY:
                buckets = [b for arities in self.by_harbor.values() for a, b in arities.items() if a >= pattern.arity]
            else:
                buckets = [b for (_, head), arities in self.by_head.items() if head == pattern.head
                           for a, b in arities.items() if a >= pattern.arity]
            return _oldest_first(buckets)
        arities = self.by_harbor.get(harbor) if pattern.head is ANY else self.by_head.get((harbor, pattern.head))
        if not arities:
            return iter(())
        return _oldest_first([b for a, b in arities.items() if a >= pattern.arity])

    def _find(self, now: int, harbor: str | None, pattern: Pattern, limit: int, after: int = 0,
              skip: set[int] | None = None) -> list[TupleRecord]:
        found: list[TupleRecord] = []
        for rec in self._candidates(harbor, pattern):
            if rec.id <= after or (rec.expires_at is not None and rec.expires_at <= now):
                continue
            if skip and rec.id in skip:
                continue
            if pattern.match(rec.fields):
                found.append(rec)
                if len(found) >= limit:
                    break
        return found

    def match_count(self, harbor: str | None, pattern: Pattern, now: int) -> int:
        return sum(1 for _ in self._find(now, harbor, pattern, len(self.by_id) + 1))

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _limit(limit: int | None, default: int) -> int:
        """The catalogue refuses a limit above tuple_limit_max; absent, the op's default."""
        return default if limit is None else limit

    def _wait(self, wait: int | None) -> int:
        return min(wait or 0, self.config.tuple_wait_max_ms)

    @staticmethod
    def _harbor(harbor: str | None, allow_all: bool = False) -> str | None:
        if harbor == "":
            return None
        if harbor == ALL_HARBORS and not allow_all:
            raise OpError("invalid_name", "harbor * (every harbor) is only for scan, count and poll; name one harbor",
                          "harbor")
        return harbor

    def _check(self, ctx: Ctx, harbor: str | None, actor: str | None, capability: str) -> None:
        """A named agent acting in a gated harbor must hold the capability (the arbiter decides)."""
        arbiter = getattr(self.root, "arbiter", None)
        if harbor is not None and harbor != ALL_HARBORS and arbiter is not None:
            arbiter.check_capability(ctx, harbor, actor, capability)

    # -- operations ------------------------------------------------------------------------
    def out(
        self,
        ctx: Ctx,
        fields: list | None = None,
        tuple: list | None = None,  # the Port Daddy 3.8 name of `fields`
        harbor: str | None = None,
        writtenBy: str | None = None,
        ttlMs: int | None = None,
        ttl: int | None = None,
        agentId: str | None = None,
    ) -> dict | Await:
        data = fields if fields is not None else tuple
        if data is None:
            raise OpError("missing_field", "fields (or tuple) is required: a JSON array such as [\"task\", \"build\"]",
                          "fields")
        check_fields(data, self.config.tuple_max_bytes, "fields" if fields is not None else "tuple")
        harbor = self._harbor(harbor)
        ttl_ms = ttlMs if ttlMs is not None else ttl
        written_by = writtenBy or agentId or ctx.agent_id
        self._check(ctx, harbor, agentId or ctx.agent_id or writtenBy, "tuple:out")
        if self.team is not None:
            return self.team.out(ctx, harbor, data, written_by, ttl_ms)
        self.last_id += 1
        expires_at = ctx.now + ttl_ms if ttl_ms else None
        rec = TupleRecord(self.last_id, harbor, data, written_by, ctx.now, expires_at)
        self.store.stage(_INSERT_TUPLE, (rec.id, harbor, json.dumps(data, separators=(",", ":")), written_by, ctx.now,
                                         expires_at))
        self._index(rec)
        for key in out_keys(harbor, data, rec.head):
            self.root.wake(key)
        self.root.activity.record(ctx, "tuple.out", harbor, actor=written_by, id=rec.id)
        out = rec.to_dict()
        self.root.publish(tuple_channel(harbor), {"event": "tuple.out", "tuple": out}, written_by, ctx.now)
        return {"tuple": out}

    def rd(
        self,
        ctx: Ctx,
        pattern: Any = None,
        harbor: str | None = None,
        limit: int | None = None,
        wait: int | None = None,
        agentId: str | None = None,
    ) -> dict | Park:
        pat = compile_pattern(pattern)
        harbor = self._harbor(harbor)
        limit = self._limit(limit, self.config.tuple_read_limit_default)
        self._check(ctx, harbor, agentId or ctx.agent_id, "tuple:rd")
        if self.team is not None:
            self.team.require()
        found = self._find(ctx.now, harbor, pat, limit)
        wait_ms = self._wait(wait)
        if not found and wait_ms > 0:
            if self.team is not None:
                return self.team.park(harbor, pat, ctx.now + wait_ms, {"tuples": [], "count": 0})
            return Park(wait_keys(harbor, pat), ctx.now + wait_ms, {"tuples": [], "count": 0})
        return {"tuples": [r.to_dict() for r in found], "count": len(found)}

    def take(
        self,
        ctx: Ctx,
        pattern: Any = None,
        harbor: str | None = None,
        limit: int | None = None,
        wait: int | None = None,
        agentId: str | None = None,
        requestId: str | None = None,
    ) -> dict | Park | Await:
        """Linda's `in`: remove and return the oldest matches; exactly one taker gets each tuple.

        With `requestId`, a take that took something is recorded; its repeat returns the same tuples.
        """
        if pattern is None:
            raise OpError("missing_field", "pattern is required: a JSON array such as [\"task\", \"*\"] ([] takes any)",
                          "pattern")
        asked = {"pattern": pattern, "harbor": harbor, "limit": limit}
        records = self.root.take_records
        if self.team is None:
            repeat = records.recall(requestId, "tuple.in", asked)
            if repeat is not None:
                return repeat
        pat = compile_pattern(pattern)
        harbor = self._harbor(harbor)
        limit = self._limit(limit, 1)
        actor = agentId or ctx.agent_id
        self._check(ctx, harbor, actor, "tuple:in")
        if self.team is not None:
            return self.team.take(ctx, pat, harbor, limit, self._wait(wait), actor, requestId, asked)
        found = self._find(ctx.now, harbor, pat, limit)
        if not found:
            wait_ms = self._wait(wait)
            if wait_ms > 0:
                return Park(wait_keys(harbor, pat), ctx.now + wait_ms, {"taken": [], "count": 0})
            return {"taken": [], "count": 0}
        self._remove(found)
        taken = [r.to_dict() for r in found]
        ids = [r.id for r in found]
        self.root.activity.record(ctx, "tuple.in", harbor, actor=actor, ids=ids)
        self.root.publish(tuple_channel(harbor), {"event": "tuple.in", "ids": ids, "takenBy": actor}, actor, ctx.now)
        result = {"taken": taken, "count": len(taken)}
        records.remember(ctx, requestId, "tuple.in", asked, result)
        return result

    def poll(
        self,
        ctx: Ctx,
        pattern: Any = None,
        harbor: str | None = None,
        after: int | None = None,
        limit: int | None = None,
        wait: int | None = None,
        agentId: str | None = None,
    ) -> dict | Park:
        """Walk the space by id: the next matches after `after`, and the cursor to pass next time."""
        pat = compile_pattern(pattern)
        harbor = self._harbor(harbor, allow_all=True)
        limit = self._limit(limit, 1)
        self._check(ctx, harbor, agentId or ctx.agent_id, "tuple:rd")
        if self.team is not None:
            self.team.require()
        after = after or 0
        found = self._find(ctx.now, harbor, pat, limit, after)
        if not found:
            wait_ms = self._wait(wait)
            last = max(after, self.last_id)
            if wait_ms > 0 and harbor != ALL_HARBORS:
                if self.team is not None:
                    return self.team.park(harbor, pat, ctx.now + wait_ms,
                                          {"tuple": None, "tuples": [], "lastId": last})
                return Park(wait_keys(harbor, pat), ctx.now + wait_ms, {"tuple": None, "tuples": [], "lastId": last})
            return {"tuple": None, "tuples": [], "lastId": last}
        out = [r.to_dict() for r in found]
        return {"tuple": out[0], "tuples": out, "lastId": found[-1].id}

    def scan(self, ctx: Ctx, harbor: str | None = None, limit: int | None = None, pattern: Any = None,
             after: int | None = None, agentId: str | None = None) -> dict:
        """List a harbor (or `*`: every harbor), oldest first."""
        pat = compile_pattern(pattern)
        harbor = self._harbor(harbor, allow_all=True)
        limit = self._limit(limit, self.config.tuple_scan_limit_default)
        self._check(ctx, harbor, agentId or ctx.agent_id, "tuple:rd")
        if self.team is not None:
            self.team.require()
        found = self._find(ctx.now, harbor, pat, limit, after or 0)
        total = self._size(harbor) if pattern is None else None
        out = {"tuples": [r.to_dict() for r in found], "count": len(found)}
        if total is not None:
            out["total"] = total
        return out

    def count(self, ctx: Ctx, harbor: str | None = None, pattern: Any = None, agentId: str | None = None) -> dict:
        harbor = self._harbor(harbor, allow_all=True)
        self._check(ctx, harbor, agentId or ctx.agent_id, "tuple:rd")
        if self.team is not None:
            self.team.require()
        if pattern is None:
            return {"count": self._size(harbor)}
        return {"count": self.match_count(harbor, compile_pattern(pattern), ctx.now)}

    def _size(self, harbor: str | None) -> int:
        if harbor == ALL_HARBORS:
            return len(self.by_id)
        return sum(len(b) for b in self.by_harbor.get(harbor, {}).values())

    def harbors_in_use(self) -> Iterable[str | None]:
        return self.by_harbor.keys()

    # -- deadlines -------------------------------------------------------------------------
    def _expire(self, tuple_id: int) -> None:
        rec = self.by_id.get(tuple_id)
        if rec is None:
            return
        rec.timer = None
        ctx = Ctx(self.root.clock(), source="internal")
        self._remove([rec])
        self.root.activity.record(ctx, "tuple.expire", rec.harbor, id=rec.id)


PRIMITIVE = Tuples
