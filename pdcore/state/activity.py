"""The activity log: one durable record per state change, bounded, queryable."""

from __future__ import annotations

import json
from typing import Any

from pdcore.fastjson import encoder
from pdcore.state.base import Ctx, Primitive
from pdcore.store import where_clause

_encode = encoder(default=str, separators=(",", ":"))
_INSERT_ACTIVITY = "INSERT INTO activity (ts, type, actor, target, details) VALUES (?, ?, ?, ?, ?)"


class Activity(Primitive):
    name = "activity"
    load_order = 0

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self._since_prune = 0

    def record(self, ctx: Ctx, type: str, target: str | None = None, actor: str | None = None, **details: Any) -> None:
        """Append one record; every `activity_max // 10` records, drop those beyond `activity_max`."""
        self.store.append(
            _INSERT_ACTIVITY,
            (ctx.now, type, actor or ctx.agent_id, target, _encode(details) if details else None),
        )
        self.root.notify("on_activity", ctx, type, target, details)
        self._since_prune += 1
        if self._since_prune >= max(100, self.config.activity_max // 10):
            self._since_prune = 0
            self.store.write(
                "DELETE FROM activity WHERE id <= (SELECT MAX(id) FROM activity) - ?", (self.config.activity_max,)
            )

    def list(
        self,
        ctx: Ctx,
        limit: int = 50,
        type: str | None = None,
        agentId: str | None = None,
        target: str | None = None,
        since: int | None = None,
        before: int | None = None,
    ) -> dict:
        clause, params = where_clause(("type = ?", type or None), ("actor = ?", agentId or None),
                                      ("target = ?", target or None), ("ts >= ?", since), ("id < ?", before))
        sql = f"SELECT id, ts, type, actor, target, details FROM activity{clause} ORDER BY id DESC LIMIT ?"
        params.append(limit)
        rows = self.store.read(sql, params)
        entries = [
            {
                "id": r[0],
                "timestamp": r[1],
                "type": r[2],
                "agentId": r[3],
                "target": r[4],
                "details": json.loads(r[5]) if r[5] else {},
            }
            for r in rows
        ]
        return {"activities": entries, "count": len(entries)}


PRIMITIVE = Activity
