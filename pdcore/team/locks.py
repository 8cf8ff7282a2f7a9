"""Locks shared by a team: one key per lock in the space's `locks` KV bucket (docs/team.md).

Acquire reads the key and writes the holder with "expected last revision" = what it read:
create-if-absent, or compare-and-set over an expired holder; exactly one writer wins. The
**fence is the bucket revision** of the write that took the lock (it grows team-wide); a
renewal or extend writes a new revision but keeps the fence in the record. Release and extend
are compare-and-set on the current revision. The key's TTL on the server is the lock's TTL, so a
vanished host's locks free themselves. Waits park in the local core and are woken by a watch on
the bucket; on each host one waiter at a time tries (the oldest), so waiters are FIFO per host.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import nats.js.errors

from pdcore.errors import OpError
from pdcore.state.base import Await, Ctx, Park
from pdcore.team.link import KV_OPERATION, TeamLink, team_unavailable, ttl_seconds
from pdcore.team.space import LOCKS, bucket_name

_WRONG_LAST = (10071, 10164)  # JetStream: "wrong last sequence" (another writer got there first)
_CAS_ROUNDS = 8  # read-then-write rounds one attempt makes before it answers "held"


def lock_kv_key(name: str) -> str:
    """A lock name as a KV key (names may hold : @ * which keys may not): base64url, no padding."""
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def lock_name(key: str) -> str:
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()


def _clock() -> int:
    return int(time.time() * 1000)


class TeamLocks:
    """The team side of pdcore.state.locks.Locks: the same operations, on the bucket."""

    def __init__(self, locks: Any, link: TeamLink) -> None:
        self.locks = locks  # the Locks primitive (errors, activity, owner rules stay there)
        self.root = locks.root
        self.config = locks.config
        self.link = link
        bucket = bucket_name(link.space, LOCKS.short)
        self.prefix = f"$KV.{bucket}."
        self.mirror: dict[str, tuple[int, dict]] = {}  # name -> (revision, holder), from the watch
        self.seen: dict[str, int] = {}  # name -> latest revision the watch delivered (deletes too)
        self.trying: set[str] = set()  # names a parked waiter of this host is trying right now
        self.bound: dict[Any, dict[str, str]] = {}  # IPC connection id -> {name: owner}
        self.expiry_wakes: dict[str, int] = {}  # name -> holder expiry a wake is armed for
        self.waited: set[str] = set()  # names some call of this host parked on
        self._refresh_armed = False
        link.watch(LOCKS.short, self._changed)
        link.on_down.append(self._link_down)

    def _link_down(self) -> None:
        """Retry every parked waiter now: each fails at once with team_unavailable rather than wait blind."""
        for name in self.waited:
            self.root.wake(self.locks.wake_key(name))
        self.waited = set()

    # -- the watch --------------------------------------------------------------------------------
    def _changed(self, key: str, revision: int, value: bytes | None) -> None:
        try:
            name = lock_name(key)
        except ValueError:
            return
        if revision <= self.seen.get(name, 0):
            return
        self.seen[name] = revision
        if value is None:
            self.mirror.pop(name, None)
        else:
            try:
                self.mirror[name] = (revision, json.loads(value))
            except ValueError:
                self.mirror.pop(name, None)
        self.root.wake(self.locks.wake_key(name))

    # -- JetStream reads and writes (coroutines on the core's loop) --------------------------------
    async def _read(self, name: str) -> tuple[int, dict | None]:
        """(last revision of the key, counting deletes and expiry markers; the holder or None)."""
        return await self.link.latest(LOCKS.short, lock_kv_key(name))

    async def _write(self, name: str, holder: dict, last: int, ttl_ms: int) -> int | None:
        """Write `holder` if the key is still at revision `last`; its revision, or None if someone moved first."""
        try:
            ack = await self.link.js.publish(
                self.prefix + lock_kv_key(name), json.dumps(holder, separators=(",", ":")).encode(),
                headers={"Nats-Expected-Last-Subject-Sequence": str(last)}, msg_ttl=ttl_seconds(ttl_ms))
        except nats.js.errors.APIError as err:
            if err.err_code in _WRONG_LAST:
                return None
            raise
        return ack.seq

    async def _delete(self, name: str, last: int) -> bool:
        try:
            await self.link.js.publish(self.prefix + lock_kv_key(name), b"",
                                       headers={KV_OPERATION: "DEL",
                                                "Nats-Expected-Last-Subject-Sequence": str(last)})
        except nats.js.errors.APIError as err:
            if err.err_code in _WRONG_LAST:
                return False
            raise
        return True

    @staticmethod
    def _live(holder: dict | None, now: int) -> bool:
        return holder is not None and int(holder.get("expiresAt") or 0) > now

    @staticmethod
    def _fence(holder: dict, revision: int) -> int:
        return int(holder.get("fence") or revision)

    # -- acquire ---------------------------------------------------------------------------------
    def acquire(self, ctx: Ctx, name: str, owner: str, ttl: int | None, wait: int | None,
                metadata: dict | None, renew: bool = False) -> Await | Park:
        """Take the lock in the team; park up to `wait` ms when held. Not re-entrant, as locally:
        its holder asking again is refused unless `renew`, which renews it in place."""
        bound = ctx.conn is not None and ttl is None
        ttl_ms = self.config.team_bound_lock_ttl_ms if bound else self.locks.ttl(ttl)
        deadline = ctx.now + wait if wait else None
        if wait and name in self.trying and self.link.available:  # an older waiter here is trying: queue
            self.waited.add(name)
            return Park((self.locks.wake_key(name),), deadline, self._held_error(name, None, wait))
        self._check_limit(ctx.agent_id or owner)
        return self._attempt(ctx, name, owner, ttl_ms, bound, metadata, deadline, wait, renew)

    def _attempt(self, ctx: Ctx, name: str, owner: str, ttl_ms: int, bound: bool, metadata: dict | None,
                 deadline: int | None, wait: int | None, renew: bool) -> Await:
        conn_id = ctx.conn.id if bound else None

        def then(outcome: tuple) -> Any:
            self.trying.discard(name)
            kind, revision, holder = outcome[:3]
            if kind == "error":
                self.root.wake(self.locks.wake_key(name))  # the next waiter of this host tries
                raise holder
            if kind == "acquired":
                renewed = outcome[3]
                if conn_id is not None:
                    self._bind(conn_id, name, owner)
                if not renewed:
                    self.root.activity.record(ctx, "lock.acquire", name, actor=owner, owner=owner,
                                              fence=self._fence(holder, revision), expiresAt=holder["expiresAt"],
                                              connectionBound=bound, host=self.link.host_id)
                return self._acquired(name, holder, revision, renewed)
            # held by another owner
            if self.seen.get(name, 0) > revision:  # it changed while we looked: look again now
                return self._attempt(ctx, name, owner, ttl_ms, bound, metadata, deadline, wait, renew)
            error = self._held_error(name, (revision, holder), wait)
            if deadline is None or holder.get("owner") == owner:  # its own holder does not wait on itself
                raise error
            self._arm_expiry_wake(name, int(holder.get("expiresAt") or 0))
            self.waited.add(name)
            return Park((self.locks.wake_key(name),), deadline, error)

        pending = self.link.call(self._try_acquire, name, owner, ttl_ms, bound, ctx.agent_id, metadata, renew,
                                 then=then)
        if deadline is not None:
            self.trying.add(name)
        return pending

    async def _try_acquire(self, name: str, owner: str, ttl_ms: int, bound: bool, agent_id: str | None,
                           metadata: dict | None, renew_asked: bool) -> tuple:
        try:
            for _ in range(_CAS_ROUNDS):
                last, holder = await self._read(name)
                now = _clock()
                if self._live(holder, now) and (holder["owner"] != owner or not renew_asked):  # type: ignore[index]
                    return ("held", last, holder)
                renew = self._live(holder, now)
                record = {"name": name, "owner": owner, "host": self.link.host_id, "agentId": agent_id,
                          "acquiredAt": holder["acquiredAt"] if renew else now,  # type: ignore[index]
                          "expiresAt": now + ttl_ms, "connectionBound": bound,
                          "metadata": metadata if metadata is not None or not renew else holder.get("metadata"),  # type: ignore[union-attr]
                          "fence": self._fence(holder, last) if renew else None}  # type: ignore[arg-type]
                revision = await self._write(name, record, last, ttl_ms)
                if revision is not None:
                    return ("acquired", revision, record, renew)
            return ("held", last, holder or {"owner": "another host", "expiresAt": 0})
        except OpError as exc:
            return ("error", 0, exc)
        except asyncio.CancelledError:
            self.trying.discard(name)
            raise
        except Exception as exc:  # noqa: BLE001 - a NATS failure: the caller gets team_unavailable
            return ("error", 0, team_unavailable(self.link._failed(f"{type(exc).__name__}: {exc}")))

    def _acquired(self, name: str, holder: dict, revision: int, renewed: bool) -> dict:
        bound = bool(holder.get("connectionBound"))
        return {"name": name, "owner": holder["owner"], "fence": self._fence(holder, revision),
                "acquiredAt": holder["acquiredAt"], "expiresAt": None if bound else holder["expiresAt"],
                "connectionBound": bound, "renewed": renewed, "host": holder.get("host"),
                "message": f"{'renewed' if renewed else 'acquired'} lock: {name}"}

    def _held_error(self, name: str, seen: tuple[int, dict] | None, waited: int | None) -> OpError:
        revision, holder = seen if seen is not None else self.mirror.get(name, (0, {"owner": "another owner"}))
        owner = holder.get("owner", "another owner")
        msg = (f"lock {name} is held by {owner}" + (f" (still, after waiting {waited} ms)" if waited else "")
               + "; wait for it (wait: ms) or ask its owner to release it")
        return OpError("lock_held", msg, "name", holder=owner, heldSince=holder.get("acquiredAt"),
                       expiresAt=holder.get("expiresAt"), fence=self._fence(holder, revision) if revision else None,
                       host=holder.get("host"))

    def _arm_expiry_wake(self, name: str, expires_at: int) -> None:
        """Wake the waiters when the holder's own deadline passes (the server's marker may come later)."""
        if expires_at and self.expiry_wakes.get(name) != expires_at:
            self.expiry_wakes[name] = expires_at
            self.root.timers.add(expires_at + 1, self._expiry_wake, name, expires_at)

    def _expiry_wake(self, name: str, expires_at: int) -> None:
        if self.expiry_wakes.get(name) == expires_at:
            del self.expiry_wakes[name]
        self.root.wake(self.locks.wake_key(name))

    def _check_limit(self, agent_id: str) -> None:
        agents = self.root.primitives.get("agents")
        agent = agents.get_agent(agent_id) if agents is not None else None
        limit = getattr(agent, "max_locks", None)
        if not limit:
            return
        now = _clock()
        held = sum(1 for _, h in self.mirror.values()
                   if self._live(h, now) and (h.get("agentId") == agent_id or h.get("owner") == agent_id))
        if held >= limit:
            raise OpError("lock_limit", f"agent {agent_id} already holds {held} locks (its maxLocks is {limit}); "
                                        "release one first", "name", current=held, max=limit)

    # -- release, extend, get, list --------------------------------------------------------------
    def release(self, ctx: Ctx, name: str, owner: str | None, force: bool, fence: int | None) -> Await:
        def then(outcome: tuple) -> dict:
            kind, holder, hfence = outcome
            if kind == "not_held":
                return {"released": False, "name": name, "message": f"lock {name} is not held"}
            if kind == "not_owner":
                self.root.arbiter.check_lock_release(ctx, name, owner, holder["owner"])
                raise OpError("not_owner", f"lock {name} is held by {holder['owner']} (fence {hfence}); only its "
                                           "owner may release it, or pass force: true", "owner",
                              holder=holder["owner"], fence=hfence)
            self._unbind(name)
            reason = "forced" if force and holder["owner"] != owner else "released"
            self.root.activity.record(ctx, "lock.release", name, actor=holder["owner"], owner=holder["owner"],
                                      fence=hfence, reason=reason, host=self.link.host_id)
            return {"released": True, "name": name, "fence": hfence, "message": f"released lock: {name}"}

        return self.link.call(self._try_release, name, owner, force, fence, then=then)

    async def _try_release(self, name: str, owner: str | None, force: bool, fence: int | None) -> tuple:
        for _ in range(_CAS_ROUNDS):
            last, holder = await self._read(name)
            if not self._live(holder, _clock()):
                return ("not_held", None, None)
            hfence = self._fence(holder, last)  # type: ignore[arg-type]
            if not force and (holder["owner"] != owner or (fence is not None and fence != hfence)):  # type: ignore[index]
                return ("not_owner", holder, hfence)
            if await self._delete(name, last):
                return ("released", holder, hfence)
        return ("not_owner", holder, hfence)

    def extend(self, ctx: Ctx, name: str, owner: str, ttl: int | None, fence: int | None) -> Await:
        ttl_ms = self.locks.ttl(ttl)

        def then(outcome: tuple) -> dict:
            kind, holder, hfence = outcome
            if kind == "not_held":
                raise OpError("not_found", f"lock {name} is not held; acquire it first", "name")
            if kind == "not_owner":
                raise OpError("not_owner", f"lock {name} is held by {holder['owner']} (fence {hfence}), not by you",
                              "owner", holder=holder["owner"], fence=hfence)
            return {"name": name, "owner": owner, "fence": hfence, "expiresAt": holder["expiresAt"],
                    "message": f"extended lock: {name}"}

        return self.link.call(self._try_extend, name, owner, ttl_ms, fence, then=then)

    async def _try_extend(self, name: str, owner: str, ttl_ms: int, fence: int | None) -> tuple:
        for _ in range(_CAS_ROUNDS):
            last, holder = await self._read(name)
            now = _clock()
            if not self._live(holder, now):
                return ("not_held", None, None)
            hfence = self._fence(holder, last)  # type: ignore[arg-type]
            if holder["owner"] != owner or (fence is not None and fence != hfence):  # type: ignore[index]
                return ("not_owner", holder, hfence)
            record = {**holder, "expiresAt": now + ttl_ms, "fence": hfence}  # type: ignore[dict-item]
            if await self._write(name, record, last, ttl_ms) is not None:
                return ("extended", record, hfence)
        return ("not_owner", holder, hfence)

    def get(self, ctx: Ctx, name: str) -> Await:
        def then(outcome: tuple[int, dict | None]) -> dict:
            revision, holder = outcome
            if not self._live(holder, _clock()):
                return {"held": False, "name": name}
            return {"held": True, **self._public(name, revision, holder)}  # type: ignore[arg-type]

        return self.link.call(self._read, name, then=then)

    def list(self, ctx: Ctx, owner: str | None) -> dict:
        """Every held lock of the team, from the watch's copy of the bucket (fails while the link is down)."""
        if not self.link.available:
            raise team_unavailable(self.link.last_error or "not connected")
        now = _clock()
        found = [self._public(n, rev, h) for n, (rev, h) in self.mirror.items()
                 if self._live(h, now) and (owner is None or h.get("owner") == owner)]
        found.sort(key=lambda lk: lk["acquiredAt"] or 0, reverse=True)
        return {"locks": found, "count": len(found)}

    def _public(self, name: str, revision: int, holder: dict) -> dict:
        bound = bool(holder.get("connectionBound"))
        return {"name": name, "owner": holder.get("owner"), "fence": self._fence(holder, revision),
                "acquiredAt": holder.get("acquiredAt"), "expiresAt": None if bound else holder.get("expiresAt"),
                "connectionBound": bound, "agentId": holder.get("agentId"), "metadata": holder.get("metadata"),
                "host": holder.get("host")}

    # -- connection-bound locks, dead agents ------------------------------------------------------
    def _bind(self, conn_id: Any, name: str, owner: str) -> None:
        self.bound.setdefault(conn_id, {})[name] = owner
        if not self._refresh_armed:
            self._refresh_armed = True
            self.root.timers.add(_clock() + self.config.team_bound_lock_ttl_ms // 3, self._refresh)

    def _unbind(self, name: str) -> None:
        for conn_id, names in list(self.bound.items()):
            if names.pop(name, None) is not None and not names:
                del self.bound[conn_id]

    def _refresh(self) -> None:
        """Push the server TTL of every lock bound to a live connection (they free themselves otherwise)."""
        self._refresh_armed = False
        ttl_ms = self.config.team_bound_lock_ttl_ms
        for names in self.bound.values():
            for name, owner in names.items():
                self.link.spawn(self._try_extend, name, owner, ttl_ms, None)
        if self.bound:
            self._refresh_armed = True
            self.root.timers.add(_clock() + ttl_ms // 3, self._refresh)

    def connection_closed(self, conn_id: Any) -> None:
        for name, owner in sorted(self.bound.pop(conn_id, {}).items()):
            self.link.spawn(self._try_release, name, owner, False, None)

    def release_owner(self, owner: str, agent_id: str | None = None) -> list[str]:
        """Free the team locks this host took for `owner` (or for agent `agent_id`); their names."""
        now = _clock()
        names = [n for n, (_, h) in self.mirror.items() if self._live(h, now) and h.get("host") == self.link.host_id
                 and (h.get("owner") == owner or (agent_id is not None and h.get("agentId") == agent_id))]
        for name in names:
            self.link.spawn(self._try_release, name, self.mirror[name][1].get("owner"), False, None)
        return names
