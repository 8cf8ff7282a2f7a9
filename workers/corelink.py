"""The HTTP workers' link to the core: frames over `core.sock`, one connection per thread.

A worker thread sends one REQUEST frame per HTTP request and reads until the reply that
echoes its conv_id (anything else on the connection, e.g. a stale reply, is skipped). The
connection is kept between requests; a connection the core closed (core restarted) is
noticed when sending to it fails (EPIPE: a Unix socket refuses a write to a closed peer at
once) and replaced, and the request is sent again on a new one. When the core cannot be
reached the caller gets an `OpError("unavailable")`, which the app turns into a 503 that
says how to start it.

Hot path: this runs once per HTTP request, so it makes as few system calls as it can: the
socket stays in blocking mode and its timeouts are kernel ones (SO_RCVTIMEO / SO_SNDTIMEO,
set only when the wanted value changes) instead of Python's poll-before-every-call timeout
mode, and nothing is checked before sending. A request is one `send`, a reply usually one
`recv`. Each of those releases the GIL, which with a pool of threads costs a hand-off.

Event streams (SSE) do not share the thread's connection: each opens a `CoreStream`.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from pdcore import protocol as proto
from pdcore.errors import OpError

DEFAULT_REPLY_TIMEOUT_S = 30.0
PARKED_GRACE_S = 10.0  # added to a request's own `wait`/`timeout` so the core answers first
_RECV = 256 * 1024
_MAX_REPLY = 1 << 28  # the core is a trusted peer; this only bounds a runaway reply
_STREAM_INFORMS = ("msg.delivery", "msg.dropped")  # what the core pushes to a subscribed stream

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


def _connect(path: Path, connect_wait_s: float) -> socket.socket:
    """Connect to core.sock, retrying briefly while the supervisor restarts the core."""
    deadline = time.monotonic() + connect_wait_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() >= deadline:
                why = "no socket file" if isinstance(exc, FileNotFoundError) else "connection refused"
                raise core_unavailable(path, why) from None
            time.sleep(0.05)
        except OSError as exc:
            sock.close()
            raise core_unavailable(path, exc.strerror or type(exc).__name__) from None


def peer_closed(sock: socket.socket) -> bool:
    """True when the peer closed the connection (readable with nothing to read).

    Peeks without changing the socket's blocking mode, so it is safe on a socket someone
    else (the WSGI server) is using.
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):
        return True


_TIMEVAL = struct.Struct("@ll")  # struct timeval, for SO_RCVTIMEO / SO_SNDTIMEO
_SEND_TIMEOUT_S = DEFAULT_REPLY_TIMEOUT_S  # a core that reads nothing for this long is gone


def _timeval(seconds: float) -> bytes:
    micros = max(1, round(seconds * 1e6))  # 0 would mean "no timeout"
    return _TIMEVAL.pack(micros // 1_000_000, micros % 1_000_000)


class CoreLink:
    """One connection to the core. Not thread-safe: `CoreClient` keeps one per thread."""

    def __init__(self, path: Path, connect_wait_s: float) -> None:
        self.path = path
        self.connect_wait_s = connect_wait_s
        self.sock: socket.socket | None = None
        self.decoder = proto.FrameDecoder(_MAX_REPLY)
        self._conv = 0
        self._recv_timeout = 0.0  # the SO_RCVTIMEO the socket has now
        self._rbuf = memoryview(bytearray(_RECV))  # reused: recv() of a fresh 256 KiB bytes costs mmap+munmap

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.decoder = proto.FrameDecoder(_MAX_REPLY)

    def _next_conv(self) -> int:
        self._conv = self._conv % proto.MAX_CONV_ID + 1
        return self._conv

    def _open(self) -> socket.socket:
        sock = _connect(self.path, self.connect_wait_s)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(_SEND_TIMEOUT_S))
        except OSError:
            sock.close()
            raise
        self._recv_timeout = 0.0
        self.sock = sock
        return sock

    def _set_recv_timeout(self, sock: socket.socket, seconds: float) -> None:
        if seconds != self._recv_timeout:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
            self._recv_timeout = seconds

    def request(self, body: bytes, timeout_s: float, retry_after_send: bool) -> tuple[int, dict]:
        """Send one packed REQUEST payload; return (frame type, reply payload).

        A connection that breaks is replaced and the request sent again once: always when
        sending failed (nothing reached the core: this is also how a connection the core
        closed between requests is noticed), and after the send only when
        `retry_after_send` (the op is safe to repeat), since the core may have applied it
        before it went away.
        """
        for attempt in (1, 2):
            sock = self.sock
            if sock is None:
                sock = self._open()
            conv = self._next_conv()
            try:
                sock.sendall(proto.encode_body(proto.REQUEST, conv, body))
            except OSError as exc:
                self.close()
                if attempt == 2:
                    raise core_unavailable(self.path, f"send failed: {exc.strerror or exc}") from None
                continue
            try:
                return self._read_reply(sock, conv, timeout_s)
            except TimeoutError:
                self.close()  # a late reply must not be read as the next request's
                # replyLost: the core may have applied it; a client repeats a take with its request id
                raise OpError(
                    "unavailable", f"the Port Daddy core did not answer within {timeout_s:g} s; "
                    f"check `pd status` (or restart it with `pd start`)", replyLost=True) from None
            except (ConnectionError, OSError) as exc:
                self.close()
                if attempt == 2 or not retry_after_send:
                    raise core_unavailable(self.path, f"connection lost: {exc}", replyLost=True) from None
        raise AssertionError("unreachable")

    def _read_reply(self, sock: socket.socket, conv: int, timeout_s: float) -> tuple[int, dict]:
        if timeout_s <= 0:
            raise TimeoutError
        deadline = time.monotonic() + timeout_s
        wait = timeout_s
        while True:
            self._set_recv_timeout(sock, wait)
            try:
                n = sock.recv_into(self._rbuf)
            except BlockingIOError:  # SO_RCVTIMEO passed (EAGAIN on a blocking socket)
                raise TimeoutError from None
            if not n:
                raise ConnectionError("the core closed the connection")
            for item in self.decoder.feed(self._rbuf[:n]):
                if isinstance(item, proto.ProtocolError):
                    if item.conv_id == conv:
                        raise OpError("internal", f"the core's reply could not be read: {item}")
                    continue
                type_, conv_id, payload = item
                if conv_id != conv:
                    continue  # a delivery or a reply to an abandoned request
                return type_, proto.unpack_payload(payload)
            wait = deadline - time.monotonic()  # more to read: only what is left of the wait
            if wait <= 0:
                raise TimeoutError


