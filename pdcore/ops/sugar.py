"""One-call lifecycle operations (the 3.7 sugar routes) and the sitrep."""

from pdcore.choices import NOTE_TYPES
from pdcore.choices import SESSION_END_STATUSES as END_STATUSES
from pdcore.ops.schema import PURPOSE_MAX, TEAM_PENDING, Arg, Code37, Op, Route, limit_arg

OPS = (
    Op("sugar.begin", "sugar.begin",
       "Register the agent, start its session and claim its files, atomically; says if there is salvage.",
       args=(
           Arg("purpose", "str", required=True, max_len=PURPOSE_MAX),
           Arg("identity", "identity", doc="project[:stack[:context]]"),
           Arg("agentId", "name", doc="made up when absent"),
           Arg("type", "str", max_len=64, doc="claude-code, codex, gemini, aider, human, ..."),
           Arg("files", "any", doc="paths or globs to claim"),
           Arg("force", "bool", default=False, doc="replace (abandon) the agent's current active session"),
           Arg("pid", "int", min=1, max=2**31 - 1, doc="the agent's process: the agent dies with it"),
           Arg("name", "str", max_len=200),
           Arg("strict", "bool", default=False, doc="refuse if a file is held by another session"),
           Arg("metadata", "dict", max_len=64),
       ),
       reply={"agentId": "str", "sessionId": "str", "identity": "str", "purpose": "str", "agentRegistered": "bool",
              "sessionStarted": "bool", "fileClaims": "list", "fileConflicts": "list", "salvageHint": "str",
              "salvage": "dict", **TEAM_PENDING},
       durable=True, errors=("missing_field", "session_active", "file_conflict", "invalid_identity",
                             "invalid_argument"),
       routes=(Route("POST", "/sugar/begin", v37=True),), cli=("begin",)),
    Op("sugar.done", "sugar.done",
       "Write the closing note, end the session and unregister the agent, atomically.",
       args=(
           Arg("agentId", "name"),
           Arg("sessionId", "name"),
           Arg("note", "text", max_len=4 << 20),
           Arg("status", "str", default="completed", choices=END_STATUSES),
           Arg("noteType", "str", default="handoff", choices=NOTE_TYPES),
           Arg("keepAgent", "bool", default=False, doc="end the session but keep the agent registered"),
       ),
       reply={"agentId": "str", "sessionId": "str", "sessionStatus": "str", "agentUnregistered": "bool",
              "notesCount": "int", "finalNote": "bool", "releasedFiles": "list", "releasedLocks": "list",
              **TEAM_PENDING},
       durable=True, errors=("missing_field", "not_found", "session_ended", "too_large"),
       routes=(Route("POST", "/sugar/done", v37=True, codes37=(Code37("not_found", "NO_ACTIVE_SESSION"),)),),
       cli=("done",)),
    Op("sugar.whoami", "sugar.whoami", "Who am I: agent, session, purpose, identity, notes, files, duration.",
       args=(Arg("agentId", "name", where="query"), Arg("sessionId", "name", where="query")),
       reply={"active": "bool", "agentId": "str", "sessionId": "str", "purpose": "str", "identity": "str",
              "noteCount": "int", "duration": "int", "hint": "str"},
       routes=(Route("GET", "/sugar/whoami", v37=True),), cli=("whoami",)),
    Op("sitrep", "sugar.sitrep",
       "Catch me up: active sessions, recent notes, dead agents, salvage, file conflicts, recent activity.",
       args=(
           Arg("project", "str", max_len=64, where="query"),
           Arg("since", "int", min=0, where="query", doc="epoch ms"),
           limit_arg(20, max=500),
       ),
       reply={"activeSessions": "list", "recentNotes": "list", "deadAgents": "list", "salvage": "list",
              "conflicts": "list", "activity": "list", "agents": "dict"},
       routes=(Route("GET", "/sitrep"),), cli=("sitrep",)),
)
