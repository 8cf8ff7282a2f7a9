"""Facts about the daemon itself: health, version, metrics, status, config; dashboard tickets.

A dashboard ticket is how a browser gets in without the token (docs/security.md): `pd
dashboard` asks for one and prints a link; the HTTP worker the browser reaches redeems it
here, once, within `dashboard_ticket_ttl_ms`, and then sets the dashboard cookie. Tickets
live in memory only (a restart forgets them) and are kept by their hash.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from functools import cache
from pathlib import Path
from typing import Any

from pdcore import __version__
from pdcore.errors import OpError
from pdcore.state.base import Ctx, Primitive


@cache
def code_hash() -> str:
    """A short hash of the installed source, so two installs can be told apart."""
    h = hashlib.sha256()
    top = Path(__file__).resolve().parents[2]
    for pkg in ("pdcore", "workers", "fleet", "cli"):
        base = top / pkg
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.suffix in (".py", ".sql", ".yml", ".html") and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(top)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:12]


class Daemon(Primitive):
    name = "daemon"
    load_order = 0

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.stats: dict[str, int] = {}  # counters kept by the core (frames, ops, errors, ...)
        self.tickets: dict[bytes, int] = {}  # sha256 of an unused dashboard ticket -> expiry (epoch ms)

    def _uptime(self, ctx: Ctx) -> int:
        return max(0, ctx.now - self.root.started_at)

    def health(self, ctx: Ctx) -> dict:
        return {"status": "ok", "version": __version__, "uptime": self._uptime(ctx), "pid": os.getpid()}

    def version(self, ctx: Ctx) -> dict:
        """3.7's shape without its pid: a 3.7 CLI kills the pid it reads here when the code hash differs."""
        return {"version": __version__, "codeHash": code_hash(), "startedAt": self.root.started_at,
                "service": "port-daddy", "api": "semantic", "uptime": self._uptime(ctx) // 1000}

    def metrics(self, ctx: Ctx) -> dict:
        return {
            "uptime": self._uptime(ctx),
            "counters": dict(self.stats),
            "gauges": self.root.counts(),
            "store": {"commits": self.store.commits, "writes": self.store.writes},
            "timers": len(self.root.timers),
        }

    def status(self, ctx: Ctx) -> dict:
        cfg = self.config
        return {
            "status": "running",
            "version": __version__,
            "pid": os.getpid(),
            "uptime": self._uptime(ctx),
            "startedAt": self.root.started_at,
            "home": str(cfg.home),
            "sockets": {"http": str(cfg.sock), "ipc": str(cfg.ipc), "tcp": None if cfg.no_tcp else cfg.tcp_port},
            "counts": self.root.counts(),
        }

    def config_get(self, ctx: Ctx) -> dict:
        return {"config": self.config.public()}

    def dashboard_ticket(self, ctx: Ctx) -> dict:
        tickets = self.tickets
        for key in [k for k, expires in tickets.items() if expires <= ctx.now]:
            del tickets[key]
        while len(tickets) >= max(1, self.config.dashboard_tickets_max):
            del tickets[next(iter(tickets))]  # the oldest (dicts keep insertion order)
        ticket = secrets.token_urlsafe(32)
        expires = ctx.now + self.config.dashboard_ticket_ttl_ms
        tickets[hashlib.sha256(ticket.encode()).digest()] = expires
        return {"ticket": ticket, "path": f"/auth/dashboard?ticket={ticket}", "expiresAt": expires}

    def dashboard_redeem(self, ctx: Ctx, ticket: str) -> dict:
        if ctx.source != "http":
            raise OpError("forbidden", "dashboard tickets are redeemed by the HTTP side only (open the link "
                                       "in a browser)", "ticket")
        expires = self.tickets.pop(hashlib.sha256(ticket.encode()).digest(), None)
        if expires is None or expires <= ctx.now:
            raise OpError("unauthorized", "this dashboard link was used already or has expired (links work "
                                          "once, for a minute); run `pd dashboard` for a new one", "ticket")
        return {"redeemed": True}


PRIMITIVE = Daemon
