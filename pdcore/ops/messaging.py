"""Pub/sub operations (SPEC.md §7) with the 3.7 routes.

IPC SUBSCRIBE/UNSUBSCRIBE and the SSE route `/msg/{channel}/subscribe` are not ops: the core
and the HTTP workers serve them directly from `root.deliver`.
"""

from pdcore.ops.schema import Arg, Op, Route, limit_arg

_CHANNEL = Arg("channel", "name", required=True, where="path", doc="channel name (history/poll/clear: or a pattern)")

OPS = (
    Op("msg.publish", "channels.publish", "Publish a message on a channel (fire-and-forget over IPC).",
       args=(
           _CHANNEL,
           Arg("payload", "any", doc="the message: text or any JSON value"),
           Arg("message", "any", doc="3.7 alias of payload"),
           Arg("content", "any", doc="3.7 alias of payload"),
           Arg("sender", "str", max_len=200, doc="who sent it (defaults to the caller's agentId)"),
           Arg("expires", "int", min=1, max=7 * 86400 * 1000, doc="ms until the message leaves history"),
       ),
       reply={"id": "int", "channel": "str", "message": "str"},
       fire_and_forget=True, actor="sender", shared_write=True, errors=("missing_field", "invalid_name", "too_large"),
       routes=(Route("POST", "/msg/{channel}", v37=True),), cli=("pub",)),
    Op("msg.history", "channels.history", "Recent messages of a channel (or pattern), oldest first.",
       args=(
           _CHANNEL,
           limit_arg(50, max=1000),
           Arg("after", "int", min=0, where="query", doc="only messages with a larger id"),
       ),
       reply={"channel": "str", "messages": "list", "count": "int", "lastId": "int", "firstId": "int"},
       routes=(Route("GET", "/msg/{channel}", v37=True),), cli=("channel history",)),
    Op("msg.poll", "channels.poll", "Long-poll: messages after an id, waiting up to timeout ms for one.",
       args=(
           _CHANNEL,
           Arg("after", "int", min=0, where="query", doc="last id seen (0: from the oldest kept)"),
           Arg("timeout", "int", min=0, max=3_600_000, where="query", doc="ms to wait (default 30000)"),
           limit_arg(100, max=1000),
       ),
       reply={"channel": "str", "messages": "list", "message": "dict", "count": "int", "lastId": "int"},
       parks=True, routes=(Route("GET", "/msg/{channel}/poll", v37=True),), cli=("channel poll",)),
    Op("msg.clear", "channels.clear", "Forget a channel's history.",
       args=(_CHANNEL,),
       reply={"channel": "str", "deleted": "int", "message": "str"}, shared_write=True,
       routes=(Route("DELETE", "/msg/{channel}", v37=True),), cli=("channel clear",)),
    Op("msg.channels", "channels.list_channels", "Channels with messages in history, most recent first.",
       args=(Arg("pattern", "name", where="query"),),
       reply={"channels": "list", "count": "int"},
       routes=(Route("GET", "/channels", v37=True), Route("GET", "/msg", v37=True)), cli=("channels", "channel list")),
)
