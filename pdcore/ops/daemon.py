"""Operations about the daemon itself and the activity log."""

from pdcore.ops.schema import Arg, Op, Route, limit_arg

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
    Op("daemon.dashboard_ticket", "daemon.dashboard_ticket",
       "A one-time link into the browser dashboard (pd dashboard): valid once, for dashboard_ticket_ttl_ms.",
       reply={"ticket": "str", "path": "str", "expiresAt": "int"},
       routes=(Route("POST", "/auth/dashboard-ticket"),), cli=("dashboard",)),
    # Called by an HTTP worker (over core.sock only) when a browser follows the link.
    Op("daemon.dashboard_redeem", "daemon.dashboard_redeem",
       "Use up a dashboard ticket: true once, within its validity; `unauthorized` otherwise.",
       args=(Arg("ticket", "str", required=True, max_len=200),),
       reply={"redeemed": "bool"}, errors=("unauthorized", "forbidden"), internal=True),
    Op("activity.list", "activity.list", "Recent state changes, newest first.",
       args=(
           limit_arg(50, max=1000),
           Arg("type", "str", max_len=100, where="query"),
           Arg("agentId", "name", where="query"),
           Arg("target", "str", max_len=300, where="query"),
           Arg("since", "int", min=0, where="query", doc="epoch ms"),
           Arg("before", "int", min=0, where="query", doc="activity id, for paging"),
       ),
       reply={"activities": "list", "count": "int"}, routes=(Route("GET", "/activity", v37=True),), cli=("activity",)),
)
