"""Team mode introspection (docs/team.md). Joining and leaving are CLI commands that write config.yaml."""

from pdcore.ops.schema import Op, Route

OPS = (
    Op("team.status", "team.status",
       "The team link: server, RTT, space, each stream/bucket's health, hosts seen, last error "
       "(configured: false in local mode).",
       reply={"configured": "bool", "space": "str", "hostId": "str", "connected": "bool", "ready": "bool",
              "server": "str", "rttMs": "float", "streams": "list", "hosts": "list", "lastError": "str"},
       errors=("team_unavailable",),
       routes=(Route("GET", "/team/status"),), cli=("team status",)),
)
