"""Wait-for-service operations (SPEC.md §14), with the 3.7 routes `GET /wait/:id` and `POST /wait`."""

from pdcore.ops.schema import Arg, Op, Route

_TIMEOUT_DOC = "ms to wait (default wait_default_ms, 30000; at most wait_max_ms)"

OPS = (
    Op("service.wait", "waits.wait",
       "Wait until a service identity is claimed: answers at once when it is, else waits in the daemon (no polling).",
       args=(
           Arg("id", "identity", required=True, where="path", doc="project[:stack[:context]]"),
           Arg("timeout", "int", min=0, max=3_600_000, where="query", doc=_TIMEOUT_DOC),
       ),
       reply={"id": "str", "port": "int", "service": "dict", "ready": "bool", "message": "str"},
       parks=True, errors=("timeout", "invalid_identity", "invalid_argument"),
       routes=(Route("GET", "/wait/{id}", v37=True),), cli=("wait",)),
    Op("service.wait_many", "waits.wait_many",
       "Wait until every listed service identity is claimed (one reply when the last one is).",
       args=(
           Arg("ids", "list", doc="identities to wait for"),
           Arg("services", "list", doc="3.7 name of ids"),
           Arg("timeout", "int", min=0, max=3_600_000, doc=_TIMEOUT_DOC),
       ),
       reply={"ids": "list", "services": "list", "ports": "dict", "ready": "bool", "count": "int"},
       parks=True, errors=("timeout", "missing_field", "invalid_identity", "invalid_argument"),
       routes=(Route("POST", "/wait", v37=True),), cli=("wait",)),
)
