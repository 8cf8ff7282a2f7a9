"""Harbors (SPEC.md §10): named namespaces with member agents and declared capabilities.

A harbor declares the capabilities that may be exercised in it; an agent entering declares
the ones it will use. A harbor that declares none is open: nothing is checked in it. In a gated
harbor (one that declares capabilities) an agent may only enter with capabilities the harbor
declares, and a named agent acting there (tuples: `tuple:out`, `tuple:rd`, `tuple:in`) must be
a member holding the capability; otherwise the arbiter refuses and records it (SPEC.md §12).
A declared capability covers another when equal, `*`, or a `prefix:*` the other starts with.
Harbors and memberships are durable; `expiresIn` destroys a harbor at its deadline.
"""

from __future__ import annotations

import json
from typing import Any

from pdcore.errors import OpError
from pdcore.state.base import Ctx, Primitive
from pdcore.state.tuplepattern import compile_pattern
from pdcore.timers import Timer

CHANNEL = "pd:harbors"


def covers(declared: list[str] | tuple[str, ...], capability: str) -> bool:
    """Does one of `declared` grant `capability` (exact, `*`, or a `prefix:*` it starts with)?"""
    for cap in declared:
        if cap == capability or cap == "*":
            return True
        if cap.endswith("*") and capability.startswith(cap[:-1]):
            return True
    return False


def _capabilities(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, str) and 0 < len(c) <= 200 for c in value):
        raise OpError("invalid_argument", f"{field} must be an array of capability names (1-200 characters each), "
                                          "e.g. [\"tuple:out\", \"tuple:rd\"]", field)
    if len(value) > 256:
        raise OpError("invalid_argument", f"{field} has more than 256 entries", field)
    out: list[str] = []
    for c in value:
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in c):
            raise OpError("invalid_argument", f"{field} must not contain control characters", field)
        if c not in out:
            out.append(c)
    return out


class Member:
    __slots__ = ("agent_id", "identity", "capabilities", "joined_at")

    def __init__(self, agent_id: str, identity: str | None, capabilities: list[str], joined_at: int) -> None:
        self.agent_id = agent_id
        self.identity = identity
        self.capabilities = capabilities
        self.joined_at = joined_at

    def to_dict(self) -> dict:
        return {"agentId": self.agent_id, "identity": self.identity, "capabilities": self.capabilities,
                "joinedAt": self.joined_at}


class Harbor:
    __slots__ = ("name", "capabilities", "channels", "metadata", "created_at", "expires_at", "members", "timer")

    def __init__(self, name: str, capabilities: list[str], channels: list[str], metadata: dict | None,
                 created_at: int, expires_at: int | None) -> None:
        self.name = name
        self.capabilities = capabilities
        self.channels = channels
        self.metadata = metadata
        self.created_at = created_at
        self.expires_at = expires_at
        self.members: dict[str, Member] = {}
        self.timer: Timer | None = None

    @property
    def gated(self) -> bool:
        return bool(self.capabilities)

    def to_dict(self) -> dict:
        members = sorted(self.members.values(), key=lambda m: m.joined_at)
        return {
            "name": self.name,
            "capabilities": self.capabilities,
            "channels": self.channels,
            "metadata": self.metadata,
            "gated": self.gated,
            "createdAt": self.created_at,
            "expiresAt": self.expires_at,
            "members": [m.to_dict() for m in members],
            "memberCount": len(members),
        }


