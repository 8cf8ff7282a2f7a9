"""Locks with fencing tokens (SPEC.md §6).

A lock has one owner at a time. Every time it changes hands it gets a new `fence`, a number
drawn from one counter that only goes up (also across restarts), so a resource can refuse a
holder whose fence is older than one it has already seen. A lock either has a TTL (durable:
written to SQLite, expired on the core's timer, survives a restart) or, when taken over an IPC
connection without a TTL, is bound to that connection (ephemeral: released when the connection
closes, never written). An acquire with `wait` parks in the core until the lock frees.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from pdcore.errors import OpError
from pdcore.state.base import Await, Ctx, Park, Primitive
from pdcore.state.sequence import BlockSequence
from pdcore.timers import Timer

DEFAULT_OWNER = "anonymous"  # the owner of a lock taken with neither owner nor agentId (3.7 did not refuse)
RECENTLY_EXPIRED_MAX = 1024  # names remembered so `extend` can say "expired" rather than "not found"


def lock_key(name: str) -> tuple:
    """The park/wake key of a lock: woken whenever the lock frees."""
    return ("lock", name)


class Lock:
    __slots__ = ("name", "owner", "fence", "agent_id", "acquired_at", "expires_at", "metadata", "conn_id", "timer")

    def __init__(self, name: str, owner: str, fence: int, agent_id: str | None, acquired_at: int,
                 expires_at: int | None, metadata: dict | None, conn_id: Any = None) -> None:
        self.name = name
        self.owner = owner
        self.fence = fence
        self.agent_id = agent_id
        self.acquired_at = acquired_at
        self.expires_at = expires_at
        self.metadata = metadata
        self.conn_id = conn_id  # set for connection-bound (ephemeral) locks
        self.timer: Timer | None = None

    @property
    def durable(self) -> bool:
        return self.conn_id is None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "owner": self.owner,
            "fence": self.fence,
            "acquiredAt": self.acquired_at,
            "expiresAt": self.expires_at,
            "connectionBound": self.conn_id is not None,
            "agentId": self.agent_id,
            "metadata": self.metadata,
        }


class Locks(Primitive):
    name = "locks"
    load_order = 30

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.locks: dict[str, Lock] = {}
        self.by_conn: dict[Any, set[str]] = {}
        self.fences = BlockSequence(self.store, "lock.fence")
        self.recently_expired: OrderedDict[str, str] = OrderedDict()  # name -> owner
        self.team: Any = None  # TeamLocks in team mode: the operations go to the team's bucket

    def on_team_link(self, link: Any) -> None:
        """Team mode (docs/team.md): every lock operation goes to the space's `locks` bucket."""
        from pdcore.team.locks import TeamLocks

        self.team = TeamLocks(self, link)

    wake_key = staticmethod(lock_key)

    # -- loading ---------------------------------------------------------------------------
    def load(self, now: int) -> None:
        rows = self.store.read(
            "SELECT name, owner, fence, agent_id, acquired_at, expires_at, metadata FROM locks")
        top = 0
        for name, owner, fence, agent_id, acquired_at, expires_at, metadata in rows:
            top = max(top, fence)
            if expires_at <= now:
                self.store.write("DELETE FROM locks WHERE name = ?", (name,))
                continue
            lock = Lock(name, owner, fence, agent_id, acquired_at, expires_at,
                        json.loads(metadata) if metadata else None)
            self.locks[name] = lock
            self._arm(lock)
        self.fences.load(top)

    def counts(self) -> dict[str, int]:
        return {"locks": len(self.locks)}

    # -- helpers ---------------------------------------------------------------------------
    def ttl(self, ttl: int | None) -> int:
        """0, negative or absent means the default; anything above the cap is the cap."""
        cfg = self.config
        if ttl is None or ttl <= 0:
            return cfg.lock_ttl_default_ms
        return min(ttl, cfg.lock_ttl_max_ms)

    def _live(self, name: str, now: int) -> Lock | None:
        """The lock if held now; one whose deadline passed is expired on the spot (its timer may lag)."""
        lock = self.locks.get(name)
        if lock is not None and lock.expires_at is not None and lock.expires_at <= now:
            self._drop(Ctx(now, source="internal"), lock, "expired")
            return None
        return lock

    def _arm(self, lock: Lock) -> None:
        if lock.timer is not None:
            lock.timer.cancel()
            lock.timer = None
        if lock.expires_at is not None:
            lock.timer = self.root.timers.add(lock.expires_at, self._expire, lock.name, lock.fence, lock.expires_at)

    def _save(self, lock: Lock) -> None:
        if lock.durable:
            self.store.write(
                "INSERT INTO locks (name, owner, fence, agent_id, acquired_at, expires_at, metadata) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET owner=excluded.owner, fence=excluded.fence, "
                "agent_id=excluded.agent_id, acquired_at=excluded.acquired_at, expires_at=excluded.expires_at, "
                "metadata=excluded.metadata",
                (lock.name, lock.owner, lock.fence, lock.agent_id, lock.acquired_at, lock.expires_at,
                 json.dumps(lock.metadata) if lock.metadata else None),
            )

    def _bind(self, lock: Lock, conn_id: Any) -> None:
        lock.conn_id = conn_id
        self.by_conn.setdefault(conn_id, set()).add(lock.name)

    def _unbind(self, lock: Lock) -> None:
        if lock.conn_id is None:
            return
        names = self.by_conn.get(lock.conn_id)
        if names is not None:
            names.discard(lock.name)
            if not names:
                del self.by_conn[lock.conn_id]
        lock.conn_id = None

    def _drop(self, ctx: Ctx, lock: Lock, reason: str) -> None:
        """Free a lock: forget it, delete its row, record it, wake whoever waits for it."""
        del self.locks[lock.name]
        if lock.timer is not None:
            lock.timer.cancel()
            lock.timer = None
        if lock.durable:
            self.store.write("DELETE FROM locks WHERE name = ?", (lock.name,))
        self._unbind(lock)
        if reason == "expired":
            self.recently_expired[lock.name] = lock.owner
            self.recently_expired.move_to_end(lock.name)
            while len(self.recently_expired) > RECENTLY_EXPIRED_MAX:
                self.recently_expired.popitem(last=False)
        self.root.activity.record(ctx, "lock.release", lock.name, actor=lock.owner, owner=lock.owner, fence=lock.fence,
                                  reason=reason)
        self.root.wake(lock_key(lock.name))

    def _held_error(self, lock: Lock, waited: int | None = None) -> OpError:
        msg = (f"lock {lock.name} is held by {lock.owner}"
               + (f" (still, after waiting {waited} ms)" if waited else "")
               + "; wait for it (wait: ms) or ask its owner to release it")
        return OpError("lock_held", msg, "name", holder=lock.owner, heldSince=lock.acquired_at,
                       expiresAt=lock.expires_at, fence=lock.fence)

    @staticmethod
    def _owner(ctx: Ctx, owner: str | None) -> str:
        """The owner named, else the calling agent, else DEFAULT_OWNER (as 3.7)."""
        return owner or ctx.agent_id or DEFAULT_OWNER

    # -- operations ------------------------------------------------------------------------
    def acquire(self, ctx: Ctx, name: str, owner: str | None = None, ttl: int | None = None,
                wait: int | None = None, metadata: dict | None = None, renew: bool = False) -> dict | Park | Await:
        """Take the lock; park up to `wait` ms when held. Not re-entrant: a holder asking again is
        refused like anyone else (3.7), unless `renew`, which renews its lock in place."""
        owner = self._owner(ctx, owner)
        if wait is not None and wait > self.config.lock_wait_max_ms:
            raise OpError("invalid_argument", f"wait must be <= {self.config.lock_wait_max_ms} ms", "wait")
        if self.team is not None:
            return self.team.acquire(ctx, name, owner, ttl, wait, metadata, renew)
        conn_id = ctx.conn.id if ctx.conn is not None and ttl is None else None
        expires_at = None if conn_id is not None else ctx.now + self.ttl(ttl)
        lock = self._live(name, ctx.now)
        if lock is not None and (lock.owner != owner or not renew):
            if wait and lock.owner != owner:
                return Park(keys=(lock_key(name),), deadline=ctx.now + wait,
                            on_timeout=self._held_error(lock, wait))
            raise self._held_error(lock)
        if lock is not None:
            # Same owner again: renew in place; the lock did not change hands, so the fence stays.
            if lock.durable and conn_id is not None:
                self.store.write("DELETE FROM locks WHERE name = ?", (name,))
            self._unbind(lock)
            if conn_id is not None:
                self._bind(lock, conn_id)
            lock.expires_at = expires_at
            if metadata is not None:
                lock.metadata = metadata
            self._save(lock)
            self._arm(lock)
            return self._acquired(lock, renewed=True)
        self._check_limit(ctx.agent_id or owner)
        lock = Lock(name, owner, self.fences.next(), ctx.agent_id, ctx.now, expires_at, metadata)
        self.locks[name] = lock
        if conn_id is not None:
            self._bind(lock, conn_id)
        self._save(lock)
        self._arm(lock)
        self.recently_expired.pop(name, None)
        self.root.activity.record(ctx, "lock.acquire", name, actor=owner, owner=owner, fence=lock.fence,
                                  expiresAt=expires_at, connectionBound=conn_id is not None)
        return self._acquired(lock, renewed=False)

    def _check_limit(self, agent_id: str) -> None:
        """A registered agent with `maxLocks` may not hold more than that many locks at once."""
        agents = self.root.primitives.get("agents")
        agent = agents.get_agent(agent_id) if agents is not None else None  # type: ignore[attr-defined]
        limit = getattr(agent, "max_locks", None)
        if not limit:
            return
        held = sum(1 for lk in self.locks.values() if lk.agent_id == agent_id or lk.owner == agent_id)
        if held >= limit:
            raise OpError("lock_limit", f"agent {agent_id} already holds {held} locks (its maxLocks is {limit}); "
                                        "release one first", "name", current=held, max=limit)

    @staticmethod
    def _acquired(lock: Lock, renewed: bool) -> dict:
        return {
            "name": lock.name,
            "owner": lock.owner,
            "fence": lock.fence,
            "acquiredAt": lock.acquired_at,
            "expiresAt": lock.expires_at,
            "connectionBound": lock.conn_id is not None,
            "renewed": renewed,
            "message": f"{'renewed' if renewed else 'acquired'} lock: {lock.name}",
        }

    def extend(self, ctx: Ctx, name: str, owner: str | None = None, ttl: int | None = None,
               fence: int | None = None) -> dict | Await:
        """Push the deadline of a held lock to now + ttl; refused once it has expired or changed hands."""
        owner = self._owner(ctx, owner)
        if self.team is not None:
            return self.team.extend(ctx, name, owner, ttl, fence)
        lock = self._live(name, ctx.now)
        if lock is None:
            if self.recently_expired.get(name) == owner:
                raise OpError("expired", f"lock {name} expired before it was extended; acquire it again", "name")
            raise OpError("not_found", f"lock {name} is not held; acquire it first", "name")
        if lock.owner != owner or (fence is not None and fence != lock.fence):
            raise OpError("not_owner", f"lock {name} is held by {lock.owner} (fence {lock.fence}), not by you",
                          "owner", holder=lock.owner, fence=lock.fence)
        lock.expires_at = ctx.now + self.ttl(ttl)
        self._save(lock)
        self._arm(lock)
        return {"name": name, "owner": owner, "fence": lock.fence, "expiresAt": lock.expires_at,
                "message": f"extended lock: {name}"}

    def release(self, ctx: Ctx, name: str, owner: str | None = None, force: bool | None = False,
                fence: int | None = None) -> dict | Await:
        """Free the lock; only its owner may (and only at its fence, when given), unless `force`."""
        if self.team is not None:
            return self.team.release(ctx, name, None if force else self._owner(ctx, owner), bool(force),
                                     fence)
        lock = self._live(name, ctx.now)
        if lock is None:
            return {"released": False, "name": name, "message": f"lock {name} is not held"}
        if not force:
            owner = self._owner(ctx, owner)
            if lock.owner != owner or (fence is not None and fence != lock.fence):
                self.root.arbiter.check_lock_release(ctx, name, owner, lock.owner)
                raise OpError("not_owner",
                              f"lock {name} is held by {lock.owner} (fence {lock.fence}); only its owner may "
                              "release it, or pass force: true", "owner", holder=lock.owner, fence=lock.fence)
        self._drop(ctx, lock, "forced" if force and lock.owner != owner else "released")
        return {"released": True, "name": name, "fence": lock.fence, "message": f"released lock: {name}"}

    def get(self, ctx: Ctx, name: str) -> dict | Await:
        if self.team is not None:
            return self.team.get(ctx, name)
        lock = self._live(name, ctx.now)
        if lock is None:
            return {"held": False, "name": name}
        return {"held": True, **lock.to_dict()}

    def list(self, ctx: Ctx, owner: str | None = None) -> dict:
        if self.team is not None:
            return self.team.list(ctx, owner)
        found = [lk for lk in list(self.locks.values()) if owner is None or lk.owner == owner]
        found = [lk for lk in found if self._live(lk.name, ctx.now) is not None]
        found.sort(key=lambda lk: lk.acquired_at, reverse=True)
        return {"locks": [lk.to_dict() for lk in found], "count": len(found)}

    # -- hooks and deadlines ---------------------------------------------------------------
    def on_connection_closed(self, conn_id: Any) -> None:
        """Release every lock bound to a closed IPC connection (like an ephemeral node)."""
        if self.team is not None:
            self.team.connection_closed(conn_id)
        names = self.by_conn.pop(conn_id, None)
        if not names:
            return
        ctx = Ctx(self.root.clock(), source="internal")
        for name in sorted(names):
            lock = self.locks.get(name)
            if lock is not None and lock.conn_id == conn_id:
                self._drop(ctx, lock, "connection closed")

    def on_agent_dead(self, ctx: Ctx, agent_id: str, pid: int | None = None) -> None:
        """The reaper found `agent_id` dead: free every lock it owns or took."""
        self.release_agent(ctx, agent_id, "agent dead")

    def release_agent(self, ctx: Ctx, agent_id: str, reason: str) -> list[str]:
        """Free every lock `agent_id` owns or took (its session ended, or it died); their names."""
        in_team = self.team.release_owner(agent_id, agent_id) if self.team is not None else []
        gone = [lk for lk in self.locks.values() if lk.owner == agent_id or lk.agent_id == agent_id]
        for lock in gone:
            self._drop(ctx, lock, reason)
        return in_team + [lk.name for lk in gone]

    def release_owner(self, ctx: Ctx, owner: str) -> list[str]:
        """Free every lock held by `owner`; returns their names (for other primitives)."""
        if self.team is not None:
            return self.team.release_owner(owner)
        gone = [lk for lk in self.locks.values() if lk.owner == owner]
        for lock in gone:
            self._drop(ctx, lock, "released")
        return [lk.name for lk in gone]

    def _expire(self, name: str, fence: int, expires_at: int) -> None:
        lock = self.locks.get(name)
        if lock is not None and lock.fence == fence and lock.expires_at == expires_at:
            self._drop(Ctx(self.root.clock(), source="internal"), lock, "expired")


PRIMITIVE = Locks
