"""Ports and semantic identities (SPEC.md §2).

An identity's port is a stable hash of its text into the configured range, probing onward
past reserved ports, ports held by other identities and ports bound outside Port Daddy.
Claims are sticky. Identities live in a trie; free ports in a bitmap; so neither a claim nor
a `find` costs more as the table grows.
"""

from __future__ import annotations

import errno
import json
import socket
from _socket import socket as _raw_socket
from typing import Any

from pdcore.errors import OpError
from pdcore.identity import stable_hash
from pdcore.procs import pid_alive, process_start
from pdcore.state.base import Ctx, Primitive
from pdcore.state.portmap import FreePorts
from pdcore.state.trie import IdentityTrie, matches
from pdcore.timers import Timer

MAX_BOUND_PROBES = 256
_INSERT_SERVICE = ("INSERT INTO services (id, port, pid, pid_start, cmd, cwd, status, metadata, pair, endpoints, "
                   "created_at, updated_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")


def port_is_bindable(port: int) -> bool:
    """True when nothing else on this machine has bound `port` (IPv4).

    One bind to the wildcard address suffices: it fails when any address (127.0.0.1 included)
    holds the port, so a single syscall pair answers for loopback and all interfaces.
    """
    s = _raw_socket(socket.AF_INET, socket.SOCK_STREAM)  # the C socket: no Python wrapper on a hot path
    try:
        s.bind(("", port))  # "" is INADDR_ANY
    except OSError as exc:
        return exc.errno not in (errno.EADDRINUSE, errno.EACCES)
    finally:
        s.close()
    return True


class Service:
    __slots__ = ("id", "port", "pid", "pid_start", "cmd", "cwd", "status", "metadata", "pair",
                 "endpoints", "created_at", "updated_at", "expires_at", "expiry_timer")

    def __init__(self, id: str, port: int, pid: int | None = None, pid_start: float | None = None,
                 cmd: str | None = None, cwd: str | None = None, status: str = "assigned",
                 metadata: dict | None = None, pair: str | None = None, endpoints: dict | None = None,
                 created_at: int = 0, updated_at: int = 0, expires_at: int | None = None) -> None:
        self.id, self.port, self.pid, self.pid_start = id, port, pid, pid_start
        self.cmd, self.cwd, self.status, self.metadata = cmd, cwd, status, metadata
        self.pair, self.endpoints = pair, endpoints
        self.created_at, self.updated_at, self.expires_at = created_at, updated_at, expires_at
        self.expiry_timer: Timer | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "port": self.port,
            "pid": self.pid,
            "cmd": self.cmd,
            "cwd": self.cwd,
            "status": self.status,
            "metadata": self.metadata,
            "pair": self.pair,
            "endpoints": self.endpoints or {},
            "createdAt": self.created_at,
            "lastSeen": self.updated_at,
            "expiresAt": self.expires_at,
        }

    def shm_row(self) -> tuple:
        """to_dict's values after "id", in pdcore.shm.RECORD_FIELDS order (a state.shm slot's row)."""
        return (self.port, self.pid, self.cmd, self.cwd, self.status, self.metadata, self.pair, self.endpoints or {},
                self.created_at, self.updated_at, self.expires_at)


