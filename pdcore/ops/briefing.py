"""The briefing (SPEC.md §14): `GET /briefing?project=`."""

from pdcore.ops.schema import Arg, Op, Route, limit_arg

OPS = (
    Op("briefing.get", "briefing.get",
       "A markdown snapshot of a project for an arriving agent: services, agents, sessions and file claims, "
       "conflicts, salvage, locks, recent notes, integration signals, changelog, harbors, recent activity.",
       args=(
           Arg("project", "str", max_len=64, where="query", doc="project name (default: every project)"),
           limit_arg(max=500, doc="entries per list (default briefing_limit_default, 20)"),
       ),
       reply={"project": "str", "generatedAt": "int", "markdown": "str", "services": "list", "agents": "list",
              "activeSessions": "list", "fileClaims": "list", "conflicts": "list", "salvage": "list",
              "locks": "list", "recentNotes": "list", "integration": "list", "changelog": "list",
              "harbors": "list", "activity": "list"},
       errors=("invalid_argument",),
       routes=(Route("GET", "/briefing", v37=True),), cli=("briefing",)),
)
