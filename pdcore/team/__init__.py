"""Team mode: the core's link to NATS JetStream and the shared primitives built on it (docs/team.md).

Imported only when a team is configured, so local mode never loads nats-py.
"""

from pdcore.team.link import TeamLink, team_unavailable

__all__ = ["TeamLink", "team_unavailable"]
