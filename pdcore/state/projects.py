"""The projects registry (SPEC.md §14): which projects the daemon knows of, with counts.

A project is the first segment of an identity. Nothing is registered: the registry is derived,
at read time, from the live services, active sessions, live agents and pending salvage, so it
can never disagree with them.
"""

from __future__ import annotations

from typing import Any

from pdcore.errors import OpError
from pdcore.ops.schema import SEGMENT_RE
from pdcore.state.base import Ctx, Primitive

PORTS_SHOWN = 100  # ports listed per project


def project_of(identity: str | None) -> str | None:
    """`myapp:api:main` -> `myapp`."""
    return identity.split(":", 1)[0] if identity else None


def check_project(value: str | None, field: str = "project") -> str | None:
    """A project name is one identity segment (1-64 of A-Z a-z 0-9 . _ -), or absent."""
    if value is None or SEGMENT_RE.fullmatch(value):
        return value
    raise OpError("invalid_argument", f"{field} must be a project name: 1-64 characters of A-Z a-z 0-9 . _ - "
                  "(the first segment of an identity, no ':')", field)


def in_project(identity: str | None, project: str | None) -> bool:
    """Does `identity` belong to `project` (None: every project)?"""
    if project is None:
        return True
    return identity is not None and (identity == project or identity.startswith(project + ":"))


class Projects(Primitive):
    name = "projects"
    load_order = 70

    def list(self, ctx: Ctx, limit: int = 1000) -> dict:
        """Every project seen in services, sessions, agents or salvage, with counts, by name."""
        root = self.root
        table: dict[str, dict[str, Any]] = {}

        def row(project: str) -> dict[str, Any]:
            entry = table.get(project)
            if entry is None:
                entry = table[project] = {"project": project, "services": 0, "ports": [], "activeSessions": 0,
                                          "fileClaims": 0, "agents": 0, "salvagePending": 0, "lastActivity": None}
            return entry

        def touch(entry: dict[str, Any], at: int | None) -> None:
            if at is not None and (entry["lastActivity"] is None or at > entry["lastActivity"]):
                entry["lastActivity"] = at

        for svc in root.ports.trie.values():
            entry = row(project_of(svc.id))  # type: ignore[arg-type]
            entry["services"] += 1
            entry["ports"].append(svc.port)
            touch(entry, svc.updated_at)
        for session in root.sessions.active.values():
            if session.project:
                entry = row(session.project)
                entry["activeSessions"] += 1
                entry["fileClaims"] += len(session.files)
                touch(entry, session.updated_at)
        agents = root.agents
        for agent in agents.by_id.values():
            if agent.identity and agents.liveness_of(agent, ctx.now) != "dead":
                entry = row(project_of(agent.identity))  # type: ignore[arg-type]
                entry["agents"] += 1
                touch(entry, agent.last_heartbeat)
        for salvage in root.salvage.open.values():
            if salvage.status == "pending" and salvage.project:
                entry = row(salvage.project)
                entry["salvagePending"] += 1
                touch(entry, salvage.died_at)
        projects = [table[name] for name in sorted(table)]
        for entry in projects:
            entry["ports"] = sorted(entry["ports"])[:PORTS_SHOWN]
        return {"projects": projects[:limit], "count": len(projects)}


PRIMITIVE = Projects
