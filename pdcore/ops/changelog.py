"""Changelog operations (SPEC.md §14): `POST /changelog`, `GET /changelog`."""

from pdcore.choices import CHANGELOG_TYPES as TYPES
from pdcore.ops.schema import Arg, Op, Route, limit_arg

OPS = (
    Op("changelog.add", "changelog.add",
       "Record a change (feature, fix, ...) at an identity; it rolls up to the identity's parents.",
       args=(
           Arg("summary", "str", required=True, max_len=500, doc="one line: what changed"),
           Arg("identity", "identity", doc="project[:stack[:context]] (default: the agent's session identity)"),
           Arg("type", "str", default="feature", choices=TYPES),
           Arg("description", "text", max_len=16_384, doc="details (markdown)"),
           Arg("agentId", "name", doc="who made the change (default: the caller)"),
           Arg("sessionId", "name", doc="the session it belongs to (default: the agent's active one)"),
           Arg("metadata", "dict", max_len=64),
       ),
       reply={"id": "int", "identity": "str", "ancestors": "list", "entry": "dict", "message": "str"},
       durable=True, errors=("missing_field", "invalid_identity", "invalid_argument", "not_found"),
       routes=(Route("POST", "/changelog", v37=True),), cli=("changelog add",)),
    Op("changelog.list", "changelog.list",
       "Changelog entries, newest first; an identity also lists its children (myapp -> myapp:api:auth).",
       args=(
           Arg("project", "str", max_len=64, where="query"),
           Arg("identity", "identity", where="query"),
           Arg("agentId", "name", where="query"),
           Arg("sessionId", "name", where="query"),
           Arg("type", "str", choices=TYPES, where="query"),
           Arg("since", "int", min=0, where="query", doc="epoch ms"),
           Arg("before", "int", min=0, where="query", doc="entry id, for paging (nextBefore)"),
           limit_arg(50, max=1000),
       ),
       reply={"entries": "list", "count": "int", "nextBefore": "int"},
       routes=(Route("GET", "/changelog", v37=True),), cli=("changelog list",)),
)
