"""The HTTP workers' link to the core: one pipelined connection per worker, over `core.sock`.

A worker runs one event loop and keeps ONE connection to the core (`CoreClient`). Every HTTP
request's call is written to it as soon as it comes, as a REQUEST frame with a conv_id of its
own; the core answers in any order, and each reply is matched back to its caller by conv_id
(`_Link.pending`). No lock-step, no thread per request: a parked call (a lock wait) is just a
future waiting in `pending` while other calls pass it on the same connection.

A reply that does not come within the call's timeout fails that call with 503 `unavailable`
(a late reply is dropped: its conv_id is no longer pending); the connection stays. A call whose
caller goes away (the HTTP client closed, the worker cancels its task) sends CANCEL, so a
parked call of a client that left does not hold its place in the core. When the core closes
the connection (it restarted), every call in flight fails with the same 503 as before (a read
is sent once more on the new connection: repeating it is harmless; a write is not, since the
core may have applied it), and the next call connects again, waiting up to
`http_core_connect_wait_ms` for the core to come back. Nothing waits without a bound.

Event streams (SSE) do not share the worker's connection: each opens a `CoreStream` of its own
(see workers/sse.py for why).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from pathlib import Path
from typing import Any

from pdcore import protocol as proto
from pdcore.errors import OpError

DEFAULT_REPLY_TIMEOUT_S = 30.0
PARKED_GRACE_S = 10.0  # added to a request's own `wait`/`timeout` so the core answers first
_MAX_REPLY = 1 << 28  # the core is a trusted peer; this only bounds a runaway reply
_STREAM_INFORMS = ("msg.delivery", "msg.dropped")  # what the core pushes to a subscribed stream
STREAM_BUFFER = 64 * 1024  # bytes of deliveries a stream holds before it stops reading from the core (see CoreStream)

_START_HINT = "start it with `pd start`"


def core_unavailable(path: Path | str, why: str, **extra: Any) -> OpError:
    """The error every front door shows when the core is down or not answering."""
    return OpError("unavailable", f"the Port Daddy core is not reachable at {path} ({why}); {_START_HINT}", **extra)


def _ms(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0.0


def reply_timeout(args: dict[str, Any], parks: bool = False) -> float:
    """Seconds to wait for a reply: a parked op's own `wait`/`timeout` (ms) + a grace, else 30 s.

    An op that parks by nature (long-poll with the core's default timeout) gets 30 s + grace,
    so the core's own timeout reply always arrives first.
    """
    longest = max(_ms(args.get("wait")), _ms(args.get("timeout"))) / 1000.0
    if longest:
        return longest + PARKED_GRACE_S
    return DEFAULT_REPLY_TIMEOUT_S + (PARKED_GRACE_S if parks else 0.0)


def unframeable(args: dict[str, Any], exc: Exception) -> OpError:
    """The 400 for arguments a frame cannot carry, naming the argument at fault.

    JSON allows integers of any size and strings holding lone UTF-16 surrogates (`"\\udc80"`);
    MessagePack carries neither, so such a request is bad input, not a server error.
    """
    field = None
    for key, value in args.items():
        try:
            proto.pack_payload(value)
        except (OverflowError, UnicodeEncodeError, ValueError, TypeError) as err:
            exc, field = err, key
            break
    if isinstance(exc, OverflowError):
        why = "holds an integer outside the 64-bit range (-2^63 .. 2^64-1)"
    elif isinstance(exc, UnicodeEncodeError):
        why = "holds text that is not valid Unicode (a lone UTF-16 surrogate such as \\udc80)"
    else:
        why = f"holds a value that cannot be sent to the core ({type(exc).__name__})"
    return OpError("invalid_argument", f"{field or 'the request'} {why}", field)


def result_of(type_: int, reply: dict) -> dict:
    """The result of a reply frame, or the OpError it carries."""
    if type_ == proto.INFORM_DONE:
        result = reply.get("result", {})
        return result if isinstance(result, dict) else {"result": result}
    if type_ in (proto.REFUSE, proto.FAILURE, proto.NOT_UNDERSTOOD):
        fields = {k: v for k, v in reply.items() if k != "action"}
        if "code" not in fields:
            fields["code"] = "not_understood" if type_ == proto.NOT_UNDERSTOOD else "internal"
        raise OpError.from_dict(fields)
    raise OpError("internal", f"the core answered with an unexpected {proto.NAMES.get(type_, hex(type_))} frame")


async def _connect(path: Path, connect_wait_s: float, factory: Any) -> asyncio.Protocol:
    """Connect to core.sock with `factory`'s protocol, retrying briefly while the core restarts."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_wait_s
    while True:
        try:
            _, protocol = await loop.create_unix_connection(factory, str(path))
            return protocol
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if loop.time() >= deadline:
                why = "no socket file" if isinstance(exc, FileNotFoundError) else "connection refused"
                raise core_unavailable(path, why) from None
            await asyncio.sleep(0.05)
        except OSError as exc:
            raise core_unavailable(path, exc.strerror or type(exc).__name__) from None


class LinkLost(ConnectionError):
    """The connection to the core closed with this call in flight."""


class _Link(asyncio.Protocol):
    """One connection to the core; replies go to the future of their conv_id."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.decoder = proto.FrameDecoder(_MAX_REPLY)
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False
        self._conv = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pending = self.pending
        for item in self.decoder.feed(data):
            if item.__class__ is not tuple:  # a ProtocolError
                fut = pending.pop(item.conv_id, None)  # type: ignore[union-attr]
                if fut is not None and not fut.done():
                    fut.set_exception(OpError("internal", f"the core's reply could not be read: {item}"))
                continue
            type_, conv_id, body = item  # type: ignore[misc]
            fut = pending.pop(conv_id, None)
            if fut is not None and not fut.done():  # else a delivery, or a reply nobody waits for now
                fut.set_result((type_, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(LinkLost(str(exc) if exc else "the core closed the connection"))

    def send(self, body: bytes) -> tuple[int, asyncio.Future]:
        """Write one REQUEST; return its conv_id and the future of its reply."""
        conv = self._conv
        while True:
            conv = conv % proto.MAX_CONV_ID + 1
            if conv not in self.pending:
                break
        self._conv = conv
        fut = self.loop.create_future()
        self.pending[conv] = fut
        self.transport.write(proto.encode_body(proto.REQUEST, conv, body))  # type: ignore[union-attr]
        return conv, fut

    def cancel(self, conv: int) -> None:
        """Forget `conv` and tell the core, so a parked call of a caller that left stops waiting."""
        self.pending.pop(conv, None)
        if not self.closed and self.transport is not None:
            self.transport.write(proto.encode_body(proto.CANCEL, conv, proto.pack_payload({})))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class CoreClient:
    """Calls operations in the core: `await call(action, args)` -> result dict, or raises OpError.

    One per worker process: the connection belongs to the event loop that opened it, and a
    forked child (gunicorn's workers) never reuses its parent's."""

    def __init__(self, core_sock: Path | str, connect_wait_ms: int = 2000) -> None:
        self.path = Path(core_sock)
        self.connect_wait_s = max(0, connect_wait_ms) / 1000.0
        self._link: _Link | None = None
        self._opening: asyncio.Future | None = None
        self._pid = os.getpid()

    async def _current(self) -> _Link:
        link = self._link
        if link is not None and not link.closed and self._pid == os.getpid():
            return link
        if self._opening is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._link = None
            self._opening = asyncio.ensure_future(_connect(self.path, self.connect_wait_s, _Link))
        opening = self._opening
        try:
            link = await asyncio.shield(opening)  # every caller waits for the one connect
        finally:
            if opening.done() and self._opening is opening:
                self._opening = None
        self._link = link  # type: ignore[assignment]
        return link  # type: ignore[return-value]

    async def call(self, action: str, args: dict[str, Any], *, idempotent: bool = False,
                   timeout_s: float | None = None) -> dict:
        """Run one operation in the core and return its result."""
        payload = dict(args)
        payload["action"] = action
        try:
            body = proto.pack_payload(payload)
        except (OverflowError, UnicodeEncodeError, ValueError, TypeError) as exc:
            raise unframeable(args, exc) from None
        wait = reply_timeout(args) if timeout_s is None else timeout_s
        for attempt in (1, 2):
            link = await self._current()
            conv, fut = link.send(body)
            timer = link.loop.call_later(wait, _expire, fut)
            try:
                type_, reply = await fut
            except TimeoutError:
                link.cancel(conv)
                # replyLost: the core may have applied it; a client repeats a take with its request id
                raise OpError("unavailable", f"the Port Daddy core did not answer within {wait:g} s; "
                              "check `pd status` (or restart it with `pd start`)", replyLost=True) from None
            except LinkLost as exc:
                if attempt == 2 or not idempotent:
                    raise core_unavailable(self.path, f"connection lost: {exc}", replyLost=True) from None
                continue
            except asyncio.CancelledError:
                link.cancel(conv)
                raise
            finally:
                timer.cancel()
            return result_of(type_, proto.unpack_payload(reply))
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def stream(self) -> CoreStream:
        """A new connection of its own, for one event stream (connected by `subscribe`)."""
        return CoreStream(self.path, self.connect_wait_s)


class CoreStream(asyncio.Protocol):
    """A connection of its own that subscribes to channels and yields deliveries.

    Deliveries wait in `pending`; past `STREAM_BUFFER` bytes of them the stream stops reading from
    the core, so a stream whose HTTP client reads slowly backs up into the core, which drops
    that subscriber's deliveries past `subscriber_queue_max` and says so (`msg.dropped`),
    exactly as for any slow IPC subscriber."""

    def __init__(self, path: Path, connect_wait_s: float) -> None:
        self.path = path
        self.connect_wait_s = connect_wait_s
        self.transport: asyncio.Transport | None = None
        self.decoder = proto.FrameDecoder(_MAX_REPLY)
        self.pending: deque[tuple[dict, int]] = deque()  # (delivery, its size in bytes)
        self.buffered = 0
        self.closed = False
        self._paused = False
        self._answer: asyncio.Future | None = None
        self._waiter: asyncio.Future | None = None

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            if item.__class__ is not tuple:
                continue
            type_, conv_id, body = item  # type: ignore[misc]
            try:
                payload = proto.unpack_payload(body)
            except proto.ProtocolError:
                continue
            if conv_id == 1 and self._answer is not None and not self._answer.done():
                self._answer.set_result((type_, payload))
            elif type_ == proto.INFORM and payload.get("action") in _STREAM_INFORMS:
                self.pending.append((payload, len(body)))
                self.buffered += len(body)
        if self.buffered >= STREAM_BUFFER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(LinkLost("the core closed the connection"))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the stream's side --
    async def subscribe(self, channels: list[str], timeout_s: float = DEFAULT_REPLY_TIMEOUT_S) -> dict:
        """Connect, send SUBSCRIBE and wait for its AGREE; a refusal raises OpError."""
        await _connect(self.path, self.connect_wait_s, lambda: self)
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self.transport.write(proto.encode(proto.SUBSCRIBE, 1, {"channels": channels}))  # type: ignore[union-attr]
        try:
            type_, payload = await asyncio.wait_for(self._answer, timeout_s)
        except TimeoutError:
            self.close()
            raise OpError("unavailable",
                          f"the Port Daddy core did not answer a subscribe within {timeout_s:g} s") from None
        except LinkLost as exc:
            self.close()
            raise core_unavailable(self.path, f"connection lost: {exc}") from None
        return payload if type_ == proto.AGREE else result_of(type_, payload)

    async def next_delivery(self, timeout_s: float) -> dict | None:
        """The next delivery (or `msg.dropped` notice), or None when `timeout_s` passes without
        one; raises ConnectionError once the stream is closed (by the core, or by `close`)."""
        if not self.pending:
            if self.closed:
                raise ConnectionError("the event stream's core connection is closed")
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout_s, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self.pending:
                if self.closed:
                    raise ConnectionError("the event stream's core connection is closed")
                return None
        delivery, size = self.pending.popleft()
        self.buffered -= size
        if self._paused and self.buffered <= STREAM_BUFFER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return delivery

    def close(self) -> None:
        """Close the connection and wake a waiting `next_delivery` (it raises ConnectionError)."""
        self.closed = True
        self.pending.clear()
        self.buffered = 0
        if self.transport is not None:
            self.transport.close()
        self._wake()