class Harbors(Primitive):
    name = "harbors"
    load_order = 40

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.harbors: dict[str, Harbor] = {}
        self.by_agent: dict[str, set[str]] = {}  # agent id -> harbor names

    # -- loading ---------------------------------------------------------------------------
    def load(self, now: int) -> None:
        expired = []
        for r in self.store.read("SELECT name, capabilities, channels, metadata, created_at, expires_at FROM harbors"):
            if r[5] is not None and r[5] <= now:
                expired.append(r[0])
                continue
            harbor = Harbor(r[0], json.loads(r[1]), json.loads(r[2]), json.loads(r[3]) if r[3] else None, r[4], r[5])
            self.harbors[harbor.name] = harbor
            self._arm(harbor)
        for r in self.store.read("SELECT harbor_name, agent_id, identity, capabilities, joined_at FROM harbor_members"):
            harbor = self.harbors.get(r[0])
            if harbor is not None:
                harbor.members[r[1]] = Member(r[1], r[2], json.loads(r[3]), r[4])
                self.by_agent.setdefault(r[1], set()).add(r[0])
        for name in expired:
            self._delete_rows(name)

    def counts(self) -> dict[str, int]:
        return {"harbors": len(self.harbors)}

    def _arm(self, harbor: Harbor) -> None:
        if harbor.timer is not None:
            harbor.timer.cancel()
            harbor.timer = None
        if harbor.expires_at is not None:
            harbor.timer = self.root.timers.add(harbor.expires_at, self._expire, harbor.name, harbor.expires_at)

    def _delete_rows(self, name: str) -> None:
        self.store.write("DELETE FROM harbor_members WHERE harbor_name = ?", (name,))
        self.store.write("DELETE FROM harbors WHERE name = ?", (name,))

    def _live(self, name: str, now: int) -> Harbor | None:
        harbor = self.harbors.get(name)
        if harbor is not None and harbor.expires_at is not None and harbor.expires_at <= now:
            return None
        return harbor

    def _require(self, name: str, now: int) -> Harbor:
        harbor = self._live(name, now)
        if harbor is None:
            raise OpError("not_found", f"no harbor {name}; create it with POST /harbors or `pd harbor create {name}`",
                          "name")
        return harbor

    # -- queries used by other primitives --------------------------------------------------
    def get_harbor(self, name: str, now: int | None = None) -> Harbor | None:
        return self._live(name, self.root.clock() if now is None else now)

    def member_of(self, name: str, agent_id: str) -> Member | None:
        harbor = self.harbors.get(name)
        return harbor.members.get(agent_id) if harbor is not None else None

    def harbors_of(self, agent_id: str) -> list[str]:
        return sorted(self.by_agent.get(agent_id, ()))

    # -- operations ------------------------------------------------------------------------
    def create(self, ctx: Ctx, name: str, capabilities: list | None = None, channels: list | None = None,
               expiresIn: int | None = None, metadata: dict | None = None) -> dict:
        """Create a harbor, or update the one of that name (`existing: true`) with what is given."""
        caps = _capabilities(capabilities, "capabilities") if capabilities is not None else None
        chans = _capabilities(channels, "channels") if channels is not None else None
        expires_at = ctx.now + expiresIn if expiresIn else None
        harbor = self._live(name, ctx.now)
        existing = harbor is not None
        if harbor is None:
            stale = self.harbors.pop(name, None)  # expired but its timer has not fired yet
            if stale is not None:
                self._forget_members(stale)
                self._delete_rows(name)
            harbor = Harbor(name, caps or [], chans or [], metadata, ctx.now, expires_at)
            self.harbors[name] = harbor
        else:
            if caps is not None:
                harbor.capabilities = caps
            if chans is not None:
                harbor.channels = chans
            if metadata is not None:
                harbor.metadata = metadata
            if expiresIn:
                harbor.expires_at = expires_at
        self.store.write(
            "INSERT INTO harbors (name, capabilities, channels, metadata, created_at, expires_at) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET capabilities=excluded.capabilities, channels=excluded.channels, "
            "metadata=excluded.metadata, expires_at=excluded.expires_at",
            (name, json.dumps(harbor.capabilities), json.dumps(harbor.channels),
             json.dumps(harbor.metadata) if harbor.metadata is not None else None, harbor.created_at,
             harbor.expires_at),
        )
        self._arm(harbor)
        self.root.activity.record(ctx, "harbor.update" if existing else "harbor.create", name,
                                  capabilities=harbor.capabilities)
        self.root.publish(CHANNEL, {"event": "harbor.updated" if existing else "harbor.created", "harbor": name},
                          ctx.agent_id, ctx.now)
        return {"harbor": harbor.to_dict(), "existing": existing,
                "message": f"{'updated' if existing else 'created'} harbor {name}"}

    def list(self, ctx: Ctx, pattern: str | None = None, limit: int = 100) -> dict:
        match = compile_pattern([pattern]).match if pattern else None
        found = [h for h in self.harbors.values()
                 if (h.expires_at is None or h.expires_at > ctx.now) and (match is None or match([h.name]))]
        found.sort(key=lambda h: h.created_at, reverse=True)
        return {"harbors": [h.to_dict() for h in found[:limit]], "count": len(found)}

    def get(self, ctx: Ctx, name: str) -> dict:
        return {"harbor": self._require(name, ctx.now).to_dict()}

    def destroy(self, ctx: Ctx, name: str) -> dict:
        harbor = self._require(name, ctx.now)
        self._destroy(ctx, harbor, "destroyed")
        return {"destroyed": True, "name": name, "message": f"destroyed harbor {name}"}

    def _destroy(self, ctx: Ctx, harbor: Harbor, reason: str) -> None:
        del self.harbors[harbor.name]
        if harbor.timer is not None:
            harbor.timer.cancel()
        self._forget_members(harbor)
        self._delete_rows(harbor.name)
        self.root.activity.record(ctx, "harbor.destroy", harbor.name, reason=reason)
        self.root.publish(CHANNEL, {"event": "harbor.destroyed", "harbor": harbor.name, "reason": reason},
                          ctx.agent_id, ctx.now)

    def _forget_members(self, harbor: Harbor) -> None:
        for agent_id in harbor.members:
            names = self.by_agent.get(agent_id)
            if names is not None:
                names.discard(harbor.name)
                if not names:
                    del self.by_agent[agent_id]

    def enter(self, ctx: Ctx, name: str, agentId: str | None = None, capabilities: list | None = None,
              identity: str | None = None) -> dict:
        """An agent enters a harbor declaring its capabilities (re-entering replaces them)."""
        agent_id = agentId or ctx.agent_id
        if not agent_id:
            raise OpError("missing_field", "agentId is required: the agent entering the harbor", "agentId")
        harbor = self._require(name, ctx.now)
        caps = _capabilities(capabilities, "capabilities")
        if harbor.gated:
            beyond = [c for c in caps if not covers(harbor.capabilities, c)]
            if beyond:
                arbiter = getattr(self.root, "arbiter", None)
                if arbiter is not None:
                    arbiter.capability_escalation(ctx, name, agent_id, beyond, harbor.capabilities, "enter")
                raise OpError("capability_denied",
                              f"harbor {name} grants only {', '.join(harbor.capabilities)}; "
                              f"{', '.join(beyond)} is not among them (enter with a subset)", "capabilities",
                              denied=beyond, allowed=harbor.capabilities)
        if agent_id not in harbor.members and len(harbor.members) >= self.config.harbor_max_members:
            raise OpError("harbor_full", f"harbor {name} already has {len(harbor.members)} members "
                                         "(harbor_max_members)", "name")
        member = Member(agent_id, identity, caps, ctx.now)
        harbor.members[agent_id] = member
        self.by_agent.setdefault(agent_id, set()).add(name)
        self.store.write(
            "INSERT INTO harbor_members (harbor_name, agent_id, identity, capabilities, joined_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT(harbor_name, agent_id) DO UPDATE SET identity=excluded.identity, "
            "capabilities=excluded.capabilities, joined_at=excluded.joined_at",
            (name, agent_id, identity, json.dumps(caps), ctx.now),
        )
        self.root.activity.record(ctx, "harbor.enter", name, actor=agent_id, capabilities=caps)
        self.root.publish(CHANNEL, {"event": "harbor.entered", "harbor": name, "agentId": agent_id,
                                    "capabilities": caps}, agent_id, ctx.now)
        return {"harbor": harbor.to_dict(), "member": member.to_dict(), "message": f"{agent_id} entered {name}"}

    def leave(self, ctx: Ctx, name: str, agentId: str | None = None) -> dict:
        agent_id = agentId or ctx.agent_id
        if not agent_id:
            raise OpError("missing_field", "agentId is required: the agent leaving the harbor", "agentId")
        harbor = self._require(name, ctx.now)
        if agent_id not in harbor.members:
            raise OpError("not_found", f"agent {agent_id} is not in harbor {name}", "agentId")
        self._leave(ctx, harbor, agent_id, "left")
        return {"left": True, "name": name, "agentId": agent_id, "message": f"{agent_id} left {name}"}

    def _leave(self, ctx: Ctx, harbor: Harbor, agent_id: str, reason: str) -> None:
        del harbor.members[agent_id]
        names = self.by_agent.get(agent_id)
        if names is not None:
            names.discard(harbor.name)
            if not names:
                del self.by_agent[agent_id]
        self.store.write("DELETE FROM harbor_members WHERE harbor_name = ? AND agent_id = ?", (harbor.name, agent_id))
        self.root.activity.record(ctx, "harbor.leave", harbor.name, actor=agent_id, reason=reason)
        self.root.publish(CHANNEL, {"event": "harbor.left", "harbor": harbor.name, "agentId": agent_id,
                                    "reason": reason}, agent_id, ctx.now)

    def members(self, ctx: Ctx, name: str) -> dict:
        harbor = self._require(name, ctx.now)
        members = [m.to_dict() for m in sorted(harbor.members.values(), key=lambda m: m.joined_at)]
        return {"name": name, "members": members, "count": len(members)}

    def memberships(self, ctx: Ctx, agentId: str) -> dict:
        """The harbors an agent is in."""
        found = [self.harbors[n] for n in self.harbors_of(agentId) if self._live(n, ctx.now) is not None]
        return {"agentId": agentId, "harbors": [h.to_dict() for h in found], "count": len(found)}

    # -- hooks and deadlines ---------------------------------------------------------------
    def on_agent_dead(self, ctx: Ctx, agent_id: str, pid: int | None = None) -> None:
        """A dead agent leaves every harbor it was in."""
        for name in self.harbors_of(agent_id):
            harbor = self.harbors.get(name)
            if harbor is not None and agent_id in harbor.members:
                self._leave(ctx, harbor, agent_id, "agent dead")

    def _expire(self, name: str, expires_at: int) -> None:
        harbor = self.harbors.get(name)
        if harbor is not None and harbor.expires_at == expires_at:
            harbor.timer = None
            self._destroy(Ctx(self.root.clock(), source="internal"), harbor, "expired")


PRIMITIVE = Harbors
