"""Agents, heartbeats and the reaper (SPEC.md §3).

A heartbeat only stamps the agent in memory (no SQL, no heap work): the last heartbeats are
written to the database in one batch every `heartbeat_flush_ms`, so a restart neither kills
every agent nor revives dead ones. The reaper keeps one min-heap of what is due per agent (the
moment its heartbeat would pass the dead threshold, its next pid check, the end of a dead
agent's retention) and one core timer on the earliest entry: a pass with nothing due touches
nothing. A heartbeat never moves a heap entry; when an entry comes due the reaper compares it
with the agent's real last heartbeat and, if the agent is still fresh, pushes it back.

When an agent dies the reaper announces it with `root.notify("on_agent_dead", ctx, agent_id,
pid)`: salvage takes its active session, locks release what it held. The claims made with its
pid are released here, an activity record is written and `pd:agents` gets an event.
"""

from __future__ import annotations

import heapq
import itertools
import json
import secrets
from typing import Any

import psutil

from pdcore.errors import OpError
from pdcore.procs import pid_alive, process_start
from pdcore.state.base import Ctx, Primitive
from pdcore.state.sessions import project_of
from pdcore.timers import Timer

CHANNEL = "pd:agents"

# reaper heap entry kinds
_DEADLINE = 0  # the heartbeat would pass the dead threshold
_PID = 1  # time to check the registered process
_PURGE = 2  # a dead agent's retention is over


def process_alive(pid: int, started: float | None) -> bool:
    """The registered process still runs: same pid, same start time, and not a zombie (an exited
    process its parent has not reaped yet is dead for us)."""
    if not pid_alive(pid, started):
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def new_agent_id() -> str:
    return f"agent-{secrets.token_hex(4)}"


class Agent:
    __slots__ = ("id", "name", "type", "pid", "pid_start", "identity", "purpose", "metadata", "max_services",
                 "max_locks", "registered_at", "last_heartbeat", "dead_at", "dead_reason", "gen")

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))
        self.gen = kw.get("gen") or 0

    def liveness(self, now: int, stale_ms: int, dead_ms: int) -> str:
        """alive | stale | dead, from the last heartbeat (and the reaper's verdict)."""
        if self.dead_at is not None:
            return "dead"
        age = now - self.last_heartbeat
        if age >= dead_ms:
            return "dead"
        return "stale" if age >= stale_ms else "alive"

    def to_dict(self, now: int, stale_ms: int, dead_ms: int) -> dict:
        liveness = self.liveness(now, stale_ms, dead_ms)
        return {
            "id": self.id,
            "agentId": self.id,
            "name": self.name,
            "type": self.type,
            "pid": self.pid,
            "identity": self.identity,
            "purpose": self.purpose,
            "metadata": self.metadata,
            "maxServices": self.max_services,
            "maxLocks": self.max_locks,
            "registeredAt": self.registered_at,
            "lastHeartbeat": self.last_heartbeat,
            "status": liveness,
            "liveness": liveness,
            "isActive": liveness != "dead",
            "diedAt": self.dead_at,
            "deadReason": self.dead_reason,
        }


