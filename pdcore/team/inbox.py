"""Direct messages to the agents of other hosts, through the space's `inbox` stream.

A message for an agent that lives on another host (the agents bucket says which) is appended to
`pd.<space>.inbox.<host id>`; the sender's call answers once JetStream stored it. Each host
pulls its own subject through a durable consumer, so what arrives while it is away waits in the
stream: it stores each message in its local inbox, then acknowledges it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import nats.errors
from nats.js import api

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
        self.consuming = False
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
        if not self.consuming:
            self.consuming = True
            self.link.run_forever(self._consume)

    async def _consume(self) -> None:
        """Pull this host's subject through a durable consumer: messages that came while it was away arrive now."""
        host = self.link.host_id
        pause = self.link.config.team_reconnect_wait_ms / 1000
        pull: Any = None
        while True:
            try:
                if not self.link.available:
                    pull = None
                    await asyncio.sleep(pause)
                    continue
                if pull is None:
                    # a delivery lost with a dead connection comes again after ack_wait
                    pull = await self.link.js.pull_subscribe(
                        self.link.subject(INBOX.short, host), durable=f"inbox-{host}",
                        stream=stream_name(self.link.space, INBOX.short),
                        config=api.ConsumerConfig(ack_wait=self.link.config.team_op_timeout_ms / 1000))
                try:
                    messages = await pull.fetch(64, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                for msg in messages:
                    self._arrived(msg.data, msg.metadata.sequence.stream)
                    await msg.ack()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an outage: open the consumer again once the link is back
                log.warning("event=team.inbox_consumer error=%s", f"{type(exc).__name__}: {exc}")
                pull = None
                await asyncio.sleep(pause)

    def _arrived(self, data: bytes, seq: int) -> None:
        """Store one message in the local inbox (then the caller acknowledges it)."""
        try:
            body = json.loads(data)
            ctx = Ctx(self.root.clock(), source="internal")
            self.inbox.deliver(ctx, body["to"], body.get("from"), body["content"], body.get("contentType", "text"),
                               body.get("type", "message"))
        except (ValueError, KeyError, TypeError):
            log.warning("event=team.bad_inbox_message seq=%s", seq)
        self.link.after_change()
