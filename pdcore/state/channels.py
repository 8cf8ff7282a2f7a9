"""Pub/sub channels (SPEC.md §7): ephemeral history rings, publish, history, long-poll, clear.

Messages are ephemeral: each channel keeps a ring bounded by count (`channel_ring_size`) and
age (`channel_ring_age_ms`), and all rings together are bounded by bytes
(`channel_ring_total_bytes`; the globally oldest messages go first), so neither a busy channel
nor many channels grow memory without bound. Nothing here is written to the database except
the block-reserved message id counter, which keeps ids increasing across restarts so a poller's
`after` stays meaningful. Pushing to IPC subscribers is the core's job: `publish_event` hands
each message to `root.deliver`. Long-polls park on `("channel", name)`.
In team mode the rings mirror the team's `channels` stream and the stream sequence is the
message id (pdcore/team/channels.py).
"""

from __future__ import annotations

import fnmatch
import heapq
import json
from collections import deque
from typing import Any

from pdcore.errors import OpError
from pdcore.ops.schema import is_pattern
from pdcore.state.base import Await, Ctx, Park, Primitive
from pdcore.state.sequence import BlockSequence
from pdcore.timers import Timer

ANY_CHANNEL = ("channel", "*")  # woken on every publish, for polls on a pattern
SWEEP_MAX_MS = 60_000
DEFAULT_POLL_MS = 30_000


def channel_key(channel: str) -> tuple:
    """The park/wake key of a channel: woken on every message published to it."""
    return ("channel", channel)


def channel_matches(pattern: str, channel: str) -> bool:
    """Does `channel` match `pattern` (`*` matches any run of characters, as for subscriptions)?"""
    if "*" not in pattern and "?" not in pattern:
        return pattern == channel
    return fnmatch.fnmatchcase(channel, pattern)


def message_size(message: Any) -> int:
    """The size a message counts for: its JSON length (strings: their length)."""
    if isinstance(message, str):
        return len(message)
    return len(json.dumps(message, separators=(",", ":"), default=str))


class Message:
    __slots__ = ("id", "channel", "message", "sender", "ts", "expires_at", "size")

    def __init__(self, id: int, channel: str, message: Any, sender: str | None, ts: int,
                 expires_at: int | None, size: int) -> None:
        self.id = id
        self.channel = channel
        self.message = message
        self.sender = sender
        self.ts = ts
        self.expires_at = expires_at
        self.size = size

    def to_dict(self) -> dict:
        """The history shape (3.7 field names, plus `message` and `ts` as in deliveries)."""
        return {
            "id": self.id,
            "channel": self.channel,
            "payload": self.message,
            "contentType": "text" if isinstance(self.message, str) else "json",
            "sender": self.sender,
            "createdAt": self.ts,
            "expiresAt": self.expires_at,
        }

    def delivery(self) -> dict:
        """The shape pushed to subscribers (IPC `msg.delivery`, SSE)."""
        return {"id": self.id, "channel": self.channel, "message": self.message, "sender": self.sender,
                "ts": self.ts}


class Ring:
    __slots__ = ("name", "messages", "bytes")

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages: deque[Message] = deque()
        self.bytes = 0


