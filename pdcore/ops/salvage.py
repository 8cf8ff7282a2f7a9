"""Operations on the salvage queue (SPEC.md §5). 3.7 reached it as /salvage and /resurrection;
both names route here."""

from pdcore.choices import SALVAGE_STATUSES as STATUSES
from pdcore.ops.schema import REQUEST_ID, TEAM_PENDING, Arg, Op, Route, limit_arg

_AGENT = Arg("agentId", "name", required=True, where="path", doc="the dead agent")
_SESSION = Arg("sessionId", "name", doc="pick one entry when the agent died more than once")
_NEW_AGENT = Arg("newAgentId", "name", doc="3.7's name of claimedBy")
_ENTRY = {"agentId": "str", "status": "str", "entry": "dict"}


def _both(method: str, path: str) -> tuple[Route, Route]:
    return Route(method, "/salvage" + path, v37=True), Route(method, "/resurrection" + path, v37=True)


OPS = (
    Op("salvage.list", "salvage.list",
       "The salvage queue: dead agents' sessions with purpose, files and last notes (open entries by default).",
       args=(
           Arg("project", "str", max_len=64, where="query"),
           Arg("status", "str", choices=(*STATUSES, "all"), where="query"),
           Arg("agentId", "name", where="query"),
           limit_arg(100, max=10_000),
       ),
       reply={"agents": "list", "entries": "list", "count": "int", "project": "str"},
       routes=_both("GET", ""), cli=("salvage",)),
    Op("salvage.pending", "salvage.pending",
       "Entries nobody has claimed yet (3.7 also answered its reap routes with this list).",
       args=(Arg("project", "str", max_len=64, where="query"),
             limit_arg(100, max=10_000)),
       reply={"agents": "list", "entries": "list", "count": "int"},
       routes=(*_both("GET", "/pending"), *_both("POST", "/reap")), cli=("salvage",)),
    Op("salvage.claim", "salvage.claim",
       "Take over a dead agent's work: exactly one claimer wins; its session inherits the files.",
       args=(_AGENT, Arg("claimedBy", "name", doc="the agent taking over the work (required, or newAgentId)"),
             _SESSION, _NEW_AGENT, REQUEST_ID),
       reply={"agentId": "str", "claimedBy": "str", "sessionId": "str", "sessionCreated": "bool",
              "inheritedFiles": "list", "conflicts": "list", "entry": "dict", "repeated": "bool", **TEAM_PENDING},
       durable=True, actor="claimedBy", takes=True,
       errors=("not_found", "already_claimed", "missing_field", "conflict"),
       routes=_both("POST", "/claim/{agentId}"), cli=("salvage claim",)),
    Op("salvage.complete", "salvage.complete", "The salvaged work is done (say who did it: newAgentId or claimedBy).",
       args=(_AGENT, Arg("claimedBy", "name"), _SESSION, _NEW_AGENT),
       reply=_ENTRY, durable=True, actor="claimedBy", errors=("not_found", "invalid_state", "not_owner"),
       routes=_both("POST", "/complete/{agentId}"), cli=("salvage complete",)),
    Op("salvage.abandon", "salvage.abandon",
       "Give salvaged work back to the queue (pending again); an agent with no entry answers abandoned: false.",
       args=(_AGENT, Arg("claimedBy", "name"), _SESSION),
       reply={**_ENTRY, "abandoned": "bool", "releasedFiles": "list", **TEAM_PENDING}, durable=True, actor="claimedBy",
       errors=("invalid_state", "not_owner"),
       routes=_both("POST", "/abandon/{agentId}"), cli=("salvage abandon",)),
    Op("salvage.dismiss", "salvage.dismiss", "Drop a dead agent's entries from the queue (none: dismissed 0).",
       args=(_AGENT, _SESSION),
       reply={"agentId": "str", "dismissed": "int", "status": "str"}, durable=True,
       routes=_both("DELETE", "/{agentId}"), cli=("salvage dismiss",)),
)
