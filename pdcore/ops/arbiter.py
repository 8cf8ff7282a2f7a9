"""Operations of the arbiter (SPEC.md §12): its status and the recorded violations."""

from pdcore.ops.schema import Arg, Op, Route, limit_arg

OPS = (
    Op("arbiter.status", "arbiter.status", "The six invariants, strict mode, violation counts, agents overboard.",
       reply={"active": "bool", "strictMode": "bool", "rules": "list", "violationsCount": "int",
              "overboard": "list"},
       routes=(Route("GET", "/arbiter"), Route("GET", "/arbiter/status")), cli=("arbiter status",)),
    Op("arbiter.violations", "arbiter.violations", "Recorded violations, newest first: who, what, when.",
       args=(
           limit_arg(50, max=1000),
           Arg("offset", "int", default=0, min=0, where="query"),
           Arg("rule", "str", max_len=40, where="query", doc="PID_SQUATTING, CAP_ESCALATION, ..."),
           Arg("agentId", "name", where="query"),
           Arg("since", "int", min=0, where="query", doc="epoch ms"),
       ),
       reply={"violations": "list", "count": "int", "total": "int"}, errors=("invalid_argument",),
       routes=(Route("GET", "/arbiter/violations"),), cli=("arbiter violations",)),
)
