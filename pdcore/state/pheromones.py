"""Pheromones (SPEC.md §9): decaying values in [0, 1] on (table, id, key), and the file heat map.

A spray sets a value (or, with `add`, reinforces it, capped at 1) and stamps the time. Nothing
is ever rewritten to make it fade: a read computes `value * 2 ** -(age / half_life)`. Values
below `pheromone_floor` (0.01) read as 0 and are dropped, lazily on the read that sees them and
by a housekeeping pass every `pheromone_gc_interval_ms`. The half-life is
`pheromone_half_life_ms`, overridden per key by `pheromone_half_life_overrides` ("table.key"
first, then "key") or per spray by `halfLifeMs`. Pheromones are ephemeral: never written to the
database, gone on restart. Ids on the `files` table are file paths, canonical as file claims are.

The file heat map combines the active file claims of sessions (several sessions on one path,
or on paths that overlap, make it contested) with `files` pheromones, and aggregates by folder.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

from pdcore.errors import OpError
from pdcore.state.base import Ctx, Primitive
from pdcore.state.pathglob import normalize, overlaps
from pdcore.timers import Timer

FILES = "files"
FILE_KEY = "heat"  # the key `pd pheromone file PATH STRENGTH` sprays
_OVERLAP_CHECK_MAX = 2000  # distinct claimed paths beyond which only equal paths count as contested


class Trail:
    __slots__ = ("value", "at", "half_life")

    def __init__(self, value: float, at: int, half_life: int) -> None:
        self.value = value
        self.at = at
        self.half_life = half_life

    def level(self, now: int) -> float:
        """The decayed value now (exact; the floor is applied by the caller)."""
        age = now - self.at
        if age <= 0:
            return self.value
        return self.value * math.pow(2.0, -age / self.half_life)


class Pheromones(Primitive):
    name = "pheromones"
    load_order = 50

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.entities: dict[tuple[str, str], dict[str, Trail]] = {}
        self.size = 0
        self.sprays = 0
        self._gc_timer: Timer | None = None
        cfg = self.config
        self.floor = cfg.pheromone_floor
        overrides = cfg.pheromone_half_life_overrides or {}
        if isinstance(overrides, str):  # from the environment: "key=ms,table.key=ms"
            overrides = dict(part.split("=", 1) for part in overrides.split(",") if "=" in part)
        self.overrides = {str(k).strip(): int(v) for k, v in overrides.items()}

    def counts(self) -> dict[str, int]:
        return {"pheromones": self.size}

    # -- decay -----------------------------------------------------------------------------
    def half_life(self, table: str, key: str) -> int:
        """The half-life of (table, key): "table.key" override, then "key", then the default."""
        if self.overrides:
            hl = self.overrides.get(f"{table}.{key}") or self.overrides.get(key)
            if hl:
                return hl
        return self.config.pheromone_half_life_ms

    def read(self, table: str, id: str, now: int) -> dict[str, float]:
        """The live values of one entity (under the floor: dropped, not shown)."""
        trails = self.entities.get((table, id))
        if not trails:
            return {}
        out: dict[str, float] = {}
        faded = []
        for key, trail in trails.items():
            v = trail.level(now)
            if v < self.floor:
                faded.append(key)
            else:
                out[key] = v
        for key in faded:
            del trails[key]
            self.size -= 1
        if not trails:
            del self.entities[(table, id)]
        return out

    def level(self, table: str, id: str, key: str, now: int) -> float:
        """One value now; 0 below the floor."""
        trail = self.entities.get((table, id), {}).get(key)
        if trail is None:
            return 0.0
        v = trail.level(now)
        return v if v >= self.floor else 0.0

    # -- operations ------------------------------------------------------------------------
    def spray(self, ctx: Ctx, table: str, id: str, key: str | None = None, strength: float | None = None,
              add: bool = False, halfLifeMs: int | None = None) -> dict:
        """Set (or with `add` reinforce, capped at 1) a pheromone; return the entity's values."""
        if strength is None:
            raise OpError("missing_field", "strength is required: a number from 0 to 1", "strength")
        if not 0.0 <= strength <= 1.0:
            raise OpError("invalid_argument", "strength must be between 0 and 1", "strength")
        key = key or (FILE_KEY if table == FILES else None)
        if key is None:
            raise OpError("missing_field", "key is required (what the signal means, e.g. urgency)", "key")
        if table == FILES:
            id = normalize(id, "id")
        now = ctx.now
        entity = self.entities.get((table, id))
        if entity is None:
            entity = self.entities[(table, id)] = {}
        trail = entity.get(key)
        half_life = halfLifeMs or (trail.half_life if trail is not None and add else self.half_life(table, key))
        if add and trail is not None:
            current = trail.level(now)
            value = min(1.0, (current if current >= self.floor else 0.0) + strength)
        else:
            value = strength
        if trail is None:
            self.size += 1
            entity[key] = trail = Trail(value, now, half_life)
        else:
            trail.value, trail.at, trail.half_life = value, now, half_life
        self.sprays += 1
        if self.size > self.config.pheromone_max:
            self._enforce_max(now)
        self._arm_gc(now)
        return {"table": table, "id": id, "key": key, "strength": strength, "value": self.level(table, id, key, now),
                "pheromones": self.read(table, id, now)}

    def sniff(self, ctx: Ctx, table: str, id: str) -> dict:
        if table == FILES:
            id = normalize(id, "id")
        return {"table": table, "id": id, "pheromones": self.read(table, id, ctx.now)}

    def list(self, ctx: Ctx, table: str | None = None, limit: int = 1000) -> dict:
        """Every entity with a live pheromone (optionally of one table), strongest first."""
        found = []
        for (t, i) in list(self.entities):
            if table is not None and t != table:
                continue
            values = self.read(t, i, ctx.now)
            if values:
                found.append({"table": t, "id": i, "pheromones": values})
        found.sort(key=lambda e: (-max(e["pheromones"].values()), e["table"], e["id"]))
        return {"count": len(found), "pheromones": found[:limit]}

    # -- the file heat map -----------------------------------------------------------------
    def files(self, ctx: Ctx, path: str | None = None, depth: int = 5, project: str | None = None,
              limit: int = 50) -> dict:
        """How contested files are: active session claims plus `files` pheromones, by file and folder."""
        now = ctx.now
        prefix = normalize(path, "path").rstrip("/") if path else None

        def under(p: str) -> bool:
            return prefix is None or p == prefix or p.startswith(prefix + "/")

        entries: dict[str, dict] = {}

        def entry(p: str) -> dict:
            e = entries.get(p)
            if e is None:
                e = entries[p] = {"path": p, "heat": 0.0, "activeClaims": 0, "sessions": set(), "agents": set(),
                                  "pheromone": 0.0, "lastActivity": None, "strict": False}
            return e

        sessions = getattr(self.root, "sessions", None)
        if sessions is not None and hasattr(sessions, "active_claims"):
            for claim, session in sessions.active_claims(project):
                if not under(claim.path):
                    continue
                e = entry(claim.path)
                e["activeClaims"] += 1
                e["sessions"].add(session.id)
                if session.agent_id:
                    e["agents"].add(session.agent_id)
                e["strict"] = e["strict"] or bool(getattr(claim, "strict", False))
                e["lastActivity"] = max(e["lastActivity"] or 0, claim.claimed_at)
        claimed = list(entries.values())
        # sessions holding an overlapping claim (src/** and src/a.py) contest the path too
        contenders = {e["path"]: set(e["sessions"]) for e in claimed}
        if len(claimed) <= _OVERLAP_CHECK_MAX:
            for i, a in enumerate(claimed):
                for b in claimed[i + 1:]:
                    if a["sessions"] != b["sessions"] and overlaps(a["path"], b["path"]):
                        contenders[a["path"]] |= b["sessions"]
                        contenders[b["path"]] |= a["sessions"]
        for (table, pid) in list(self.entities):
            if table != FILES or not under(pid):
                continue
            values = self.read(table, pid, now)
            if not values:
                continue
            e = entry(pid)
            e["pheromone"] = max(values.values())
            trails = self.entities.get((table, pid), {})
            e["lastActivity"] = max([e["lastActivity"] or 0] + [t.at for t in trails.values()])
        keep = 1.0 - self.config.pheromone_claim_heat
        for e in entries.values():
            n = len(contenders.get(e["path"], ()))
            claim_heat = 1.0 - keep ** n if n else 0.0
            e["heat"] = 1.0 - (1.0 - claim_heat) * (1.0 - e["pheromone"])
            e["conflict"] = n > 1
            e["contenders"] = n
        files = sorted(entries.values(), key=lambda e: (-e["heat"], e["path"]))
        dirs: dict[str, dict] = {}
        for e in files:
            parts = e["path"].split("/")
            for i in range(1, min(len(parts) - 1, depth) + 1):
                d = "/".join(parts[:i]) + "/"
                agg = dirs.get(d)
                if agg is None:
                    agg = dirs[d] = {"path": d, "heat": 0.0, "totalHeat": 0.0, "fileCount": 0, "conflictCount": 0,
                                     "activeClaims": 0, "agents": set()}
                agg["heat"] = max(agg["heat"], e["heat"])
                agg["totalHeat"] += e["heat"]
                agg["fileCount"] += 1
                agg["conflictCount"] += 1 if e["conflict"] else 0
                agg["activeClaims"] += e["activeClaims"]
                agg["agents"] |= e["agents"]
        top_dirs = heapq.nsmallest(20, dirs.values(), key=lambda d: (-d["heat"], -d["totalHeat"], d["path"]))
        file_views = [{"path": e["path"], "heat": round(e["heat"], 4), "activeClaims": e["activeClaims"],
                       "agents": sorted(e["agents"]), "sessions": len(e["sessions"]), "conflict": e["conflict"],
                       "strict": e["strict"], "pheromone": round(e["pheromone"], 4),
                       "lastActivity": e["lastActivity"]} for e in files[:limit]]
        dir_views = [{"path": d["path"], "heat": round(d["heat"], 4), "totalHeat": round(d["totalHeat"], 4),
                      "fileCount": d["fileCount"], "conflictCount": d["conflictCount"],
                      "activeClaims": d["activeClaims"], "agents": sorted(d["agents"])} for d in top_dirs]
        return {
            "files": file_views,
            "dirs": dir_views,
            "directories": dir_views,  # the Port Daddy 3.8 name
            "summary": {
                "totalFiles": len(entries),
                "activeConflicts": sum(1 for e in entries.values() if e["conflict"]),
                "hottestFile": files[0]["path"] if files else None,
                "hottestDir": top_dirs[0]["path"] if top_dirs else None,
                "depth": depth,
            },
        }

    # -- housekeeping ----------------------------------------------------------------------
    def _arm_gc(self, now: int) -> None:
        if self._gc_timer is None and self.size:
            self._gc_timer = self.root.timers.add(now + self.config.pheromone_gc_interval_ms, self._gc)

    def _gc(self) -> None:
        self._gc_timer = None
        now = self.root.clock()
        self.collect(now)
        self._arm_gc(now)

    def collect(self, now: int) -> int:
        """Drop every pheromone under the floor; return how many went."""
        before = self.size
        for (table, id) in list(self.entities):
            self.read(table, id, now)
        return before - self.size

    def _enforce_max(self, now: int) -> None:
        self.collect(now)
        excess = self.size - self.config.pheromone_max * 9 // 10  # headroom: not a pass per spray
        if self.size <= self.config.pheromone_max:
            return
        levels = [(t.level(now), table_id, key) for table_id, trails in self.entities.items()
                  for key, t in trails.items()]
        for _, table_id, key in heapq.nsmallest(excess, levels, key=lambda x: x[0]):
            trails = self.entities.get(table_id)
            if trails is not None and trails.pop(key, None) is not None:
                self.size -= 1
                if not trails:
                    del self.entities[table_id]


PRIMITIVE = Pheromones