_fork_generation = 0  # bumped in a forked child: a thread's link from before the fork is not reused


def _after_fork() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork)


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


class CoreClient:
    """Calls operations in the core: `call(action, args)` -> result dict, or raises OpError."""

    def __init__(self, core_sock: Path | str, connect_wait_ms: int = 2000) -> None:
        self.path = Path(core_sock)
        self.connect_wait_s = max(0, connect_wait_ms) / 1000.0
        self._local = threading.local()

    def _link(self) -> CoreLink:
        local = self._local
        link = getattr(local, "link", None)
        if link is None or local.generation != _fork_generation:  # never reuse a socket across fork
            link = local.link = CoreLink(self.path, self.connect_wait_s)
            local.generation = _fork_generation
        return link

    def call(self, action: str, args: dict[str, Any], *, idempotent: bool = False,
             timeout_s: float | None = None) -> dict:
        """Run one operation in the core and return its result."""
        payload = dict(args)
        payload["action"] = action
        try:
            body = proto.pack_payload(payload)
        except (OverflowError, UnicodeEncodeError, ValueError, TypeError) as exc:
            raise unframeable(args, exc) from None
        wait = reply_timeout(args) if timeout_s is None else timeout_s
        type_, reply = self._link().request(body, wait, retry_after_send=idempotent)
        return result_of(type_, reply)

    def close(self) -> None:
        link = getattr(self._local, "link", None)
        if link is not None:
            link.close()

    def stream(self) -> CoreStream:
        """A new connection of its own, for one event stream."""
        return CoreStream(self.path, self.connect_wait_s)


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


class CoreStream:
    """A connection of its own that subscribes to channels and yields deliveries."""

    def __init__(self, path: Path, connect_wait_s: float) -> None:
        self.path = path
        self.sock = _connect(path, connect_wait_s)
        self.decoder = proto.FrameDecoder(_MAX_REPLY)
        self.pending: list[dict] = []

    def subscribe(self, channels: list[str], timeout_s: float = DEFAULT_REPLY_TIMEOUT_S) -> dict:
        """Send SUBSCRIBE and wait for its AGREE; a refusal raises OpError."""
        try:
            self.sock.settimeout(timeout_s)
            self.sock.sendall(proto.encode(proto.SUBSCRIBE, 1, {"channels": channels}))
        except OSError as exc:
            self.close()
            raise core_unavailable(self.path, f"send failed: {exc}") from None
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                answer: tuple[int, dict] | None = None
                for type_, conv_id, payload in self._frames(deadline - time.monotonic()):
                    if conv_id == 1 and answer is None:
                        answer = (type_, payload)
                    elif type_ == proto.INFORM and payload.get("action") in _STREAM_INFORMS:
                        self.pending.append(payload)  # may arrive in the same read as the AGREE
                if answer is not None:
                    return answer[1] if answer[0] == proto.AGREE else result_of(*answer)
        except TimeoutError:
            self.close()
            raise OpError("unavailable", f"the Port Daddy core did not answer a subscribe within {timeout_s:g} s") from None
        except OSError as exc:
            self.close()
            raise core_unavailable(self.path, f"connection lost: {exc}") from None

    def next_delivery(self, timeout_s: float) -> dict | None:
        """The next delivery (or `msg.dropped` notice), or None when `timeout_s` passes without one."""
        if self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                frames = self._frames(left)
            except TimeoutError:
                return None
            for type_, _conv, payload in frames:
                if type_ == proto.INFORM and payload.get("action") in _STREAM_INFORMS:
                    self.pending.append(payload)
            if self.pending:
                return self.pending.pop(0)

    def _frames(self, timeout_s: float) -> list[tuple[int, int, dict]]:
        if timeout_s <= 0:
            raise TimeoutError
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(_RECV)
        if not data:
            raise ConnectionError("the core closed the connection")
        out = []
        for item in self.decoder.feed(data):
            if isinstance(item, proto.ProtocolError):
                continue
            type_, conv_id, body = item
            try:
                out.append((type_, conv_id, proto.unpack_payload(body)))
            except proto.ProtocolError:
                continue
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
