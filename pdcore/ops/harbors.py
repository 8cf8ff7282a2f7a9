"""Operations on harbors (SPEC.md §10), with the Port Daddy 3.8 routes and shapes."""

from pdcore.ops.schema import Arg, Op, Route, limit_arg

_NAME = Arg("name", "name", required=True, where="path")

OPS = (
    Op("harbor.create", "harbors.create", "Create a harbor (or update the one of that name).",
       args=(
           Arg("name", "name", required=True),
           Arg("capabilities", "list", max_len=256, doc="capabilities that may be used in it (none: open harbor)"),
           Arg("channels", "list", max_len=256, doc="channels scoped to it"),
           Arg("expiresIn", "int", min=1, max=10 * 365 * 86400 * 1000, doc="destroy it after this many ms"),
           Arg("metadata", "dict", max_len=64),
       ),
       reply={"harbor": "dict", "existing": "bool", "message": "str"}, durable=True,
       errors=("invalid_name", "invalid_argument", "agent_overboard"),
       routes=(Route("POST", "/harbors", 201),), cli=("harbor create",)),
    Op("harbor.list", "harbors.list", "Harbors, newest first, optionally matching a name pattern (myapp:*).",
       args=(
           Arg("pattern", "str", max_len=200, where="query"),
           limit_arg(100, max=10_000),
       ),
       reply={"harbors": "list", "count": "int"}, errors=("invalid_pattern",),
       routes=(Route("GET", "/harbors"),), cli=("harbor list",)),
    Op("harbor.get", "harbors.get", "One harbor with its members.",
       args=(_NAME,), reply={"harbor": "dict"}, errors=("not_found",),
       routes=(Route("GET", "/harbors/{name}"),), cli=("harbor show",)),
    Op("harbor.destroy", "harbors.destroy", "Destroy a harbor and its memberships (its tuples stay).",
       args=(_NAME,), reply={"destroyed": "bool", "name": "str"}, durable=True, errors=("not_found",),
       routes=(Route("DELETE", "/harbors/{name}"),), cli=("harbor destroy",)),
    Op("harbor.enter", "harbors.enter", "An agent enters a harbor, declaring the capabilities it will use.",
       args=(
           _NAME,
           Arg("agentId", "name", doc="the agent entering (default: the calling agent)"),
           Arg("capabilities", "list", max_len=256, doc="within the harbor's own, when it declares any"),
           Arg("identity", "str", max_len=200),
       ),
       reply={"harbor": "dict", "member": "dict"}, durable=True,
       errors=("not_found", "missing_field", "capability_denied", "harbor_full", "agent_overboard"),
       routes=(Route("POST", "/harbors/{name}/enter"),), cli=("harbor enter",)),
    Op("harbor.leave", "harbors.leave", "An agent leaves a harbor.",
       args=(_NAME, Arg("agentId", "name", doc="default: the calling agent")),
       reply={"left": "bool", "name": "str", "agentId": "str"}, durable=True,
       errors=("not_found", "missing_field"),
       routes=(Route("POST", "/harbors/{name}/leave"),), cli=("harbor leave",)),
    Op("harbor.members", "harbors.members", "The agents in a harbor with their declared capabilities.",
       args=(_NAME,), reply={"name": "str", "members": "list", "count": "int"}, errors=("not_found",),
       routes=(Route("GET", "/harbors/{name}/members"),), cli=("harbor members",)),
    Op("harbor.memberships", "harbors.memberships", "The harbors an agent is in.",
       args=(Arg("agentId", "name", required=True, where="path"),),
       reply={"agentId": "str", "harbors": "list", "count": "int"},
       routes=(Route("GET", "/harbors/agent/{agentId}"),), cli=("harbor of",)),
)
