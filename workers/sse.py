"""`GET /msg/{channel}/subscribe`: a channel's messages as Server-Sent Events.

A stream is a coroutine (an async generator under Falcon's ASGI response), not a thread, so a
worker holds as many as `http_max_streams` allows. Each stream has a core connection of its
own (SUBSCRIBE, then INFORM deliveries) rather than sharing the worker's request connection
through a demultiplexer, because the core already does per connection what a stream needs:
it counts and drops deliveries for a subscriber that falls `subscriber_queue_max` behind and
says so (`msg.dropped`, sent here as a gap), it orders a subscriber's deliveries, and it forgets
the subscription when the connection closes. Sharing one connection would move all of that
into the worker and let one slow browser hold back (or drop) every stream of its worker. The
cost is a core.sock connection per stream (not counted against `ipc_max_connections`) and a
frame per stream per published message. Every delivery is written as

    id: <message id>
    event: message
    data: {"id", "channel", "message", "sender", "ts"}

with a `: keep-alive` comment after `sse_keepalive_s` of silence, so proxies and clients
see the stream is alive. A stream ends when the client goes away (the server's "client gone"
future closes it at once), the core goes away (the browser's EventSource reconnects by itself
after `retry`), or the worker is stopping (`stop_streams`). Streams count against the worker's
`http_max_streams` (429 beyond it).

Resuming. A client that reconnects with `Last-Event-ID: <id>` (what a browser's EventSource
sends by itself) or `?after=<id>` (for clients that cannot set headers; the header wins, since
a reconnecting EventSource repeats the original URL) first gets the messages after that id from
the channel's history ring, then the live ones, without a duplicate or a hole. The ids are the
history ring's own (`msg.history`'s `after`); the replay is read through the ordinary
`msg.history` op, so the core decides what history holds. When the message the client last saw
is no longer in the ring (trimmed, aged out, or the core restarted), messages after it may have
been dropped: an `event: gap` whose data names `after` and the oldest id still kept
(`firstId`, null when the ring is empty) comes before the replay. `after` 0 means "everything
kept" and never reports a gap. Replay is for exact channels only: the channels a pattern
matches are trimmed independently and share one id sequence with every other channel, so a
hole in one of them cannot be told from ids. On a pattern the header is ignored (a browser
sends it on every reconnect) and `?after` is refused with 400.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from falcon.asgi import Request, Response

from pdcore.errors import OpError
from pdcore.ops.schema import INT_MAX, is_pattern
from workers.corelink import CoreStream
from workers.guard import CLIENT_GONE, unescape_param
from workers.limits import Limits

RETRY_MS = 3000
REPLAY_PAGE = 1000  # messages per msg.history call while replaying (that op's largest `limit`)

_open_streams: set[Any] = set()  # the core connections of this worker's open streams


def stop_streams() -> None:
    """End every open stream of this worker (it is stopping): each closes its core connection."""
    for stream in list(_open_streams):
        stream.close()


def monotonic() -> float:
    return asyncio.get_running_loop().time()


class StreamSource(Protocol):
    def stream(self) -> CoreStream: ...

    async def call(self, action: str, args: dict[str, Any], *, idempotent: bool = False,
                   timeout_s: float | None = None) -> dict: ...


def parse_event_id(text: str, field: str) -> int:
    """A message id sent back by a client (`Last-Event-ID` or `after`); 400 naming `field` otherwise."""
    value = text.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 19 and int(value) <= INT_MAX):
        where = "header" if field == "Last-Event-ID" else "query parameter"
        raise OpError("invalid_argument",
                      f"{field} {where} must be a message id (a whole number such as 42), not {text[:40]!r}; "
                      "send the id of the last event received, or leave it out to start from now", field)
    return int(value)


def resume_after(req: Request, channel: str) -> int | None:
    """The id to resume after (`Last-Event-ID`, else `?after`), or None for a live-only stream."""
    header = req.get_header("Last-Event-ID")
    after = req.get_param("after")  # the last one when repeated
    if is_pattern(channel):
        if after:
            raise OpError("invalid_argument",
                          f"after applies to one channel, not the pattern {channel!r} (channels a pattern "
                          "matches are trimmed independently, so a hole could not be reported); "
                          "resume each channel on its own stream", "after")
        return None  # a browser sends the header on every reconnect: ignored, not refused
    if header is not None and header.strip():
        return parse_event_id(header, "Last-Event-ID")
    if after:
        return parse_event_id(after, "after")
    return None


def replayed(message: dict[str, Any]) -> dict[str, Any]:
    """A history message (3.7 shape) in the delivery shape live events carry."""
    return {"id": message.get("id"), "channel": message.get("channel"), "message": message.get("payload"),
            "sender": message.get("sender"), "ts": message.get("createdAt")}


def gap_event(**data: Any) -> bytes:
    """`event: gap`: messages after `data["after"]` may be missing from this stream.

    Sent when a resume finds the client's id no longer in the ring (`firstId`: the oldest kept),
    and when the core dropped live messages because the stream fell behind (`dropped`: how
    many; `after`: the last id this stream sent, to resume from with `Last-Event-ID`, or null
    on a pattern stream, whose ids belong to several channels). It has no `id:` line, so the
    client's last event id stays that of the last message it got."""
    return f"event: gap\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def format_event(delivery: dict[str, Any]) -> bytes:
    """One delivery as an SSE event (`id`, `event: message`, `data` as one JSON line)."""
    data = {k: v for k, v in delivery.items() if k != "action"}
    lines = []
    if data.get("id") is not None:
        lines.append(f"id: {data['id']}")
    lines.append("event: message")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return ("\n".join(lines) + "\n\n").encode()


