"""Integration signal operations (SPEC.md §7), with the 3.7 routes."""

from pdcore.ops.schema import Arg, Op, Route, limit_arg

_SIGNAL_ARGS = (
    Arg("identity", "identity", required=True, where="path", doc="the service signalling"),
    Arg("message", "str", max_len=4096, doc="what is ready, or what is needed"),
)
_SIGNAL_REPLY = {"signal": "dict", "channel": "str", "message": "str"}

OPS = (
    Op("integration.ready", "integration.ready",
       "Signal that a service is ready for others to integrate with (also published on pd:integration:<project>).",
       args=_SIGNAL_ARGS, reply=_SIGNAL_REPLY, durable=True, errors=("invalid_identity",),
       routes=(Route("POST", "/integration/ready/{identity}", v37=True),), cli=("integration ready",)),
    Op("integration.needs", "integration.needs",
       "Signal that a service needs something from another (also published on pd:integration:<project>).",
       args=_SIGNAL_ARGS, reply=_SIGNAL_REPLY, durable=True, errors=("invalid_identity",),
       routes=(Route("POST", "/integration/needs/{identity}", v37=True),), cli=("integration needs",)),
    Op("integration.list", "integration.list", "Integration signals, newest first, with each identity's latest.",
       args=(
           Arg("project", "str", max_len=64, where="query"),
           Arg("identity", "identity", where="query"),
           Arg("type", "str", choices=("ready", "needs"), where="query"),
           limit_arg(100, max=1000),
       ),
       reply={"signals": "list", "count": "int", "latest": "dict"},
       routes=(Route("GET", "/integration", v37=True),), cli=("integration list",)),
)
