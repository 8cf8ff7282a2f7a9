"""Integration signals (SPEC.md §7): "my service is ready" and "my service needs X".

A signal is a durable record (identity, ready|needs, message, who, when), listed newest first
and filtered by project, and it is also published on the channel `pd:integration:<project>`
so agents waiting on a dependency can `pd watch` for it instead of polling. The table is
bounded by `integration_max`, oldest first.
"""

from __future__ import annotations

from typing import Any

from pdcore.state.base import Ctx, Primitive
from pdcore.store import where_clause


def integration_channel(project: str) -> str:
    """The channel on which a project's integration signals are published."""
    return f"pd:integration:{project}"


class Integration(Primitive):
    name = "integration"
    load_order = 40

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self._since_prune = 0

    def _signal(self, ctx: Ctx, kind: str, identity: str, message: str | None) -> dict:
        project = identity.split(":", 1)[0]
        cur = self.store.write(
            "INSERT INTO integration_signals (identity, project, kind, message, agent_id, created_at) "
            "VALUES (?,?,?,?,?,?)",
            (identity, project, kind, message, ctx.agent_id, ctx.now),
        )
        self._since_prune += 1
        if self._since_prune >= max(100, self.config.integration_max // 10):
            self._since_prune = 0
            self.store.write("DELETE FROM integration_signals WHERE id <= (SELECT MAX(id) FROM integration_signals) - ?",
                             (self.config.integration_max,))
        signal = {"id": cur.lastrowid, "identity": identity, "project": project, "type": kind, "message": message,
                  "agentId": ctx.agent_id, "createdAt": ctx.now}
        self.root.activity.record(ctx, f"integration.{kind}", identity, message=message)
        self.root.publish(integration_channel(project), signal, ctx.agent_id, ctx.now)
        return {"signal": signal, "channel": integration_channel(project),
                "message": f"{identity} is {'ready' if kind == 'ready' else 'waiting on a dependency'}"}

    def ready(self, ctx: Ctx, identity: str, message: str | None = None) -> dict:
        """Signal that the service `identity` is ready for others to integrate with."""
        return self._signal(ctx, "ready", identity, message)

    def needs(self, ctx: Ctx, identity: str, message: str | None = None) -> dict:
        """Signal that the service `identity` needs something (say what in `message`)."""
        return self._signal(ctx, "needs", identity, message)

    def list(self, ctx: Ctx, project: str | None = None, identity: str | None = None, type: str | None = None,
             limit: int = 100) -> dict:
        """Signals, newest first, by project, identity and type."""
        clause, params = where_clause(("project = ?", project or None), ("identity = ?", identity or None),
                                      ("kind = ?", type or None))
        rows = self.store.read("SELECT id, identity, project, kind, message, agent_id, created_at FROM "
                               f"integration_signals{clause} ORDER BY id DESC LIMIT ?", (*params, limit))
        signals = [{"id": r[0], "identity": r[1], "project": r[2], "type": r[3], "message": r[4], "agentId": r[5],
                    "createdAt": r[6]} for r in rows]
        latest: dict[str, str] = {}
        for s in signals:  # newest first: the first seen is the identity's current state
            latest.setdefault(s["identity"], s["type"])
        return {"signals": signals, "count": len(signals), "latest": latest}


PRIMITIVE = Integration
