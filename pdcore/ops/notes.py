"""Operations on immutable, encrypted notes (SPEC.md §4), with the 3.7 routes.

There is deliberately no edit or delete operation for notes.
"""

from pdcore.choices import NOTE_TYPES
from pdcore.ops.schema import TEAM_PENDING, Arg, Code37, Op, Route, limit_arg

# The size rule (note_max_bytes, 413) is applied by the handler in bytes; this bound only keeps
# the validator from scanning absurd strings.
_CONTENT = Arg("content", "text", required=True, max_len=4 << 20, doc="the note's text (at most note_max_bytes)")
_TYPE = Arg("type", "str", default="note", choices=NOTE_TYPES)
_PAGING = (
    Arg("before", "int", min=0, where="query", doc="notes with a smaller id (page backwards)"),
    Arg("after", "int", min=0, where="query", doc="notes with a larger id (page forwards)"),
)

OPS = (
    Op("note.add", "notes.add", "Append an immutable note to a session.",
       args=(Arg("id", "name", required=True, where="path", doc="the session id"), _CONTENT, _TYPE,
             Arg("agentId", "name")),
       reply={"noteId": "int", "sessionId": "str", "type": "str", "createdAt": "int", "hash": "str", **TEAM_PENDING},
       durable=True, errors=("not_found", "session_ended", "too_large", "missing_field", "invalid_argument"),
       routes=(Route("POST", "/sessions/{id}/notes", v37=True, codes37=(Code37("not_found", "SESSION_NOT_FOUND"),)),), cli=("note",)),
    Op("note.quick", "notes.quick",
       "A note for the caller's active session (agentId or sessionId); a session is started if there is none.",
       args=(_CONTENT, _TYPE, Arg("sessionId", "name"), Arg("agentId", "name")),
       reply={"noteId": "int", "sessionId": "str", "type": "str", "createdAt": "int", "sessionCreated": "bool",
              **TEAM_PENDING},
       durable=True, errors=("not_found", "session_ended", "too_large", "missing_field", "invalid_argument"),
       routes=(Route("POST", "/notes", v37=True),), cli=("note",)),
    Op("note.list", "notes.list", "Notes, decrypted, the latest `limit` in the order they were written.",
       args=(
           limit_arg(50, setting="notes_list_max"),
           Arg("type", "str", choices=NOTE_TYPES, where="query"),
           Arg("agentId", "name", where="query"),
           Arg("sessionId", "name", where="query"),
           *_PAGING,
       ),
       reply={"notes": "list", "count": "int"},
       routes=(Route("GET", "/notes", v37=True),), cli=("notes",)),
    Op("session.notes", "notes.session_notes", "The notes of one session, decrypted, in the order written.",
       args=(
           Arg("id", "name", required=True, where="path"),
           limit_arg(100, setting="notes_list_max"),
           Arg("type", "str", choices=NOTE_TYPES, where="query"),
           *_PAGING,
       ),
       reply={"sessionId": "str", "notes": "list", "count": "int"}, errors=("not_found",),
       routes=(Route("GET", "/sessions/{id}/notes", v37=True, codes37=(Code37("not_found", "SESSION_NOT_FOUND"),)),), cli=("notes",)),
    Op("note.verify", "notes.verify",
       "Check the hash chain and the encryption of every note (of one session, or all); runs off the "
       "core's thread, so the daemon keeps serving while it reads.",
       args=(Arg("sessionId", "name", where="query"),),
       reply={"ok": "bool", "checked": "int", "sessions": "int", "broken": "list"}, errors=("not_found", "timeout"),
       routes=(Route("GET", "/notes/verify", v37=True),), cli=("notes",), parks=True),
)
