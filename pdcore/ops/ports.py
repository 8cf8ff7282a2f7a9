"""Operations on ports and semantic identities (SPEC.md §2), with the 3.7 routes."""

from pdcore.ops.schema import Arg, Op, Route, limit_arg

_CLAIM_ERRORS = ("invalid_identity", "invalid_argument", "port_unavailable")

OPS = (
    Op("port.claim", "ports.claim", "Get the deterministic port of an identity (sticky: same identity, same port).",
       args=(
           Arg("id", "identity", required=True, doc="project[:stack[:context]]"),
           Arg("port", "int", min=1, max=65535, doc="preferred port"),
           Arg("range", "any", doc="'START-END' or [start, end] to pick within"),
           Arg("pid", "int", min=1, max=2**31 - 1, doc="release the claim when this process exits"),
           Arg("cmd", "str", max_len=4096),
           Arg("cwd", "str", max_len=4096),
           Arg("expires", "int", min=1, max=10 * 365 * 86400 * 1000, doc="TTL in ms"),
           Arg("metadata", "dict", max_len=64),
           Arg("pair", "str", max_len=200),
       ),
       reply={"port": "int", "id": "str", "status": "str", "existing": "bool", "message": "str"},
       durable=True, errors=_CLAIM_ERRORS, routes=(Route("POST", "/claim", v37=True),), cli=("claim",)),
    Op("port.release", "ports.release", "Release the claim of an identity, or all claims matching a pattern.",
       args=(
           Arg("id", "idpattern", doc="identity or pattern (myapp:*)"),
           Arg("port", "int", min=1, max=65535),
       ),
       reply={"released": "int", "releasedPorts": "list", "message": "str"},
       durable=True, errors=("invalid_pattern", "missing_field"),
       routes=(Route("DELETE", "/release", v37=True), Route("POST", "/release", v37=True)), cli=("release",)),
    Op("port.list", "ports.list", "Services, optionally filtered by identity pattern, status or port.",
       args=(
           Arg("pattern", "idpattern", where="query"),
           Arg("status", "str", max_len=32, where="query"),
           Arg("port", "int", min=1, max=65535, where="query"),
           limit_arg(1000, max=100_000),
           Arg("team", "bool", where="query", doc="team mode: every host's services, each with host:port"),
       ),
       reply={"services": "list", "count": "int"},
       routes=(Route("GET", "/services", v37=True),), cli=("services", "find")),
    Op("port.get", "ports.get", "One service by identity.",
       args=(Arg("id", "identity", required=True, where="path"),),
       reply={"service": "dict"}, errors=("not_found", "invalid_identity"),
       routes=(Route("GET", "/services/{id}", v37=True),), cli=("service",)),
    Op("port.set_endpoint", "ports.set_endpoint", "Record a URL for a service in an environment.",
       args=(
           Arg("id", "identity", required=True, where="path"),
           Arg("env", "name", required=True, where="path"),
           Arg("url", "str", required=True, max_len=2048),
       ),
       reply={"id": "str", "env": "str", "url": "str", "endpoints": "dict"},
       durable=True, errors=("not_found",),
       routes=(Route("PUT", "/services/{id}/endpoints/{env}", v37=True),), cli=("endpoint",)),
    Op("port.active", "ports.active", "Every claimed port with its identity and pid.",
       reply={"ports": "list", "count": "int"}, routes=(Route("GET", "/ports/active", v37=True),), cli=("ports",)),
    Op("port.cleanup", "ports.cleanup", "Release claims whose process is gone or whose TTL passed.",
       reply={"cleaned": "int", "released": "list"}, durable=True,
       routes=(Route("POST", "/ports/cleanup", v37=True),), cli=("cleanup",)),
)
