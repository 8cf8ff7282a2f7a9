"""The binary frame of Port Daddy's IPC (wire-compatible with 3.8), as pure functions.

    [type:1][conv_id:4 big-endian][payload_len:2 big-endian] + MessagePack payload

A message longer than 65,535 bytes is split: every chunk but the last is sent as a
CONTINUATION frame (type 0x3F) with the message's conv_id, the last chunk as an ordinary
frame of the message's real type. A receiver joins the chunks, in order, before decoding.
The frames of one continued message are contiguous on the connection. See docs/protocol.md.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import msgpack

HEADER = struct.Struct(">BIH")
HEADER_SIZE = HEADER.size  # 7
MAX_PAYLOAD = 0xFFFF
MAX_CONV_ID = 0x7FFFFFFF

INFORM = 0x01
INFORM_DONE = 0x02
INFORM_REF = 0x03
REQUEST = 0x10
QUERY_IF = 0x11
QUERY_REF = 0x12
CANCEL = 0x13
AGREE = 0x20
REFUSE = 0x21
FAILURE = 0x22
NOT_UNDERSTOOD = 0x23
SUBSCRIBE = 0x30
UNSUBSCRIBE = 0x31
CONTINUATION = 0x3F

NAMES = {
    INFORM: "INFORM", INFORM_DONE: "INFORM_DONE", INFORM_REF: "INFORM_REF", REQUEST: "REQUEST",
    QUERY_IF: "QUERY_IF", QUERY_REF: "QUERY_REF", CANCEL: "CANCEL", AGREE: "AGREE", REFUSE: "REFUSE",
    FAILURE: "FAILURE", NOT_UNDERSTOOD: "NOT_UNDERSTOOD", SUBSCRIBE: "SUBSCRIBE",
    UNSUBSCRIBE: "UNSUBSCRIBE", CONTINUATION: "CONTINUATION",
}
KNOWN_TYPES = frozenset(NAMES)
_SINGLE_FRAME_TYPES = KNOWN_TYPES - {CONTINUATION}

_pack = msgpack.Packer(use_bin_type=True).pack
_header = HEADER.pack


class ProtocolError(Exception):
    """A frame the receiver cannot accept; `code` names the rule broken."""

    def __init__(self, code: str, message: str, conv_id: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.conv_id = conv_id


def pack_payload(obj: Any) -> bytes:
    return _pack(obj)


def unpack_payload(body: bytes) -> Any:
    """Decode one MessagePack value; raise ProtocolError if it is not exactly one map."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ProtocolError("bad_payload", f"payload is not MessagePack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_payload", "payload must be a MessagePack map")
    return obj


def encode_body(type_: int, conv_id: int, body: bytes) -> bytes:
    """Frame an already-packed payload, splitting it into continuation frames when needed."""
    n = len(body)
    if n <= MAX_PAYLOAD:
        return _header(type_, conv_id, n) + body
    parts = []
    for start in range(0, n, MAX_PAYLOAD):
        chunk = body[start:start + MAX_PAYLOAD]
        last = start + MAX_PAYLOAD >= n
        parts.append(_header(type_ if last else CONTINUATION, conv_id, len(chunk)))
        parts.append(chunk)
    return b"".join(parts)


def encode(type_: int, conv_id: int, payload: Any) -> bytes:
    """Frame a payload object (packed as MessagePack)."""
    return encode_body(type_, conv_id, _pack(payload))


class PendingBudget:
    """Bytes held by unfinished multi-frame messages of every decoder that shares it.

    The daemon gives one to all its public connections (`ipc_pending_bytes_max`), so many
    connections that each start a large message and never finish it hold at most `limit`
    bytes together, not 4 MiB each."""

    __slots__ = ("limit", "held")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0