class Agents(Primitive):
    name = "agents"
    load_order = 20

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.by_id: dict[str, Agent] = {}
        self._heap: list[tuple[int, int, int, str, int]] = []  # (due, seq, kind, agent id, gen)
        self._seq = itertools.count()
        self._timer: Timer | None = None
        self._timer_due: int | None = None
        self._dirty: set[str] = set()  # agents whose last heartbeat is newer in memory than in the db
        self._flush_timer: Timer | None = None
        self.heartbeats = 0
        self.reaped = 0
        self.team: Any = None  # TeamMembers in team mode: agents, sessions and notes are published to the team

    def on_team_link(self, link: Any) -> None:
        """Team mode (docs/team.md): this host's agents, sessions and notes are published to the space."""
        from pdcore.team.members import TeamMembers

        self.team = TeamMembers(self.root, link)

    # -- loading ---------------------------------------------------------------------------
    def load(self, now: int) -> None:
        cfg = self.config
        rows = self.store.read(
            "SELECT id, name, type, pid, pid_start, identity, purpose, metadata, max_services, max_locks, "
            "registered_at, last_heartbeat, dead_at, dead_reason FROM agents"
        )
        for r in rows:
            agent = Agent(id=r[0], name=r[1], type=r[2], pid=r[3], pid_start=r[4], identity=r[5], purpose=r[6],
                          metadata=json.loads(r[7]) if r[7] else None, max_services=r[8], max_locks=r[9],
                          registered_at=r[10], last_heartbeat=r[11], dead_at=r[12], dead_reason=r[13])
            self.by_id[agent.id] = agent
            if agent.dead_at is not None:
                self._push(agent.dead_at + cfg.agent_dead_retention_ms, _PURGE, agent)
                continue
            # The daemon was away: a heartbeat-late agent gets a short grace to reconnect.
            self._push(max(agent.last_heartbeat + cfg.agent_dead_ms, now + cfg.agent_restart_grace_ms),
                       _DEADLINE, agent)
            if agent.pid:
                self._push(now, _PID, agent)
        self._arm(now)

    def counts(self) -> dict[str, int]:
        dead = sum(1 for a in self.by_id.values() if a.dead_at is not None)
        return {"agents": len(self.by_id) - dead, "agents_dead": dead}

    # -- queries used by other primitives --------------------------------------------------
    def get_agent(self, agent_id: str) -> Agent | None:
        return self.by_id.get(agent_id)

    def is_live(self, agent_id: str) -> bool:
        agent = self.by_id.get(agent_id)
        return agent is not None and agent.dead_at is None

    def liveness_of(self, agent: Agent, now: int) -> str:
        return agent.liveness(now, self.config.agent_stale_ms, self.config.agent_dead_ms)

    def describe(self, agent: Agent, now: int) -> dict:
        return agent.to_dict(now, self.config.agent_stale_ms, self.config.agent_dead_ms)

    # -- registration ----------------------------------------------------------------------
    def check_pid(self, pid: int | None) -> float | None:
        """The start time of `pid`, refusing a pid that is not a running process."""
        if pid is None:
            return None
        start = process_start(pid)
        if start is None:
            raise OpError("invalid_argument", f"pid {pid} is not a running process; pass the pid of the agent "
                          "process, or none", "pid")
        return start

    def apply_register(self, ctx: Ctx, agent_id: str, pid: int | None, pid_start: float | None,
                       name: str | None = None, type: str | None = None, identity: str | None = None,
                       purpose: str | None = None, metadata: dict | None = None, max_services: int | None = None,
                       max_locks: int | None = None) -> tuple[Agent, bool]:
        """Create or update an agent from validated values (cannot fail). Returns (agent, created)."""
        now = ctx.now
        agent = self.by_id.get(agent_id)
        created = agent is None or agent.dead_at is not None
        if agent is None:
            agent = Agent(id=agent_id, registered_at=now)
            self.by_id[agent_id] = agent
        elif agent.dead_at is not None:
            agent.dead_at = agent.dead_reason = None
            agent.registered_at = now
        for attr, value in (("name", name), ("type", type), ("identity", identity), ("purpose", purpose),
                            ("metadata", metadata), ("max_services", max_services), ("max_locks", max_locks)):
            if value is not None:
                setattr(agent, attr, value)
        if pid is not None:
            agent.pid, agent.pid_start = pid, pid_start
        agent.last_heartbeat = now
        agent.gen += 1  # every earlier reaper entry of this agent is void
        self._dirty.discard(agent_id)
        self.store.write(
            "INSERT INTO agents (id, name, type, pid, pid_start, identity, purpose, metadata, max_services, "
            "max_locks, registered_at, last_heartbeat, dead_at, dead_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL,NULL) "
            "ON CONFLICT(id) DO UPDATE SET name=excluded.name, type=excluded.type, pid=excluded.pid, "
            "pid_start=excluded.pid_start, identity=excluded.identity, purpose=excluded.purpose, "
            "metadata=excluded.metadata, max_services=excluded.max_services, max_locks=excluded.max_locks, "
            "registered_at=excluded.registered_at, last_heartbeat=excluded.last_heartbeat, dead_at=NULL, "
            "dead_reason=NULL",
            (agent.id, agent.name, agent.type, agent.pid, agent.pid_start, agent.identity, agent.purpose,
             json.dumps(agent.metadata) if agent.metadata is not None else None, agent.max_services,
             agent.max_locks, agent.registered_at, now),
        )
        self._push(now + self.config.agent_dead_ms, _DEADLINE, agent)
        if agent.pid:
            self._push(now + self.config.reaper_interval_ms, _PID, agent)
        self._arm(now)
        if self.team is not None:
            self.team.agent_changed(agent_id)
        if created:
            self.root.activity.record(ctx, "agent.register", agent_id, actor=agent_id, pid=agent.pid)
            self.root.publish(CHANNEL, {"event": "agent.registered", "agentId": agent_id, "pid": agent.pid,
                                        "identity": agent.identity}, None, now)
        return agent, created

    def apply_unregister(self, ctx: Ctx, agent_id: str) -> bool:
        """Forget an agent that leaves cleanly (not a death: nothing goes to salvage)."""
        agent = self.by_id.pop(agent_id, None)
        if agent is None:
            return False
        agent.gen += 1
        self._dirty.discard(agent_id)
        self.store.write("DELETE FROM agents WHERE id=?", (agent_id,))
        if self.team is not None:
            self.team.agent_changed(agent_id)
        self.root.activity.record(ctx, "agent.unregister", agent_id, actor=agent_id)
        self.root.publish(CHANNEL, {"event": "agent.unregistered", "agentId": agent_id}, None, ctx.now)
        return True

    # -- operations ------------------------------------------------------------------------
    def register(self, ctx: Ctx, id: str | None = None, name: str | None = None, type: str | None = None,
                 pid: int | None = None, identity: str | None = None, purpose: str | None = None,
                 metadata: dict | None = None, maxServices: int | None = None, maxLocks: int | None = None) -> dict:
        if self.team is not None:
            self.team.require()
        result = self._register(ctx, id or ctx.agent_id or new_agent_id(), pid, name, type, identity, purpose,
                                metadata, maxServices, maxLocks)
        return result if self.team is None else self.team.acked(result)

    def _register(self, ctx: Ctx, agent_id: str, pid: int | None, name: str | None = None, type: str | None = None,
                  identity: str | None = None, purpose: str | None = None, metadata: dict | None = None,
                  max_services: int | None = None, max_locks: int | None = None) -> dict:
        pid_start = self.check_pid(pid)
        agent, created = self.apply_register(ctx, agent_id, pid, pid_start, name, type, identity, purpose,
                                             metadata, max_services, max_locks)
        return {"agentId": agent_id, "registered": True, "created": created, "agent": self.describe(agent, ctx.now),
                "message": f"registered agent {agent_id}" if created else f"updated agent {agent_id}"}

    def heartbeat(self, ctx: Ctx, id: str | None = None, agentId: str | None = None, pid: int | None = None) -> dict:
        """Stamp the agent as alive. The hot path: a dict lookup and two assignments."""
        agent_id = id or agentId or ctx.agent_id
        agent = self.by_id.get(agent_id) if agent_id else None
        if agent is None or agent.dead_at is not None or (pid is not None and pid != agent.pid):
            if not agent_id:
                raise OpError("missing_field", "id (the agent id) is required", "id")
            registered = self._register(ctx, agent_id, pid)
            self._arm_flush(ctx.now)  # also gets the registration committed when nobody awaits a reply
            # 3.7 answered a first heartbeat with its registration reply (registered, message, salvageHint)
            agent = self.by_id[agent_id]
            salvage = self.root.salvage.hint_for(project_of(agent.identity))
            return {**registered, "lastHeartbeat": ctx.now, "status": "alive", "deadAgentsInProject":
                    salvage["count"] if salvage else 0, "salvageHint": salvage["message"] if salvage else None}
        agent.last_heartbeat = ctx.now
        self.heartbeats += 1
        self._dirty.add(agent_id)
        if self.team is not None:
            self.team.agent_beat(agent_id)
        if self._flush_timer is None:
            self._arm_flush(ctx.now)
        return {"agentId": agent_id, "lastHeartbeat": ctx.now, "status": "alive"}

    def unregister(self, ctx: Ctx, id: str) -> dict:
        if id not in self.by_id:
            raise OpError("not_found", f"no agent {id}", "id")
        if self.team is not None:
            self.team.require()
        self.apply_unregister(ctx, id)
        result = {"agentId": id, "unregistered": True}
        return result if self.team is None else self.team.acked(result)

    def get(self, ctx: Ctx, id: str) -> dict:
        agent = self.by_id.get(id)
        remote = self.team.remote_agent(id) if agent is None and self.team is not None else None
        if remote is not None:
            return {"agent": remote}
        if agent is None:
            raise OpError("not_found", f"no agent {id}; register it with POST /agents or pd begin", "id")
        out = self.describe(agent, ctx.now)
        session = self.root.sessions.active_for_agent(id)
        out["sessionId"] = session.id if session else None
        return {"agent": out}

    def list(self, ctx: Ctx, active: bool | None = None, status: str | None = None, identity: str | None = None,
             limit: int = 1000) -> dict:
        now = ctx.now
        out = []
        for agent in self.by_id.values():
            live = self.liveness_of(agent, now)
            if active and live == "dead":
                continue
            if status is not None and live != status:
                continue
            if identity is not None and not (agent.identity or "").startswith(identity.rstrip("*")):
                continue
            out.append(agent)
        out.sort(key=lambda a: a.registered_at)
        found = [self.describe(a, now) for a in out]
        if self.team is not None:  # the agents of the other hosts, as they last published them
            found += [r for r in (self.team.remote_agent(a) for a in list(self.team.agents)) if r is not None
                      and not (active and r["status"] == "dead") and (status is None or r["status"] == status)
                      and (identity is None or (r.get("identity") or "").startswith(identity.rstrip("*")))]
        return {"agents": found[:limit], "count": len(found)}

    # -- the reaper ------------------------------------------------------------------------
    def _push(self, due: int, kind: int, agent: Agent) -> None:
        heapq.heappush(self._heap, (int(due), next(self._seq), kind, agent.id, agent.gen))

    def _arm(self, now: int) -> None:
        """Keep one core timer on the earliest reaper entry."""
        heap = self._heap
        if not heap:
            return
        due = max(heap[0][0], now)
        if self._timer is not None and self._timer_due is not None and self._timer_due <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.root.timers.add(due, self._reap)

    def _reap(self) -> None:
        """One reaper pass: handle the entries that are due, nothing else."""
        self._timer = self._timer_due = None
        now = self.root.clock()
        cfg = self.config
        # pid checks coming due shortly are done now, so agents registered close together share a pass
        pid_horizon = now + min(1000, cfg.reaper_interval_ms // 4)
        heap = self._heap
        ctx: Ctx | None = None
        while heap and heap[0][0] <= pid_horizon:
            due, _, kind, agent_id, gen = heap[0]
            if due > now and kind != _PID:
                break
            heapq.heappop(heap)
            agent = self.by_id.get(agent_id)
            if agent is None or agent.gen != gen:
                continue  # unregistered or re-registered since: the entry is void
            if kind == _PURGE:
                self._purge(agent)
            elif agent.dead_at is not None:
                continue
            elif kind == _DEADLINE:
                deadline = agent.last_heartbeat + cfg.agent_dead_ms
                if deadline > now:
                    self._push(deadline, _DEADLINE, agent)  # it heartbeated since: look again then
                else:
                    ctx = ctx or Ctx(now, source="internal")
                    self.mark_dead(ctx, agent, "no heartbeat")
            elif kind == _PID:
                if process_alive(agent.pid, agent.pid_start):
                    self._push(now + cfg.reaper_interval_ms, _PID, agent)
                else:
                    ctx = ctx or Ctx(now, source="internal")
                    self.mark_dead(ctx, agent, "process gone")
        self._arm(now)

    def mark_dead(self, ctx: Ctx, agent: Agent, reason: str) -> None:
        """The agent is dead: record it, release its pid's claims, tell the other primitives."""
        now = ctx.now
        agent.dead_at = now
        agent.dead_reason = reason
        agent.gen += 1
        self._dirty.discard(agent.id)
        self.reaped += 1
        self.store.write("UPDATE agents SET dead_at=?, dead_reason=?, last_heartbeat=? WHERE id=?",
                         (now, reason, agent.last_heartbeat, agent.id))
        self._push(now + self.config.agent_dead_retention_ms, _PURGE, agent)
        released: list[int] = []
        if agent.pid:
            released = self.root.ports.release_pid(ctx, agent.pid, reason=f"agent {agent.id} dead")
        session = self.root.sessions.active_for_agent(agent.id)
        self.root.notify("on_agent_dead", ctx, agent.id, agent.pid)
        self.root.activity.record(ctx, "agent.dead", agent.id, actor=agent.id, reason=reason, pid=agent.pid,
                                  lastHeartbeat=agent.last_heartbeat, releasedPorts=released)
        self.root.publish(CHANNEL, {"event": "agent.dead", "agentId": agent.id, "pid": agent.pid, "reason": reason,
                                    "diedAt": now, "lastHeartbeat": agent.last_heartbeat,
                                    "sessionId": session.id if session else None, "releasedPorts": released},
                          None, now)
        if self.team is not None:
            self.team.agent_changed(agent.id)
            self.team.kick()

    def _purge(self, agent: Agent) -> None:
        del self.by_id[agent.id]
        self.store.write("DELETE FROM agents WHERE id=? AND dead_at IS NOT NULL", (agent.id,))

    # -- lazy persistence of heartbeats ----------------------------------------------------
    def _arm_flush(self, now: int) -> None:
        if self._flush_timer is None:
            self._flush_timer = self.root.timers.add(now + self.config.heartbeat_flush_ms, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        self.flush_heartbeats()

    def flush_heartbeats(self) -> int:
        """Write the last heartbeat of every agent stamped since the last flush, in one statement."""
        if not self._dirty:
            return 0
        rows = [(self.by_id[a].last_heartbeat, a) for a in self._dirty if a in self.by_id]
        self._dirty.clear()
        if rows:
            self.store.write_many("UPDATE agents SET last_heartbeat=? WHERE id=?", rows)
        return len(rows)

    def on_shutdown(self) -> None:
        """Called by the core before it closes the database: keep the freshest heartbeats."""
        self.flush_heartbeats()


PRIMITIVE = Agents