class Ports(Primitive):
    name = "ports"
    load_order = 10

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.trie = IdentityTrie()
        self.by_port: dict[int, Service] = {}
        self.free = FreePorts()
        cfg = self.config
        self.lo, self.hi = cfg.port_range_start, cfg.port_range_end
        self.reserved = set(cfg.reserved_ports)
        for p in self.reserved:
            self.free.mark_used(p)
        self.with_pid: dict[str, Service] = {}
        self._pid_timer: Timer | None = None
        self.changed: set[str] = set()  # identities changed since the core last published state.shm

    # -- loading ---------------------------------------------------------------------------
    def load(self, now: int) -> None:
        rows = self.store.read(
            "SELECT id, port, pid, pid_start, cmd, cwd, status, metadata, pair, endpoints, created_at, "
            "updated_at, expires_at FROM services"
        )
        for r in rows:
            svc = Service(
                id=r[0], port=r[1], pid=r[2], pid_start=r[3], cmd=r[4], cwd=r[5], status=r[6],
                metadata=json.loads(r[7]) if r[7] else None, pair=r[8],
                endpoints=json.loads(r[9]) if r[9] else None, created_at=r[10], updated_at=r[11], expires_at=r[12],
            )
            self._index(svc)
        self._arm_pid_check(now)

    def counts(self) -> dict[str, int]:
        return {"services": len(self.trie)}

    def take_changed(self) -> set[str]:
        """Identities whose record changed since the last call (the core mirrors them to state.shm)."""
        changed, self.changed = self.changed, set()
        return changed

    def _index(self, svc: Service) -> None:
        self.changed.add(svc.id)
        self.trie.set(svc.id, svc)
        self.by_port[svc.port] = svc
        self.free.mark_used(svc.port)
        if svc.expires_at:
            svc.expiry_timer = self.root.timers.add(svc.expires_at, self._expire, svc.id, svc.expires_at)
        if svc.pid:
            self.with_pid[svc.id] = svc

    def _unindex(self, svc: Service) -> None:
        self.changed.add(svc.id)
        self.trie.delete(svc.id)
        del self.by_port[svc.port]
        if svc.port not in self.reserved:
            self.free.mark_free(svc.port)
        if svc.expiry_timer is not None:
            svc.expiry_timer.cancel()
        self.with_pid.pop(svc.id, None)

    # -- choosing a port -------------------------------------------------------------------
    def _pick(self, identity: str, lo: int, hi: int) -> int:
        start = lo + stable_hash(identity) % (hi - lo + 1)
        probes = 0
        candidate = start
        while True:
            port = self.free.next_free(candidate, lo, hi)
            if port < 0:
                raise OpError("port_unavailable", f"no free port left in {lo}-{hi}", "range")
            if not self.config.probe_bound_ports or port_is_bindable(port):
                return port
            probes += 1
            if probes >= MAX_BOUND_PROBES:
                raise OpError("port_unavailable", f"{MAX_BOUND_PROBES} ports in a row are bound by other processes", "range")
            candidate = port + 1 if port < hi else lo
            if candidate == start:
                raise OpError("port_unavailable", f"no free port left in {lo}-{hi}", "range")

    @staticmethod
    def _parse_range(value: Any) -> tuple[int, int]:
        try:
            if isinstance(value, str):
                a, _, b = value.partition("-")
                lo, hi = int(a), int(b)
            elif isinstance(value, (list, tuple)) and len(value) == 2:
                lo, hi = int(value[0]), int(value[1])
            else:
                raise ValueError
        except (TypeError, ValueError):
            raise OpError("invalid_argument", "range must be 'START-END' or [start, end]", "range") from None
        if not (1 <= lo <= hi <= 65535):
            raise OpError("invalid_argument", "range must satisfy 1 <= start <= end <= 65535", "range")
        return lo, hi

    # -- operations ------------------------------------------------------------------------
    def claim(
        self,
        ctx: Ctx,
        id: str,
        port: int | None = None,
        range: Any = None,
        pid: int | None = None,
        cmd: str | None = None,
        cwd: str | None = None,
        expires: int | None = None,
        metadata: dict | None = None,
        pair: str | None = None,
    ) -> dict:
        if pid is not None:
            self.root.arbiter.check_claim_pid(ctx, pid, identity=id)
        svc = self.trie.get(id)
        if svc is not None:
            if pid is not None or cmd is not None or cwd is not None or expires is not None or metadata is not None:
                self._update(ctx, svc, pid, cmd, cwd, expires, metadata, pair)
            return {"port": svc.port, "id": id, "status": svc.status, "existing": True,
                    "message": f"{id} already holds port {svc.port}"}

        lo, hi = (self.lo, self.hi) if range is None else self._parse_range(range)
        if port is not None:
            holder = self.by_port.get(port)
            if holder is not None:
                raise OpError("port_unavailable", f"port {port} is held by {holder.id}", "port", holder=holder.id)
            if self.config.probe_bound_ports and not port_is_bindable(port):
                raise OpError("port_unavailable", f"port {port} is in use by a process outside Port Daddy", "port")
            chosen = port
        else:
            chosen = self._pick(id, lo, hi)

        pid_start = process_start(pid) if pid else None
        if pid and pid_start is None:
            raise OpError("invalid_argument", f"pid {pid} is not a running process", "pid")
        expires_at = ctx.now + expires if expires else None
        svc = Service(id=id, port=chosen, pid=pid, pid_start=pid_start, cmd=cmd, cwd=cwd, status="assigned",
                      metadata=metadata, pair=pair, endpoints=None, created_at=ctx.now, updated_at=ctx.now,
                      expires_at=expires_at)
        self.store.stage(
            _INSERT_SERVICE,
            (id, chosen, pid, pid_start, cmd, cwd, "assigned", json.dumps(metadata) if metadata else None, pair,
             None, ctx.now, ctx.now, expires_at),
        )
        self._index(svc)
        if pid:
            self._arm_pid_check(ctx.now)
        self.root.activity.record(ctx, "service.claim", id, port=chosen)
        return {"port": chosen, "id": id, "status": "assigned", "existing": False,
                "message": f"claimed port {chosen} for {id}"}

    def _update(self, ctx: Ctx, svc: Service, pid: int | None, cmd: str | None, cwd: str | None,
                expires: int | None, metadata: dict | None, pair: str | None) -> None:
        if pid is not None and pid != svc.pid:
            start = process_start(pid)
            if start is None:
                raise OpError("invalid_argument", f"pid {pid} is not a running process", "pid")
            svc.pid, svc.pid_start = pid, start
            self.with_pid[svc.id] = svc
            self._arm_pid_check(ctx.now)
        if cmd is not None:
            svc.cmd = cmd
        if cwd is not None:
            svc.cwd = cwd
        if metadata is not None:
            svc.metadata = metadata
        if pair is not None:
            svc.pair = pair
        if expires is not None:
            if svc.expiry_timer is not None:
                svc.expiry_timer.cancel()
            svc.expires_at = ctx.now + expires
            svc.expiry_timer = self.root.timers.add(svc.expires_at, self._expire, svc.id, svc.expires_at)
        svc.updated_at = ctx.now
        self.changed.add(svc.id)
        self.store.write(
            "UPDATE services SET pid=?, pid_start=?, cmd=?, cwd=?, metadata=?, pair=?, updated_at=?, expires_at=? "
            "WHERE id=?",
            (svc.pid, svc.pid_start, svc.cmd, svc.cwd, json.dumps(svc.metadata) if svc.metadata else None,
             svc.pair, svc.updated_at, svc.expires_at, svc.id),
        )

    def _remove(self, ctx: Ctx, svc: Service, reason: str) -> None:
        self._unindex(svc)
        self.store.write("DELETE FROM services WHERE id=?", (svc.id,))
        self.root.activity.record(ctx, "service.release", svc.id, port=svc.port, reason=reason)

    def release(self, ctx: Ctx, id: str | None = None, port: int | None = None) -> dict:
        if id is None and port is None:
            raise OpError("missing_field", "id (an identity or pattern) or port is required", "id")
        if port is not None:
            svc = self.by_port.get(port)
            targets = [svc] if svc is not None and (id is None or svc.id == id) else []
        else:
            targets = list(self.trie.find(id))
        for svc in targets:
            self._remove(ctx, svc, "released")
        ports = sorted(s.port for s in targets)
        return {"released": len(targets), "releasedPorts": ports,
                "message": f"released {len(targets)} service(s)" if targets else "nothing matched"}

    def release_pid(self, ctx: Ctx, pid: int, reason: str = "pid gone") -> list[int]:
        """Release every claim made with `pid` (the reaper calls this for dead agents)."""
        gone = [s for s in self.with_pid.values() if s.pid == pid]
        for svc in gone:
            self._remove(ctx, svc, reason)
        return [s.port for s in gone]

    def list(self, ctx: Ctx, pattern: str | None = None, status: str | None = None, port: int | None = None,
             limit: int = 1000, team: bool | None = None) -> dict:
        if team:  # every host's services, as `host:port` (docs/team.md)
            members = self.root.agents.team
            if members is None:
                raise OpError("invalid_argument", "team is for team mode; this daemon is in local mode "
                                                  "(pd team join URL --space NAME)", "team")
            return members.services_of_team(pattern, status, limit)
        if port is not None:
            svc = self.by_port.get(port)
            found = [svc] if svc is not None and (pattern is None or matches(pattern, svc.id)) else []
        elif pattern is not None:
            found = list(self.trie.find(pattern))
        else:
            found = list(self.trie.values())
        if status is not None:
            found = [s for s in found if s.status == status]
        found.sort(key=lambda s: s.id)
        total = len(found)
        return {"services": [s.to_dict() for s in found[:limit]], "count": total}

    def get(self, ctx: Ctx, id: str) -> dict:
        svc = self.trie.get(id)
        if svc is None:
            raise OpError("not_found", f"no service {id}", "id")
        return {"service": svc.to_dict()}

    def set_endpoint(self, ctx: Ctx, id: str, env: str, url: str) -> dict:
        svc = self.trie.get(id)
        if svc is None:
            raise OpError("not_found", f"no service {id}", "id")
        svc.endpoints = dict(svc.endpoints or {})
        svc.endpoints[env] = url
        svc.updated_at = ctx.now
        self.changed.add(id)
        self.store.write("UPDATE services SET endpoints=?, updated_at=? WHERE id=?",
                         (json.dumps(svc.endpoints), ctx.now, id))
        self.root.activity.record(ctx, "service.endpoint", id, env=env)
        return {"id": id, "env": env, "url": url, "endpoints": svc.endpoints}

    def active(self, ctx: Ctx) -> dict:
        ports = [{"port": s.port, "id": s.id, "pid": s.pid, "status": s.status}
                 for s in sorted(self.by_port.values(), key=lambda s: s.port)]
        return {"ports": ports, "count": len(ports)}

    def cleanup(self, ctx: Ctx) -> dict:
        """Release claims whose pid is gone or whose expiry has passed."""
        stale = [s for s in list(self.with_pid.values()) if not pid_alive(s.pid, s.pid_start)]
        stale += [s for s in self.trie.values() if s.expires_at and s.expires_at <= ctx.now and s not in stale]
        for svc in stale:
            self._remove(ctx, svc, "cleanup")
        return {"cleaned": len(stale), "released": [{"id": s.id, "port": s.port} for s in stale]}

    # -- deadlines -------------------------------------------------------------------------
    def _expire(self, identity: str, expires_at: int) -> None:
        svc = self.trie.get(identity)
        if svc is not None and svc.expires_at == expires_at:
            self._remove(Ctx(self.root.clock(), source="internal"), svc, "expired")

    def _arm_pid_check(self, now: int) -> None:
        if self.with_pid and self._pid_timer is None:
            self._pid_timer = self.root.timers.add(now + self.config.reaper_interval_ms, self._pid_check)

    def _pid_check(self) -> None:
        self._pid_timer = None
        now = self.root.clock()
        ctx = Ctx(now, source="internal")
        for svc in [s for s in self.with_pid.values() if not pid_alive(s.pid, s.pid_start)]:
            self._remove(ctx, svc, "pid gone")
        self._arm_pid_check(now)


PRIMITIVE = Ports
