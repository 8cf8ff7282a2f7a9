"""Channels shared by a team: the space's `channels` stream, mirrored into every host's rings (docs/team.md).

A message published on any host is one stream message on `pd.<space>.channels.m.<channel>`; its
stream sequence is its id, so ids grow team-wide and `after` / `Last-Event-ID` mean the same on
every host. The stream is bounded like the local rings (`channel_ring_size` per channel,
`channel_ring_age_ms`, `channel_ring_total_bytes` in all: the oldest go first). Each host follows
it with an ordered consumer: every message lands in the local ring of its channel and is pushed to
this host's subscribers (IPC SUBSCRIBE, patterns included, SSE, `pd watch`) and wakes its
long-polls, in stream order, so the order per channel is the same everywhere. `msg.history` and
`msg.poll` read the ring. A publish answers once JetStream acknowledged it and the local ring has
it. Events other primitives emit (`root.publish`) are published in the background; while the team
is unreachable they reach this host's subscribers only, without an id and not kept.
`msg.clear` publishes a clear marker (every mirror drops the channel's older messages when it
arrives) and purges the channel's subject up to it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pdcore.state.base import Await, Ctx
from pdcore.state.channels import Message, message_size
from pdcore.team.link import ParkedKeys, TeamLink, team_unavailable, ttl_seconds
from pdcore.team.space import CHANNELS, stream_name

CLEAR_TOKEN = "clear"  # pd.<space>.channels.clear: a clear marker; messages are under .m.<channel>


def channel_token(channel: str) -> str:
    """A channel name as one subject token (names may hold `.`, `*`, `>`): base64url, no padding."""
    return base64.urlsafe_b64encode(channel.encode()).decode().rstrip("=")


class TeamChannels:
    """The team side of pdcore.state.channels.Channels: publish to the stream, read the mirrored rings."""

    def __init__(self, channels: Any, link: TeamLink) -> None:
        self.channels = channels
        self.root = channels.root
        self.config = channels.config
        self.link = link
        self.seen = 0  # the last stream sequence the mirror applied
        self.live_from = 0  # messages from this sequence on are pushed to subscribers (older: history)
        self.waited = ParkedKeys()  # keys long-polls of this host parked on (woken when the link goes down)
        self.dropped = 0  # events published while the team was unreachable (delivered here only)
        link.follow(CHANNELS.short, self._opened, self._message)
        link.on_down.append(self._link_down)

    # -- the mirror --------------------------------------------------------------------------
    def _opened(self, last_seq: int) -> int:
        """First open: read the history kept, push only what comes next. A reopen resumes where the
        mirror stopped, so what was published meanwhile is delivered too (unless the stream is new)."""
        if self.seen and last_seq >= self.seen:
            return self.seen + 1
        self.channels.drop(list(self.channels.rings))
        self.live_from = last_seq + 1
        return 1

    def _message(self, seq: int, subject: str, data: bytes, headers: dict) -> None:
        self.seen = max(self.seen, seq)
        try:
            body = json.loads(data)
        except ValueError:
            return
        if subject.endswith("." + CLEAR_TOKEN):
            self.channels.drop(list(body.get("names") or ()), below=seq)
            return
        expires_at = body.get("expiresAt")
        now = self.root.clock()
        if expires_at is not None and expires_at <= now:
            return
        message = body.get("message")
        msg = Message(seq, str(body.get("channel")), message, body.get("sender"), int(body.get("ts") or now),
                      expires_at, message_size(message))
        self.channels.append(msg, push=seq >= self.live_from, hooks=body.get("host") == self.link.host_id)

    def _link_down(self) -> None:
        self.waited.wake_all(self.root)  # parked long-polls retry now and fail with team_unavailable

    def require(self) -> None:
        """Reads answer from the mirror only while it follows the stream."""
        if not self.link.available:
            raise team_unavailable(self.link.last_error or "not connected")

    # -- publishing ----------------------------------------------------------------------------
    def _body(self, channel: str, message: Any, sender: str | None, now: int, expires_at: int | None) -> bytes:
        return json.dumps({"channel": channel, "message": message, "sender": sender, "ts": now,
                           "expiresAt": expires_at, "host": self.link.host_id},
                          separators=(",", ":"), default=str).encode()

    def publish(self, ctx: Ctx, channel: str, message: Any, sender: str | None, expires: int | None,
                size: int) -> Await:
        expires_at = ctx.now + expires if expires else None
        subject = self.link.subject(CHANNELS.short, "m", channel_token(channel))
        ttl_s = ttl_seconds(expires) if expires else None

        def then(seq: int) -> dict:
            return {"id": seq, "channel": channel, "message": f"published to {channel}"}

        return self.link.call(self._publish, subject, self._body(channel, message, sender, ctx.now, expires_at),
                              ttl_s, then=then)

    async def _publish(self, subject: str, payload: bytes, ttl_s: int | None) -> int:
        ack = await self.link.js.publish(subject, payload, msg_ttl=ttl_s)
        await self.link.applied(CHANNELS.short, ack.seq)
        return ack.seq

    def publish_event(self, channel: str, message: Any, sender: str | None, now: int, expires_at: int | None) -> None:
        """An event another primitive emits: to the team in the background, or only here while it is away."""
        if self.link.available:
            subject = self.link.subject(CHANNELS.short, "m", channel_token(channel))
            self.link.spawn(self._publish, subject, self._body(channel, message, sender, now, expires_at), None)
            return
        self.dropped += 1
        self.root.deliver(channel, {"id": None, "channel": channel, "message": message, "sender": sender, "ts": now})

    # -- clear -------------------------------------------------------------------------------
    def clear(self, ctx: Ctx, channel: str) -> Await:
        names = self.channels.names(channel)
        count = sum(len(self.channels.rings[n].messages) for n in names if n in self.channels.rings)
        subjects = [self.link.subject(CHANNELS.short, "m", channel_token(n)) for n in names]

        def then(_: Any) -> dict:
            return {"channel": channel, "deleted": count, "message": f"cleared {count} message(s) from {channel}"}

        return self.link.call(self._clear, names, subjects, then=then)

    async def _clear(self, names: list[str], subjects: list[str]) -> None:
        ack = await self.link.js.publish(self.link.subject(CHANNELS.short, CLEAR_TOKEN),
                                         json.dumps({"names": names}).encode())
        await self.link.applied(CHANNELS.short, ack.seq)
        name = stream_name(self.link.space, CHANNELS.short)
        for subject in subjects:
            await self.link.js.purge_stream(name, subject=subject, seq=ack.seq)

    def counts(self) -> dict[str, int]:
        return {"team_channel_events_not_shared": self.dropped}

