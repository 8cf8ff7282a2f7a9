"""Direct messages to the agents of other hosts, through the space's `inbox` stream.

A message for an agent that lives on another host (the agents bucket says which) is appended to
`pd.<space>.inbox.<host id>.<agent id, base64url>`; the sender's call answers once JetStream
stored it. Each host pulls its own subjects through a durable consumer, so what arrives while it
is away waits in the stream: it stores each message in its local inbox, commits, acknowledges
it, and then purges what its consumer has acknowledged, so the stream holds undelivered messages
only. The stream is bounded like the local inbox (pdcore/team/space.py): `inbox_max_per_agent`
per agent (oldest first), and `team_inbox_max_bytes` in all, past which a send is refused
(`team_full`) rather than an undelivered message dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

from pdcore.state.base import Await, Ctx
from pdcore.team.link import TeamLink, stream_full, team_full
from pdcore.team.locks import lock_kv_key  # a name as one subject token
from pdcore.team.space import INBOX, stream_name

log = logging.getLogger("pd.team")


class TeamInbox:
    """The team side of pdcore.state.inbox.Inbox."""

    def __init__(self, inbox: Any, link: TeamLink) -> None:
        self.inbox = inbox
        self.root = inbox.root
        self.link = link
        self.consuming = False
        self.unpurged = 0  # the last stream sequence this host acknowledged and has not purged yet (0: none)
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
            try:
                ack = await self.link.js.publish(self.link.subject(INBOX.short, host, lock_kv_key(agent_id)),
                                                 json.dumps(body, separators=(",", ":")).encode())
            except nats.js.errors.APIError as err:
                if stream_full(err):
                    raise team_full("inbox", "team_inbox_max_bytes", self.link.config.team_inbox_max_bytes,
                                    "too many messages wait for hosts that are away; nothing was sent, send "
                                    "again once they took theirs") from None
                raise
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
        """Pull this host's subjects through a durable consumer: messages that came while it was away arrive now."""
        host = self.link.host_id
        stream = stream_name(self.link.space, INBOX.short)
        durable = f"inbox-{host}"
        pause = self.link.config.team_reconnect_wait_ms / 1000
        pull: Any = None
        while True:
            try:
                if not self.link.available:
                    pull = None
                    await asyncio.sleep(pause)
                    continue
                if pull is None:
                    # created, or updated when an older one follows other subjects; a delivery lost with a
                    # dead connection comes again after ack_wait
                    await self.link.js.add_consumer(stream, config=api.ConsumerConfig(
                        name=durable, durable_name=durable, filter_subject=self.link.subject(INBOX.short, host, ">"),
                        ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self.link.config.team_op_timeout_ms / 1000))
                    pull = await self.link.js.pull_subscribe_bind(durable=durable, stream=stream)
                try:
                    messages = await pull.fetch(64, timeout=1)
                except nats.errors.TimeoutError:
                    if self.unpurged:
                        await self._purge(stream, durable)
                    continue
                for msg in messages:
                    self._arrived(msg.data, msg.metadata.sequence.stream)
                self.link.after_change()
                await asyncio.sleep(0)  # the core's end of tick runs first: the local inbox has them on disk
                for msg in messages:
                    await msg.ack()
                    self.unpurged = max(self.unpurged, msg.metadata.sequence.stream)
                await self._purge(stream, durable)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an outage: open the consumer again once the link is back
                log.warning("event=team.inbox_consumer error=%s", f"{type(exc).__name__}: {exc}")
                pull = None
                await asyncio.sleep(pause)

    async def _purge(self, stream: str, durable: str) -> None:
        """Drop from the stream this host's messages its consumer has acknowledged (all below its ack floor):
        a message fetched by a daemon killed before it acknowledged stays, and comes again."""
        info = await self.link.js.consumer_info(stream, durable)
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        if floor:
            await self.link.js.purge_stream(stream, subject=self.link.subject(INBOX.short, self.link.host_id, ">"),
                                            seq=floor + 1)
        if floor >= self.unpurged:
            self.unpurged = 0

    def _arrived(self, data: bytes, seq: int) -> None:
        """Store one message in the local inbox (then the caller acknowledges it)."""
        try:
            body = json.loads(data)
            ctx = Ctx(self.root.clock(), source="internal")
            self.inbox.deliver(ctx, body["to"], body.get("from"), body["content"], body.get("contentType", "text"),
                               body.get("type", "message"))
        except (ValueError, KeyError, TypeError):
            log.warning("event=team.bad_inbox_message seq=%s", seq)