class Channels(Primitive):
    name = "channels"
    load_order = 20

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.rings: dict[str, Ring] = {}
        self.ids = BlockSequence(self.store, "msg.id", block=10_000)
        self.order: deque[Message] = deque()  # every live message in publish order, for the byte budget
        self.live = 0
        self.total_bytes = 0
        self.published = 0
        self._sweep_timer: Timer | None = None
        self.team: Any = None  # TeamChannels in team mode: the rings mirror the team's stream

    def on_team_link(self, link: Any) -> None:
        """Team mode (docs/team.md): every channel is the team's, on the space's `channels` stream."""
        from pdcore.team.channels import TeamChannels

        self.team = TeamChannels(self, link)

    def load(self, now: int) -> None:
        self.ids.load()

    def counts(self) -> dict[str, int]:
        out = {"channels": len(self.rings), "channel_messages": self.live, "channel_bytes": self.total_bytes}
        if self.team is not None:
            out.update(self.team.counts())
        return out

    # -- ring upkeep -----------------------------------------------------------------------
    def _pop_oldest(self, ring: Ring) -> Message:
        msg = ring.messages.popleft()
        ring.bytes -= msg.size
        self.total_bytes -= msg.size
        self.live -= 1
        msg.size = -1  # marks it gone for the global order queue
        return msg

    def _trim(self, ring: Ring, now: int) -> None:
        """Drop what is beyond the ring's count or older than its age; forget an empty ring."""
        cutoff = now - self.config.channel_ring_age_ms
        msgs = ring.messages
        while msgs and (len(msgs) > self.config.channel_ring_size or msgs[0].ts < cutoff
                        or (msgs[0].expires_at is not None and msgs[0].expires_at <= now)):
            self._pop_oldest(ring)
        if not msgs and self.rings.get(ring.name) is ring:
            del self.rings[ring.name]

    def _enforce_budget(self, now: int) -> None:
        order = self.order
        while self.total_bytes > self.config.channel_ring_total_bytes and order:
            msg = order.popleft()
            if msg.size < 0:
                continue
            ring = self.rings.get(msg.channel)
            if ring is not None and ring.messages and ring.messages[0] is msg:
                self._pop_oldest(ring)
                if not ring.messages:
                    del self.rings[ring.name]
        self._compact_order()

    def _compact_order(self) -> None:
        """Entries of messages trimmed per channel linger in `order`; drop them once they dominate."""
        if len(self.order) > 2 * self.live + 1024:
            self.order = deque(m for m in self.order if m.size >= 0)

    def _arm_sweep(self, now: int) -> None:
        if self._sweep_timer is None and self.rings:
            every = max(1000, min(SWEEP_MAX_MS, self.config.channel_ring_age_ms))
            self._sweep_timer = self.root.timers.add(now + every, self._sweep)

    def _sweep(self) -> None:
        """Housekeeping: age out old messages of quiet channels too."""
        self._sweep_timer = None
        now = self.root.clock()
        for ring in list(self.rings.values()):
            self._trim(ring, now)
        self._enforce_budget(now)
        self._arm_sweep(now)

    def _visible(self, ring: Ring, now: int, after: int | None) -> list[Message]:
        self._trim(ring, now)
        msgs = ring.messages
        if after is not None and msgs and msgs[0].id <= after:
            out = []
            for m in reversed(msgs):  # newest first until `after`, then flip
                if m.id <= after:
                    break
                out.append(m)
            out.reverse()
        else:
            out = list(msgs)
        return [m for m in out if m.expires_at is None or m.expires_at > now]

    def _matching(self, channel: str, now: int, after: int | None) -> list[Message]:
        """Live messages of one channel, or merged by id across every channel a pattern matches."""
        if "*" not in channel and "?" not in channel:
            ring = self.rings.get(channel)
            return self._visible(ring, now, after) if ring is not None else []
        lists = [self._visible(r, now, after) for r in list(self.rings.values()) if channel_matches(channel, r.name)]
        return list(heapq.merge(*lists, key=lambda m: m.id))

    # -- the publishing path ---------------------------------------------------------------
    def publish_event(self, channel: str, message: Any, sender: str | None, now: int,
                      expires_at: int | None = None, size: int | None = None) -> int | None:
        """Append to the channel's ring, push to subscribers, wake pollers; return the message id.

        `root.publish` calls this for events other primitives emit (`pd:agents`, integration, ...).
        In team mode the message goes to the team's stream in the background (id None here).
        """
        size = message_size(message) if size is None else size
        if self.team is not None:
            self.team.publish_event(channel, message, sender, now, expires_at)
            return None
        return self.append(Message(self.ids.next(), channel, message, sender, now, expires_at, size))

    def append(self, msg: Message, push: bool = True, hooks: bool = True) -> int:
        """Keep `msg` in its channel's ring; push it to subscribers and wake pollers (`push`),
        tell the webhooks (`hooks`); its id."""
        channel, now = msg.channel, msg.ts
        size = msg.size
        ring = self.rings.get(channel)
        if ring is None:
            ring = self.rings[channel] = Ring(channel)
        ring.messages.append(msg)
        ring.bytes += size
        self.total_bytes += size
        self.live += 1
        self.published += 1
        self.order.append(msg)
        self._trim(ring, now)
        if self.total_bytes > self.config.channel_ring_total_bytes:
            self._enforce_budget(now)
        else:
            self._compact_order()
        self._arm_sweep(now)
        root = self.root
        if push:
            root.deliver(channel, msg.delivery())
            root.wake(channel_key(channel))
            root.wake(ANY_CHANNEL)
        webhooks = root.primitives.get("webhooks") if hooks else None
        if webhooks is not None and webhooks.wants("message.publish"):  # type: ignore[attr-defined]
            webhooks.on_event(Ctx(now, source="internal"), "message.publish",  # type: ignore[attr-defined]
                              {"channel": channel, "id": msg.id, "sender": msg.sender, "message": msg.message},
                              target=channel)
        return msg.id

    # -- operations ------------------------------------------------------------------------
    def publish(self, ctx: Ctx, channel: str, payload: Any = None, message: Any = None, content: Any = None,
                sender: str | None = None, expires: int | None = None) -> dict | Await:
        """Publish one message (`payload`; `message` and `content` are accepted as 3.7 aliases)."""
        value = next((v for v in (payload, message, content) if v is not None), None)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise OpError("missing_field", "payload is required (the message to publish)", "payload")
        if is_pattern(channel):
            raise OpError("invalid_name", "channel must be a channel name, not a pattern, to publish to", "channel")
        size = message_size(value)
        if size > self.config.message_max_bytes:
            raise OpError("too_large", f"payload is {size} bytes; the limit is {self.config.message_max_bytes} "
                                       "(message_max_bytes)", "payload")
        expires_at = ctx.now + expires if expires else None
        if self.team is not None:
            return self.team.publish(ctx, channel, value, sender or ctx.agent_id, expires, size)
        msg_id = self.publish_event(channel, value, sender or ctx.agent_id, ctx.now, expires_at, size)
        return {"id": msg_id, "channel": channel, "message": f"published to {channel}"}

    def history(self, ctx: Ctx, channel: str, limit: int = 50, after: int | None = None) -> dict:
        """Recent messages, oldest first: the last `limit`, or the first `limit` after id `after`.

        `firstId` / `lastId` are the oldest / newest ids the channel's ring keeps (null for a
        pattern or an empty ring). `after` below `firstId` means messages after it may have
        been trimmed: the SSE resume (workers/sse.py) reports that as a gap, and needs both
        numbers from the same call as the messages.
        """
        if self.team is not None:
            self.team.require()
        found = self._matching(channel, ctx.now, after)
        found = found[:limit] if after is not None else found[-limit:]
        ring = self.rings.get(channel)
        first, last = (ring.messages[0].id, ring.messages[-1].id) if ring is not None and ring.messages else (None, None)
        return {"channel": channel, "messages": [m.to_dict() for m in found], "count": len(found),
                "firstId": first, "lastId": last}

    def poll(self, ctx: Ctx, channel: str, after: int | None = None, timeout: int | None = None,
             limit: int = 100) -> dict | Park:
        """Messages after id `after` (0 when absent); when there are none, park up to `timeout` ms."""
        if self.team is not None:
            self.team.require()
        after = after or 0
        found = self._matching(channel, ctx.now, after)[:limit]
        if found:
            return self._polled(channel, found, after)
        wait = min(DEFAULT_POLL_MS if timeout is None else timeout, self.config.channel_poll_max_ms)
        empty = self._polled(channel, [], after)
        if wait <= 0:
            return empty
        key = ANY_CHANNEL if is_pattern(channel) else channel_key(channel)
        if self.team is not None:
            self.team.waited.add((key,), ctx.now + wait, ctx.now)
        return Park(keys=(key,), deadline=ctx.now + wait, on_timeout=empty)

    @staticmethod
    def _polled(channel: str, found: list[Message], after: int) -> dict:
        messages = [m.to_dict() for m in found]
        return {"channel": channel, "messages": messages, "message": messages[0] if messages else None,
                "count": len(messages), "lastId": found[-1].id if found else after}

    def clear(self, ctx: Ctx, channel: str) -> dict | Await:
        """Forget a channel's history (a pattern clears every matching channel)."""
        if self.team is not None:
            return self.team.clear(ctx, channel)
        deleted = self.drop(self.names(channel))
        return {"channel": channel, "deleted": deleted, "message": f"cleared {deleted} message(s) from {channel}"}

    def names(self, channel: str) -> list[str]:
        """The channel, or the channels with history a pattern matches."""
        return ([channel] if "*" not in channel and "?" not in channel
                else [n for n in self.rings if channel_matches(channel, n)])

    def drop(self, names: list[str], below: int | None = None) -> int:
        """Forget the rings of `names` (only messages with ids below `below` when given); how many went."""
        deleted = 0
        for name in names:
            ring = self.rings.get(name)
            if ring is None:
                continue
            while ring.messages and (below is None or ring.messages[0].id < below):
                self._pop_oldest(ring)
                deleted += 1
            if not ring.messages:
                del self.rings[name]
        return deleted

    def list_channels(self, ctx: Ctx, pattern: str | None = None) -> dict:
        """Channels with messages in their ring, most recently active first."""
        if self.team is not None:
            self.team.require()
        out = []
        for ring in list(self.rings.values()):
            if pattern is not None and not channel_matches(pattern, ring.name):
                continue
            self._trim(ring, ctx.now)
            if ring.messages:
                out.append({"channel": ring.name, "count": len(ring.messages), "lastMessage": ring.messages[-1].ts,
                            "lastId": ring.messages[-1].id, "bytes": ring.bytes})
        out.sort(key=lambda c: c["lastId"], reverse=True)
        return {"channels": out, "count": len(out)}


PRIMITIVE = Channels
