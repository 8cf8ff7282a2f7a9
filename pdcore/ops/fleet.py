"""Operations on fleets and spawned agents (SPEC.md §11), with the Port Daddy 3.8 routes.

The core keeps records only; the fleet runner (`python -m fleet`, or `pd fleet up` in the
foreground) runs the processes. `spawn.claim`, `spawn.report` and `fleet.report` are how the
runner reports back: they are IPC-only (`internal`) because only a runner, holding an IPC
connection that the core watches, may speak for a run or a fleet.
"""

from pdcore.choices import SPAWN_BACKENDS as BACKENDS
from pdcore.choices import SPAWN_OUTCOMES as OUTCOMES
from pdcore.choices import SPAWN_RUNNER_KINDS as RUNNER_KINDS
from pdcore.choices import SPAWN_STATES as STATES
from pdcore.ops.schema import PURPOSE_MAX, Arg, Op, Route, limit_arg

_AGENT = Arg("agentId", "name", required=True, where="path", doc="the spawned agent's id (or a run id)")
_FLEET = Arg("name", "name", required=True, where="path", doc="the fleet's name (its project folder's name)")
_BACKEND_DOC = f"one of {', '.join(BACKENDS)} (claude is accepted for claude-cli)"
_RUNNER_PID = Arg("runnerPid", "int", min=1, max=2**31 - 1, doc="the runner's process id")