class FrameDecoder:
    """Incremental decoder: `feed(bytes)` yields complete messages as (type, conv_id, body).

    Violations (unknown type, empty payload, a continuation interrupted by another
    conversation) are yielded as ProtocolError values, never raised, so the caller can
    count strikes and keep reading: every frame carries its own length, so the stream
    never loses sync. A message whose joined size passes `max_message`, or whose next chunk
    would take the shared `budget` past its limit, yields a ProtocolError with code
    `too_large` once; its chunks held so far are freed and its remaining chunks skipped.

    `push(bytes)` then `frames(limit)` decodes at most `limit` frames of what was pushed;
    `more` then says whether a complete frame is still waiting (the core's fair turns).
    """

    __slots__ = ("_buf", "_chunks", "_chunk_conv", "_chunk_size", "_skipping", "max_message", "budget", "more")

    def __init__(self, max_message: int = 4 * 1024 * 1024, budget: PendingBudget | None = None) -> None:
        self._buf = bytearray()
        self._chunks: list[bytes] = []
        self._chunk_conv = -1
        self._chunk_size = 0
        self._skipping = False
        self.max_message = max_message
        self.budget = budget
        self.more = False

    def feed(self, data: bytes) -> Iterator[tuple[int, int, bytes] | ProtocolError]:
        self._buf += data
        return self.frames(-1)

    def push(self, data: bytes) -> None:
        self._buf += data

    def frames(self, limit: int) -> Iterator[tuple[int, int, bytes] | ProtocolError]:
        """Decode the frames pushed so far, at most `limit` of them (every one when negative)."""
        buf = self._buf
        pos = 0
        end = len(buf)
        self.more = False
        try:
            while end - pos >= HEADER_SIZE:
                type_, conv_id, length = HEADER.unpack_from(buf, pos)
                if end - pos - HEADER_SIZE < length:
                    break
                if not limit:
                    self.more = True
                    break
                limit -= 1
                body = bytes(buf[pos + HEADER_SIZE:pos + HEADER_SIZE + length])
                pos += HEADER_SIZE + length
                if length and type_ in _SINGLE_FRAME_TYPES and self._chunk_conv < 0:
                    yield (type_, conv_id, body)  # the common case: a whole message in one frame
                    continue
                item = self._message(type_, conv_id, body)
                if item is not None:
                    yield item
        finally:
            del buf[:pos]

    def _message(self, type_: int, conv_id: int, body: bytes) -> tuple[int, int, bytes] | ProtocolError | None:
        if type_ not in KNOWN_TYPES:
            self._reset()
            return ProtocolError("unknown_type", f"unknown frame type 0x{type_:02x}", conv_id)
        if self._chunk_conv >= 0 and conv_id != self._chunk_conv:
            self._reset()
            return ProtocolError("interleaved", "a continued message was interrupted by another conversation", conv_id)
        if type_ == CONTINUATION:
            if self._chunk_conv < 0:
                self._chunk_conv = conv_id
            if self._skipping:
                return None
            if self._chunk_size + len(body) > self.max_message:
                self._skip()
                return ProtocolError("too_large", f"message exceeds ipc_max_message ({self.max_message} bytes)",
                                     conv_id)
            budget = self.budget
            if budget is not None:
                if budget.held + len(body) > budget.limit:
                    self._skip()
                    return ProtocolError("too_large", "unfinished multi-frame messages of all connections would "
                                         f"exceed ipc_pending_bytes_max ({budget.limit} bytes); send it again later",
                                         conv_id)
                budget.held += len(body)
            self._chunks.append(body)
            self._chunk_size += len(body)
            return None
        if self._chunk_conv >= 0:  # the final chunk of a continued message
            skipping = self._skipping
            if not skipping:
                if self._chunk_size + len(body) > self.max_message:
                    self._reset()
                    return ProtocolError("too_large", f"message exceeds ipc_max_message ({self.max_message} bytes)",
                                         conv_id)
                self._chunks.append(body)
                body = b"".join(self._chunks)
            self._reset()
            if skipping:
                return None
        if not body:
            return ProtocolError("empty_payload", "frame has an empty payload", conv_id)
        return (type_, conv_id, body)

    def _skip(self) -> None:
        """Drop the chunks of the message under way and skip the rest of it."""
        conv = self._chunk_conv
        self._reset()
        self._chunk_conv = conv
        self._skipping = True

    def _reset(self) -> None:
        if self.budget is not None:
            self.budget.held -= self._chunk_size
        self._chunks = []
        self._chunk_conv = -1
        self._chunk_size = 0
        self._skipping = False

    def release(self) -> None:
        """Free everything held (the connection closed), giving its bytes back to the budget."""
        self._reset()
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._chunk_size


class _TooManyElements(Exception):
    pass


def unpack_bounded(body: bytes, max_elements: int) -> Any:
    """`unpack_payload` for a body that may hold more than `max_elements` values: refused
    (ProtocolError `too_large`) after decoding at most about twice that many, so a message of
    millions of tiny values costs milliseconds, not seconds. Every value but the top one is an
    entry of a list or map (a map entry counts two), and those are counted as each container
    completes; no container may be longer than the limit.

    A body of at most `max_elements` bytes cannot hold more values than that (each takes a
    byte or more): the caller decodes those with plain `msgpack.unpackb`, at full speed."""
    count = 0

    def count_list(items: list) -> list:
        nonlocal count
        count += len(items)
        if count > max_elements:
            raise _TooManyElements
        return items

    def count_map(pairs: dict) -> dict:
        nonlocal count
        count += 2 * len(pairs)
        if count > max_elements:
            raise _TooManyElements
        return pairs

    too_many = ProtocolError("too_large", f"message holds more than ipc_max_elements ({max_elements}) values")
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False, list_hook=count_list, object_hook=count_map,
                              max_array_len=max_elements, max_map_len=max_elements // 2)
    except _TooManyElements:
        raise too_many from None
    except Exception as exc:  # msgpack raises several types for garbage
        if isinstance(exc, ValueError) and "exceeds max_" in str(exc):
            raise too_many from None
        raise ProtocolError("bad_payload", f"payload is not MessagePack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_payload", "payload must be a MessagePack map")
    return obj
