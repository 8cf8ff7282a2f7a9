"""Operations on the tuple space (SPEC.md §8), with the Port Daddy 3.8 routes and shapes."""

from pdcore.ops.schema import REQUEST_ID, Arg, Op, Route, limit_arg

_WAIT_MAX = 24 * 3600 * 1000  # the handler caps waits at tuple_wait_max_ms
_PATTERN_DOC = ('JSON array: exact values, "*" or null, ">N" "<N" ">=N" "<=N", "prefix:*", "myapp:*:main"; '
                "may be given as JSON text")
_HARBOR = Arg("harbor", "name", doc="harbor of the tuple (none: the global space)")
_AGENT = Arg("agentId", "name", doc="the acting agent (capability checks in gated harbors)")
_ERRORS = ("invalid_pattern", "invalid_argument", "invalid_name", "capability_denied", "agent_overboard")

OPS = (
    Op("tuple.out", "tuples.out", "Write a tuple into a harbor's space (durable unless it has a TTL that passes).",
       args=(
           Arg("fields", "list", max_len=16, doc="the tuple: a non-empty JSON array of up to 16 values"),
           Arg("tuple", "list", max_len=16, doc="alias of fields (Port Daddy 3.8)"),
           _HARBOR,
           Arg("writtenBy", "str", max_len=200, doc="who wrote it (default: the calling agent)"),
           Arg("ttlMs", "int", min=1, max=10 * 365 * 86400 * 1000, doc="expire after this many ms"),
           Arg("ttl", "int", min=1, max=10 * 365 * 86400 * 1000, doc="alias of ttlMs"),
           _AGENT,
       ),
       reply={"tuple": "dict"}, durable=True, actor="writtenBy", errors=(*_ERRORS, "missing_field", "too_large"),
       routes=(Route("POST", "/tuples"),), cli=("tuple out",)),
    Op("tuple.rd", "tuples.rd", "Read tuples matching a pattern, oldest first, without removing them.",
       args=(
           Arg("pattern", "any", doc=_PATTERN_DOC + "; absent: every tuple", where="query"),
           Arg("harbor", "name", where="query"),
           limit_arg(setting="tuple_limit_max", doc="default tuple_read_limit_default"),
           Arg("wait", "int", min=0, max=_WAIT_MAX, where="query", doc="ms to park until a match arrives"),
           Arg("agentId", "name", where="query"),
       ),
       reply={"tuples": "list", "count": "int"}, parks=True, errors=_ERRORS,
       routes=(Route("GET", "/tuples"),), cli=("tuple rd",)),
    Op("tuple.in", "tuples.take", "Take tuples matching a pattern: remove and return the oldest; one taker wins each.",
       args=(
           Arg("pattern", "any", required=True, doc=_PATTERN_DOC + "; [] takes any tuple"),
           _HARBOR,
           limit_arg(setting="tuple_limit_max", doc="how many to take (default 1)", where="body"),
           Arg("wait", "int", min=0, max=_WAIT_MAX, doc="ms to park until a match arrives; then an empty result"),
           _AGENT,
           REQUEST_ID,
       ),
       reply={"taken": "list", "count": "int", "repeated": "bool"}, durable=True, parks=True, takes=True,
       errors=(*_ERRORS, "missing_field", "conflict"),
       routes=(Route("DELETE", "/tuples"), Route("POST", "/tuples/take")), cli=("tuple in",)),
    Op("tuple.poll", "tuples.poll", "The next tuples matching a pattern after a cursor id (walk the space by id).",
       args=(
           Arg("pattern", "any", doc=_PATTERN_DOC, where="query"),
           Arg("harbor", "name", where="query", doc="a harbor, or * for every harbor"),
           Arg("after", "int", min=0, where="query", doc="cursor: the lastId of the previous poll"),
           limit_arg(setting="tuple_limit_max", doc="default 1"),
           Arg("wait", "int", min=0, max=_WAIT_MAX, where="query", doc="ms to park until a match arrives"),
           Arg("agentId", "name", where="query"),
       ),
       reply={"tuple": "dict", "tuples": "list", "lastId": "int"}, parks=True, errors=_ERRORS,
       routes=(Route("GET", "/tuples/poll"),), cli=("tuple poll",)),
    Op("tuple.scan", "tuples.scan", "List the tuples of a harbor (or * for every harbor), oldest first.",
       args=(
           Arg("harbor", "name", where="query", doc="a harbor, or * for every harbor (none: the global space)"),
           limit_arg(setting="tuple_limit_max", doc="default tuple_scan_limit_default"),
           Arg("pattern", "any", where="query", doc=_PATTERN_DOC),
           Arg("after", "int", min=0, where="query", doc="only tuples with a greater id"),
           Arg("agentId", "name", where="query"),
       ),
       reply={"tuples": "list", "count": "int", "total": "int"}, errors=_ERRORS,
       routes=(Route("GET", "/tuples/scan"),), cli=("tuple scan",)),
    Op("tuple.count", "tuples.count", "Count the tuples of a harbor, optionally matching a pattern.",
       args=(
           Arg("harbor", "name", where="query", doc="a harbor, or * for every harbor (none: the global space)"),
           Arg("pattern", "any", where="query", doc=_PATTERN_DOC),
           Arg("agentId", "name", where="query"),
       ),
       reply={"count": "int"}, errors=_ERRORS, routes=(Route("GET", "/tuples/count"),), cli=("tuple count",)),
)
