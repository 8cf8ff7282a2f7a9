"""Operations on agents and heartbeats (SPEC.md §3), with the 3.7 routes.

`heartbeat` keeps the bare action name of the 3.8 IPC protocol and may be sent
fire-and-forget: the core stamps the agent in memory and replies to nobody.
"""

from pdcore.ops.schema import PURPOSE_MAX, TEAM_PENDING, Arg, Op, Route, limit_arg

_PID = Arg("pid", "int", min=1, max=2**31 - 1, doc="the agent's process: it is dead as soon as this process is gone")

OPS = (
    Op("agent.register", "agents.register",
       "Register an agent (re-registering the same id updates it). With a pid, the agent dies with its process.",
       args=(
           Arg("id", "name", doc="the agent id; a new one is made when absent"),
           Arg("name", "str", max_len=200),
           Arg("type", "str", max_len=64, doc="claude-code, codex, gemini, aider, human, ..."),
           _PID,
           Arg("identity", "identity", doc="project[:stack[:context]] the agent works on"),
           Arg("purpose", "str", max_len=PURPOSE_MAX),
           Arg("metadata", "dict", max_len=64),
           Arg("maxServices", "int", min=0, max=100_000),
           Arg("maxLocks", "int", min=0, max=100_000),
       ),
       reply={"agentId": "str", "registered": "bool", "created": "bool", "agent": "dict", "message": "str",
              **TEAM_PENDING},
       durable=True, errors=("invalid_name", "invalid_argument", "invalid_identity"),
       routes=(Route("POST", "/agents", v37=True),), cli=("agent register",)),
    Op("heartbeat", "agents.heartbeat",
       "I am alive. Fire-and-forget over IPC; a heartbeat for an unknown id registers it.",
       args=(
           Arg("id", "name", where="path", doc="the agent id (or agentId in the IPC payload)"),
           Arg("agentId", "name"),
           _PID,
       ),
       reply={"agentId": "str", "lastHeartbeat": "int", "status": "str", "registered": "bool", "message": "str",
              "salvageHint": "str"},
       fire_and_forget=True, actor="id", shared_write=True,
       errors=("missing_field", "invalid_name", "invalid_argument"),
       routes=(Route("POST", "/agents/{id}/heartbeat", v37=True),), cli=("agent heartbeat",)),
    Op("agent.unregister", "agents.unregister", "Forget an agent that leaves cleanly (nothing goes to salvage).",
       args=(Arg("id", "name", required=True, where="path"),),
       reply={"agentId": "str", "unregistered": "bool", **TEAM_PENDING}, durable=True,
       errors=("not_found", "invalid_name"),
       routes=(Route("DELETE", "/agents/{id}", v37=True),), cli=("agent unregister",)),
    Op("agent.get", "agents.get", "One agent, with its liveness (alive, stale, dead) and active session.",
       args=(Arg("id", "name", required=True, where="path"),),
       reply={"agent": "dict"}, errors=("not_found", "invalid_name"),
       routes=(Route("GET", "/agents/{id}", v37=True),), cli=("agent get",)),
    Op("agent.list", "agents.list", "Registered agents with their liveness; active=true leaves out the dead.",
       args=(
           Arg("active", "bool", where="query"),
           Arg("status", "str", choices=("alive", "stale", "dead"), where="query"),
           Arg("identity", "str", max_len=200, where="query", doc="identity prefix"),
           limit_arg(1000, max=100_000),
       ),
       reply={"agents": "list", "count": "int"},
       routes=(Route("GET", "/agents", v37=True),), cli=("agents", "agent list")),
)