class Replay:
    """The messages of one channel after `after`, read from its history ring page by page.

    How replay and live are joined (no duplicate, no hole). The stream SUBSCRIBEs first and
    only then is history read, so every message is in at least one of the two:
    - published before the subscription: in history, if still kept;
    - published after it: delivered live (the core pushes each publish to every subscriber,
      in publish order, so ids arrive increasing).
    The core is one thread, so a `msg.history` call sees the ring at one instant T: every
    message it returns was published before T, and every message published after T has a
    larger id than any message the ring held at T. Hence live deliveries with an id at or
    below the last replayed id (`last_sent`) were published before T and are dropped, and
    every live delivery above it is new. Nothing is lost in between: the ring is trimmed
    oldest first, so while the cursor message (the client's `after`, then each page's last
    message) is still kept, every later message of the channel published before T is kept
    too and is in the page. When the cursor message is not kept any more (`firstId` is above
    it, or the ring is empty), the trimmed messages after it are reported with a `gap` event:
    the join itself never misses a message silently. (A message whose own `expires` passed is
    not in history, by design. Live deliveries the core drops once a stream falls
    `subscriber_queue_max` behind, as for any subscriber, get a `gap` event of their own: see
    `gap_event`.) Paging stops at a short page or once the cursor
    reaches the channel's newest id at the first page (newer messages were published after
    the subscription, so they come live).
    """

    def __init__(self, core: StreamSource, channel: str, after: int) -> None:
        self.core = core
        self.channel = channel
        self.cursor = after
        self.last_sent = 0  # the newest id replayed; live deliveries at or below it are duplicates
        self.first_page: dict[str, Any] = {}

    async def start(self) -> Replay:
        """Read the first page now, so a failure is still a JSON error reply."""
        self.first_page = await self._page()
        return self

    async def _page(self) -> dict[str, Any]:
        return await self.core.call("msg.history",
                                    {"channel": self.channel, "after": self.cursor, "limit": REPLAY_PAGE},
                                    idempotent=True)

    async def events(self) -> AsyncIterator[bytes]:
        """The `gap` event if any, then each kept message after the cursor as a `message` event."""
        page, self.first_page = self.first_page, {}
        until = page.get("lastId") or 0  # the newest id when the replay began
        while True:
            first_id = page.get("firstId")
            if self.cursor > 0 and (first_id is None or first_id > self.cursor):
                yield gap_event(channel=self.channel, after=self.cursor, firstId=first_id)
            messages = page.get("messages") or []
            for message in messages:
                yield format_event(replayed(message))
                self.last_sent = self.cursor = message["id"]
            if len(messages) < REPLAY_PAGE or self.cursor >= until:
                return
            try:
                page = await self._page()
            except (OpError, OSError):
                return  # ends the stream; the client resumes from the last id it got

    def is_replayed(self, delivery: dict[str, Any]) -> bool:
        msg_id = delivery.get("id")
        return isinstance(msg_id, int) and msg_id <= self.last_sent


