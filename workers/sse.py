"""`GET /msg/{channel}/subscribe`: a channel's messages as Server-Sent Events.

Each stream has a core connection of its own (SUBSCRIBE, then INFORM deliveries), so a
stream never delays the worker thread's request connection. Every delivery is written as

    id: <message id>
    event: message
    data: {"id", "channel", "message", "sender", "ts"}

with a `: keep-alive` comment after `sse_keepalive_s` of silence, so proxies and clients
see the stream is alive. A stream ends when the client goes away (noticed within a second),
the core goes away (the browser's EventSource reconnects by itself after `retry`), or the
worker is stopping. Streams count against the worker's `Slots` (429 beyond the caps).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Any, Protocol

import falcon

from workers.corelink import CoreStream, peer_closed
from workers.guard import client_key, unescape_param
from workers.slots import Slots

RETRY_MS = 3000
_TICK_S = 1.0  # how often an idle stream checks for a gone client or a stopping worker

_worker_alive: Callable[[], bool] = lambda: True  # noqa: E731 - replaced by the server per worker


def watch_worker(alive: Callable[[], bool]) -> None:
    """Let streams end when the gunicorn worker stops (called from post_worker_init)."""
    global _worker_alive
    _worker_alive = alive


class StreamSource(Protocol):
    def stream(self) -> CoreStream: ...


def format_event(delivery: dict[str, Any]) -> bytes:
    """One delivery as an SSE event (`id`, `event: message`, `data` as one JSON line)."""
    data = {k: v for k, v in delivery.items() if k != "action"}
    lines = []
    if data.get("id") is not None:
        lines.append(f"id: {data['id']}")
    lines.append("event: message")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return ("\n".join(lines) + "\n\n").encode()


class ChannelEvents:
    """The SSE resource. `field` is the router's name for the channel path field."""

    def __init__(self, core: StreamSource, slots: Slots, keepalive_s: float, field: str) -> None:
        self.core = core
        self.slots = slots
        self.keepalive_s = max(1.0, float(keepalive_s))
        self.field = field

    def on_get(self, req: falcon.Request, resp: falcon.Response, **params: str) -> None:
        channel = unescape_param(params[self.field])
        client = client_key(req.env)
        self.slots.take(client, f"event stream on {channel}")
        stream: CoreStream | None = None
        try:
            stream = self.core.stream()
            stream.subscribe([channel])
        except BaseException:
            if stream is not None:
                stream.close()
            self.slots.give_back(client)
            raise
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        events = self._events(stream, channel, req.env.get("gunicorn.socket"))
        resp.stream = EventIterator(events, stream, lambda: self.slots.give_back(client))

    def _events(self, stream: CoreStream, channel: str, client_sock: Any) -> Iterator[bytes]:
        try:
            yield f"retry: {RETRY_MS}\n: subscribed to {channel}\n\n".encode()
            quiet_since = monotonic()
            while _worker_alive():
                if client_sock is not None and peer_closed(client_sock):
                    return
                try:
                    delivery = stream.next_delivery(_TICK_S)
                except OSError:
                    return  # the core went away; EventSource reconnects after `retry`
                if delivery is not None:
                    yield format_event(delivery)
                    quiet_since = monotonic()
                elif monotonic() - quiet_since >= self.keepalive_s:
                    yield b": keep-alive\n\n"
                    quiet_since = monotonic()
        finally:
            stream.close()


class EventIterator:
    """The WSGI body of a stream: releases the core connection and the slot exactly once when
    the server closes it, even if it was never iterated (a generator's `finally` would not run)."""

    def __init__(self, events: Iterator[bytes], stream: CoreStream, release: Callable[[], None]) -> None:
        self.events = events
        self.stream = stream
        self.release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return self.events

    def close(self) -> None:
        self.events.close()  # type: ignore[attr-defined]
        self.stream.close()
        release, self.release = self.release, None
        if release is not None:
            release()

    def __del__(self) -> None:
        if self.release is not None:
            self.close()
