"""The projects registry (SPEC.md §14): `GET /projects`."""

from pdcore.ops.schema import Op, Route, limit_arg

OPS = (
    Op("project.list", "projects.list",
       "Projects the daemon knows of (first segment of service, session and agent identities), with counts.",
       args=(limit_arg(1000, max=100_000),),
       reply={"projects": "list", "count": "int"},
       routes=(Route("GET", "/projects", v37=True),), cli=("projects",)),
)