OPS = (
    Op("spawn.create", "spawn.create",
       "Launch a background AI agent with a task; the daemon's fleet runner starts it and tracks it.",
       args=(
           Arg("task", "text", required=True, max_len=64 * 1024,
               doc="the prompt; for backend custom, the shell command to run"),
           Arg("backend", "str", default="claude-cli", max_len=32, doc=_BACKEND_DOC),
           Arg("model", "str", max_len=200),
           Arg("identity", "identity", doc="project[:stack[:context]] the agent works on"),
           Arg("purpose", "str", max_len=PURPOSE_MAX, doc="what it is for (default: the start of the task)"),
           Arg("cwd", "str", max_len=4096, doc="absolute folder to run in"),
           Arg("workdir", "str", max_len=4096, doc="3.8 alias of cwd"),
           Arg("env", "dict", max_len=256, doc="extra environment variables"),
           Arg("timeout", "int", min=1000, max=7 * 86400 * 1000, doc="ms before the run is killed"),
           Arg("files", "list", max_len=1000, doc="files for backends that take them (aider)"),
           Arg("agentId", "name", doc="the agent id (default spawn-<random>)"),
       ),
       reply={"agentId": "str", "backend": "str", "status": "str", "state": "str", "spawn": "dict",
              "runnerAttached": "bool", "message": "str"},
       durable=True, errors=("missing_field", "invalid_argument", "invalid_identity", "conflict", "spawn_limit"),
       routes=(Route("POST", "/spawn"),), cli=("spawn",), runs_commands=True),
    Op("spawn.list", "spawn.list", "Spawned agents and fleet runs, newest first, with their state and exit.",
       args=(
           Arg("active", "bool", where="query", doc="only waiting or running ones"),
           Arg("fleet", "name", where="query"),
           Arg("agentId", "name", where="query"),
           Arg("state", "str", max_len=16, where="query", doc=", ".join(STATES)),
           limit_arg(100, max=10_000),
       ),
       reply={"agents": "list", "count": "int"},
       routes=(Route("GET", "/spawn"),), cli=("spawned",)),
    Op("spawn.get", "spawn.get", "One spawned agent: its latest run and recent runs.",
       args=(_AGENT,), reply={"spawn": "dict", "runs": "list"}, errors=("not_found",),
       routes=(Route("GET", "/spawn/{agentId}"),)),
    Op("spawn.kill", "spawn.kill", "Kill a spawned agent (or the running runs of a fleet agent).",
       args=(_AGENT,), reply={"agentId": "str", "killed": "bool", "runs": "list", "message": "str"},
       durable=True, errors=("not_found", "invalid_state"),
       routes=(Route("DELETE", "/spawn/{agentId}"),), cli=("spawn kill",), runs_commands=True),
    Op("spawn.claim", "spawn.claim", "A fleet runner takes a waiting spawn to run it (exactly one taker).",
       args=(Arg("id", "name", required=True), _RUNNER_PID),
       reply={"spawn": "dict", "spec": "dict"}, durable=True, errors=("not_found", "already_claimed"),
       internal=True),
    Op("spawn.report", "spawn.report",
       "A fleet runner reports a run's state; a run that ends failed sends its agent's session to salvage.",
       args=(
           Arg("id", "name", required=True, doc="the run id"),
           Arg("state", "str", required=True, max_len=16, doc=", ".join(STATES[1:])),
           Arg("agentId", "name"),
           Arg("backend", "str", max_len=32),
           Arg("fleet", "name"),
           Arg("agent", "name"),
           Arg("model", "str", max_len=200),
           Arg("task", "text", max_len=64 * 1024),
           Arg("identity", "identity"),
           Arg("purpose", "str", max_len=PURPOSE_MAX),
           Arg("trigger", "str", max_len=400),
           Arg("outcome", "str", max_len=16, doc=", ".join(OUTCOMES)),
           Arg("exitCode", "int", min=-255, max=255),
           Arg("pid", "int", min=1, max=2**31 - 1),
           Arg("respawns", "int", min=0, max=1_000_000),
           Arg("logPath", "str", max_len=4096),
           Arg("sessionId", "name"),
           Arg("reason", "str", max_len=2000),
           _RUNNER_PID,
           Arg("pidStart", "float", min=0, doc="the child's start time (psutil create_time, epoch seconds), sent "
                                              "with pid: with the pid it names that exact process"),
           Arg("runnerStart", "float", min=0, doc="the runner's start time (epoch seconds), sent with runnerPid: "
                                                 "a later runner can tell whether this one is still alive"),
       ),
       reply={"spawn": "dict", "killRequested": "bool"}, durable=True,
       errors=("missing_field", "invalid_argument", "invalid_state", "invalid_identity"), internal=True,
       subject_agent=True),
    Op("fleet.register", "spawn.fleet_register",
       "Have the daemon run a project's fleet, so it survives the terminal closing.",
       args=(
           Arg("name", "name", required=True, doc="the fleet's name: its project folder's name"),
           Arg("projectDir", "str", required=True, max_len=4096, doc="absolute path of the project folder"),
           Arg("file", "str", max_len=4096, doc="the fleet file (default: found in the project folder)"),
       ),
       reply={"fleet": "dict", "registered": "bool", "existing": "bool", "runnerAttached": "bool",
              "message": "str"},
       durable=True, errors=("invalid_name", "invalid_argument", "fleet_running"),
       routes=(Route("POST", "/fleet/register"),), cli=("fleet up",), runs_commands=True),
    Op("fleet.down", "spawn.fleet_down", "Stop a fleet: unregister it and tell its runner to stop its agents.",
       args=(_FLEET,), reply={"name": "str", "unregistered": "bool", "stopping": "bool", "message": "str"},
       durable=True, errors=("not_found",),
       routes=(Route("DELETE", "/fleet/{name}"), Route("POST", "/fleet/{name}/down")), cli=("fleet down",), runs_commands=True),
    Op("fleet.list", "spawn.fleet_list", "Every registered or running fleet with its agents' live state.",
       reply={"fleets": "list", "count": "int"},
       routes=(Route("GET", "/fleet"),), cli=("fleet list",)),
    Op("fleet.status", "spawn.fleet_status",
       "One fleet: who runs it and each agent's state (STOPPED, RUNNING, BACKOFF, EXITED, FATAL...).",
       args=(_FLEET,), reply={"fleet": "dict"}, errors=("not_found",),
       routes=(Route("GET", "/fleet/{name}"),), cli=("fleet status",)),
    Op("fleet.run", "spawn.fleet_run", "Run one agent of a running fleet now (a manual trigger).",
       args=(_FLEET, Arg("agent", "name", required=True)),
       reply={"name": "str", "agent": "str", "requested": "bool", "message": "str"}, errors=("not_found",),
       routes=(Route("POST", "/fleet/{name}/run"),), cli=("fleet run",), runs_commands=True),
    Op("fleet.report", "spawn.fleet_report",
       "A fleet runner says it is alive and which fleet it runs, with each agent's state.",
       args=(
           Arg("runner", "str", default="foreground", choices=RUNNER_KINDS),
           _RUNNER_PID,
           Arg("name", "name"),
           Arg("projectDir", "str", max_len=4096),
           Arg("file", "str", max_len=4096),
           Arg("harbor", "name"),
           Arg("agents", "list", max_len=1000),
           Arg("runs", "list", max_len=10_000, doc="ids of the runs it is running"),
           Arg("error", "str", max_len=8000),
           Arg("stopped", "bool", default=False),
       ),
       reply={"attached": "bool", "fleet": "dict", "registered": "list", "pending": "list",
              "killRequested": "list"},
       errors=("invalid_argument", "invalid_name", "missing_field", "fleet_running", "not_found"), internal=True),
)
