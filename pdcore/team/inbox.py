"""Direct messages to the agents of other hosts, through the space's `inbox` stream.

A message for an agent that lives on another host (the agents bucket says which) is appended to
`pd.<space>.inbox.<host id>`; the sender's call answers once JetStream stored it. Each host
reads its own subject with a durable consumer, so what arrives while it is away waits in the
stream: it stores each message in its local inbox, then acknowledges it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pdcore.state.base import Await, Ctx
from pdcore.team.link import TeamLink
from pdcore.team.space import INBOX, stream_name

log = logging.getLogger("pd.team")


class TeamInbox:
    """The team side of pdcore.state.inbox.Inbox."""

    def __init__(self, inbox: Any, link: TeamLink) -> None:
        self.inbox = inbox
        self.root = inbox.root
        self.link = link
        self.subscription: Any = None
        link.on_ready.append(self._ready)

    def host_of(self, agent_id: str) -> str | None:
        """The other host an agent lives on, when it is not registered here."""
        if self.root.agents.get_agent(agent_id) is not None:
            return None
        record = self.root.agents.team.remote_agent(agent_id)
        return record.get("host") if record is not None else None

    def send(self, ctx: Ctx, host: str, agent_id: str, from_agent: str | None, text: str, kind: str,
             type: str) -> Await:
        body = {"to": agent_id, "from": from_agent, "content": text, "contentType": kind, "type": type,
                "createdAt": ctx.now, "fromHost": self.link.host_id}

        async def append() -> int:
            ack = await self.link.js.publish(self.link.subject(INBOX.short, host),
                                             json.dumps(body, separators=(",", ":")).encode())
            return ack.seq

        def then(seq: int) -> dict:
            self.root.activity.record(ctx, "inbox.send", agent_id, actor=from_agent, host=host, seq=seq)
            return {"messageId": None, "agentId": agent_id, "host": host, "seq": seq,
                    "message": f"delivered to {agent_id} on host {host}"}

        return self.link.call(append, then=then)

    def _ready(self) -> None:
        if self.subscription is None:
            self.link.spawn(self._subscribe)

    async def _subscribe(self) -> None:
        """A durable consumer of this host's subject: messages that came while it was away arrive now."""
        host = self.link.host_id
        self.subscription = await self.link.js.subscribe(
            self.link.subject(INBOX.short, host), durable=f"inbox-{host}", cb=self._arrived, manual_ack=True,
            stream=stream_name(self.link.space, INBOX.short))

    async def _arrived(self, msg: Any) -> None:
        try:
            body = json.loads(msg.data)
            ctx = Ctx(self.root.clock(), source="internal")
            self.inbox.deliver(ctx, body["to"], body.get("from"), body["content"], body.get("contentType", "text"),
                               body.get("type", "message"))
        except (ValueError, KeyError, TypeError):
            log.warning("event=team.bad_inbox_message seq=%s", msg.metadata.sequence.stream)
        self.link.after_change()
        await msg.ack()