class ChannelEvents:
    """The SSE resource. `field` is the router's name for the channel path field."""

    def __init__(self, core: StreamSource, limits: Limits, keepalive_s: float, field: str) -> None:
        self.core = core
        self.cap = limits.streams
        self.keepalive_s = max(1.0, float(keepalive_s))
        self.field = field

    async def on_get(self, req: Request, resp: Response, **params: str) -> None:
        channel = unescape_param(params[self.field])
        after = resume_after(req, channel)  # a bad id is refused before anything is taken
        self.cap.take(f"event stream on {channel}")
        stream = self.core.stream()
        replay: Replay | None = None
        try:
            await stream.subscribe([channel])  # first: see Replay for why this order leaves no hole
            if after is not None:
                replay = await Replay(self.core, channel, after).start()
        except BaseException:
            stream.close()
            self.cap.give_back()
            raise
        self._headers(resp)
        _open_streams.add(stream)
        gone = req.scope.get(CLIENT_GONE)
        if gone is not None:
            gone.add_done_callback(lambda _: stream.close())  # the client left: end the stream now
        resp.stream = EventStream(self._events(stream, channel, replay), stream, self.cap.give_back)

    async def on_head(self, req: Request, resp: Response, **params: str) -> None:
        """The GET's status and headers, without opening a stream (no core connection, no cap)."""
        resume_after(req, unescape_param(params[self.field]))
        self._headers(resp)
        resp.stream = _no_body()  # a body of unknown length, like the GET's: no Content-Length: 0

    @staticmethod
    def _headers(resp: Response) -> None:
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")

    async def _events(self, stream: CoreStream, channel: str, replay: Replay | None = None) -> AsyncIterator[bytes]:
        yield f"retry: {RETRY_MS}\n: subscribed to {channel}\n\n".encode()
        if replay is not None:
            async for event in replay.events():
                yield event
        last_id = replay.last_sent if replay is not None else 0  # the newest id this stream sent
        quiet_since = monotonic()
        while True:
            try:
                delivery = await stream.next_delivery(max(0.0, quiet_since + self.keepalive_s - monotonic()))
            except OSError:
                return  # the core went away, the client left or the worker stops; EventSource reconnects
            if delivery is not None:
                if delivery.get("action") == "msg.dropped":
                    yield gap_event(channel=channel, after=None if is_pattern(channel) else last_id,
                                    dropped=delivery.get("count") or 0)
                    continue
                if replay is not None and replay.is_replayed(delivery):
                    continue  # already sent from history (see Replay)
                yield format_event(delivery)
                if isinstance(delivery.get("id"), int):
                    last_id = delivery["id"]
                quiet_since = monotonic()
            elif monotonic() - quiet_since >= self.keepalive_s:
                yield b": keep-alive\n\n"
                quiet_since = monotonic()


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


class EventStream:
    """The ASGI body of a stream: closes the core connection and gives the cap back exactly
    once when the server closes it (Falcon awaits `close`), even if it was never iterated."""

    def __init__(self, events: AsyncIterator[bytes], stream: CoreStream, release: Callable[[], None]) -> None:
        self.events = events
        self.stream = stream
        self.release: Callable[[], None] | None = release

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.events

    async def close(self) -> None:
        self._release()
        await self.events.aclose()  # type: ignore[attr-defined]

    def _release(self) -> None:
        self.stream.close()
        _open_streams.discard(self.stream)
        release, self.release = self.release, None
        if release is not None:
            release()

    def __del__(self) -> None:
        if self.release is not None:
            self._release()
