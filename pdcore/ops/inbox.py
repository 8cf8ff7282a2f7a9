"""Inbox operations: durable direct messages to an agent (SPEC.md §7), with the 3.7 routes."""

from pdcore.ops.schema import Arg, Op, Route, limit_arg

_AGENT = Arg("id", "name", required=True, where="path", doc="the agent whose inbox it is")
_RECIPIENT = Arg("id", "name", required=True, where="path",
                 doc="the agent whose inbox it is; a bare fleet agent name (qa) reaches the one registered "
                     "or declared fleet agent of that name (myapp:fleet:qa)")

OPS = (
    Op("inbox.send", "inbox.send", "Send a direct message to an agent's inbox (kept until cleared).",
       args=(
           _RECIPIENT,
           Arg("content", "any", doc="text or any JSON value"),
           Arg("message", "any", doc="alias of content"),
           Arg("from", "str", max_len=200, doc="sender (defaults to the caller's agentId)"),
           Arg("type", "str", max_len=64, doc="message kind, e.g. message, request, handoff"),
       ),
       reply={"messageId": "int", "agentId": "str", "message": "str", "resolvedFrom": "str", "warning": "str"},
       durable=True, actor="from", errors=("missing_field", "too_large", "conflict"),
       routes=(Route("POST", "/agents/{id}/inbox", v37=True),), cli=("inbox send",)),
    Op("inbox.list", "inbox.list", "An agent's inbox, newest first.",
       args=(
           _AGENT,
           Arg("unread", "bool", default=False, where="query"),
           limit_arg(50, max=1000),
           Arg("since", "int", min=0, where="query", doc="epoch ms"),
           Arg("before", "int", min=0, where="query", doc="message id, for paging back"),
       ),
       reply={"agentId": "str", "messages": "list", "count": "int"},
       routes=(Route("GET", "/agents/{id}/inbox", v37=True),), cli=("inbox", "inbox list")),
    Op("inbox.stats", "inbox.stats", "How many messages an agent has, and how many are unread.",
       args=(_AGENT,), reply={"agentId": "str", "total": "int", "unread": "int"},
       routes=(Route("GET", "/agents/{id}/inbox/stats", v37=True),), cli=("inbox stats",)),
    Op("inbox.read", "inbox.mark_read", "Mark one inbox message read.",
       args=(_AGENT, Arg("messageId", "int", required=True, min=1, where="path")),
       reply={"agentId": "str", "messageId": "int", "read": "bool"},
       durable=True, errors=("not_found",),
       routes=(Route("PUT", "/agents/{id}/inbox/{messageId}/read", v37=True),), cli=("inbox read",)),
    Op("inbox.read_all", "inbox.mark_all_read", "Mark every message of an inbox read.",
       args=(_AGENT,), reply={"agentId": "str", "marked": "int"},
       durable=True, routes=(Route("PUT", "/agents/{id}/inbox/read-all", v37=True),), cli=("inbox read",)),
    Op("inbox.clear", "inbox.clear", "Delete every message of an inbox.",
       args=(_AGENT,), reply={"agentId": "str", "deleted": "int"},
       durable=True, routes=(Route("DELETE", "/agents/{id}/inbox", v37=True),), cli=("inbox clear",)),
)
