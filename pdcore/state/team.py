"""The team this daemon belongs to, as the core sees it (docs/team.md).

Only introspection lives here: joining and leaving write config.yaml (the CLI), and the shared
primitives talk to the team through `root.team_link` themselves.
"""

from __future__ import annotations

from typing import Any

from pdcore.state.base import Await, Ctx, Primitive


class Team(Primitive):
    name = "team"

    def status(self, ctx: Ctx) -> dict | Await:
        """The link's state: server, RTT, space, each bucket/stream's health, hosts seen, last error."""
        link: Any = self.root.team_link
        if link is None:
            return {"configured": False, "space": None, "hostId": None, "connected": False,
                    "message": "local mode: no team is configured (pd team join URL --space NAME)"}
        timeout = self.config.team_op_timeout_ms
        # Status answers even when NATS is away (it says why); each of its reads is bounded.
        return Await(link.status(), ctx.now + 4 * timeout + 1000)


PRIMITIVE = Team
