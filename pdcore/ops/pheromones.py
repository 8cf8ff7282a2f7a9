"""Operations on pheromones (SPEC.md §9), with the Port Daddy 3.8 routes and shapes."""

from pdcore.ops.schema import Arg, Op, Route, limit_arg

OPS = (
    Op("pheromone.spray", "pheromones.spray",
       "Set a decaying signal in [0, 1] on (table, id, key); add reinforces it, capped at 1.",
       args=(
           Arg("table", "name", required=True, doc="any table name: services, sessions, agents, files, ..."),
           Arg("id", "str", required=True, max_len=1024, doc="the entity (for files: a path)"),
           Arg("key", "name", doc="what the signal means (files: default heat)"),
           Arg("strength", "float", required=True, min=0.0, max=1.0),
           Arg("add", "bool", default=False, doc="reinforce the current value instead of setting it"),
           Arg("halfLifeMs", "int", min=1, max=365 * 86400 * 1000, doc="half-life of this pheromone"),
       ),
       reply={"table": "str", "id": "str", "key": "str", "strength": "float", "value": "float",
              "pheromones": "dict"},
       fire_and_forget=True, shared_write=True, errors=("invalid_argument", "invalid_name", "missing_field"),
       routes=(Route("POST", "/pheromone/spray"),), cli=("pheromone spray", "pheromone file")),
    Op("pheromone.sniff", "pheromones.sniff", "The decayed pheromones of one entity.",
       args=(
           Arg("table", "name", required=True, where="path"),
           Arg("id", "str", required=True, max_len=1024, where="path"),
       ),
       reply={"table": "str", "id": "str", "pheromones": "dict"}, errors=("invalid_name",),
       routes=(Route("GET", "/pheromone/{table}/{id}"), Route("GET", "/pheromone/sniff")),
       cli=("pheromone sniff", "pheromone show")),
    Op("pheromone.list", "pheromones.list", "Every entity with a live (non-zero) pheromone, strongest first.",
       args=(
           Arg("table", "name", where="query"),
           limit_arg(1000, max=100_000),
       ),
       reply={"count": "int", "pheromones": "list"}, routes=(Route("GET", "/pheromone"),), cli=("pheromone list",)),
    Op("pheromone.files", "pheromones.files",
       "File heat map: active session file claims plus files pheromones, by file and by folder.",
       args=(
           Arg("path", "str", max_len=1024, where="query", doc="only files under this path"),
           Arg("depth", "int", default=5, min=1, max=64, where="query", doc="folder levels to aggregate"),
           Arg("project", "str", max_len=64, where="query", doc="only claims of this project"),
           limit_arg(50, max=10_000, doc="files returned"),
       ),
       reply={"files": "list", "dirs": "list", "summary": "dict"}, errors=("invalid_argument",),
       routes=(Route("GET", "/pheromone/files"),), cli=("pheromone files",)),
)
