"""The projects registry (SPEC.md §14): `GET /projects`."""

from pdcore.ops.schema import Arg, Op, Route

OPS = (
    Op("project.list", "projects.list",
       "Projects the daemon knows of (first segment of service, session and agent identities), with counts.",
       args=(Arg("limit", "int", default=1000, min=1, max=100_000, where="query"),),
       reply={"projects": "list", "count": "int"},
       routes=(Route("GET", "/projects", v37=True),), cli=("projects",)),
)
