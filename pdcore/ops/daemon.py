"""Operations about the daemon itself and the activity log."""

from pdcore.ops.schema import Arg, Op, Route

OPS = (
    Op("daemon.health", "daemon.health", "Is the daemon up? Version, uptime, pid.",
       reply={"status": "str", "version": "str", "uptime": "int", "pid": "int"},
       routes=(Route("GET", "/health", v37=True),), cli=("status",)),
    Op("daemon.version", "daemon.version", "Version and a hash of the installed code (uptime in seconds, as 3.7).",
       reply={"version": "str", "codeHash": "str", "startedAt": "int", "service": "str", "api": "str",
              "uptime": "int"}, routes=(Route("GET", "/version", v37=True),), cli=("version",)),
    Op("daemon.metrics", "daemon.metrics", "Counters and gauges (JSON; ?format=prometheus for text).",
       reply={"uptime": "int", "counters": "dict", "gauges": "dict", "store": "dict"},
       routes=(Route("GET", "/metrics", v37=True),), cli=("metrics",)),
    Op("daemon.status", "daemon.status", "Running state: pid, uptime, version, sockets, counts.",
       reply={"status": "str", "pid": "int", "uptime": "int", "sockets": "dict", "counts": "dict"},
       routes=(Route("GET", "/status", v37=True),), cli=("status",)),
    Op("daemon.config", "daemon.config_get", "The configuration in force.",
       reply={"config": "dict"}, routes=(Route("GET", "/config", v37=True),), cli=("config",)),
    Op("activity.list", "activity.list", "Recent state changes, newest first.",
       args=(
           Arg("limit", "int", default=50, min=1, max=1000, where="query"),
           Arg("type", "str", max_len=100, where="query"),
           Arg("agentId", "name", where="query"),
           Arg("target", "str", max_len=300, where="query"),
           Arg("since", "int", min=0, where="query", doc="epoch ms"),
           Arg("before", "int", min=0, where="query", doc="activity id, for paging"),
       ),
       reply={"activities": "list", "count": "int"}, routes=(Route("GET", "/activity", v37=True),), cli=("activity",)),
)
