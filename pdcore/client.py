"""The Python SDK: a sync `Client` and an asyncio `AsyncClient` with the same methods.

Both sit on one `call(action, **args)`; every catalogue operation also has a method of its own
(`port.claim` -> `client.port_claim(id=...)`), generated from the catalogue so the SDK can never
name an operation the daemon lacks. Transport: the binary IPC socket (`daemon.ipc`) when it
exists, else HTTP over `daemon.sock`, else HTTP over TCP with the home's token
(`PORT_DADDY_TOKEN`, else `auth.token`; see docs/security.md). When the IPC connection cannot be
made or the daemon turns it away (its connection caps), the call goes over HTTP instead, and
an error says what happened to both only when HTTP fails too. Operations that may be sent
fire-and-forget (heartbeat, publish, pheromone spray) are sent that way over IPC by their
generated methods unless `_reply=True` is given.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import select
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdcore import protocol as P
from pdcore.auth import AUTH_REALM, client_token
from pdcore.config import HOME_HEADER, Config, home_tag, load_config
from pdcore.errors import OpError
from pdcore.ops import CATALOGUE, Op
from pdcore.shm import ShmFirst

if TYPE_CHECKING:
    import http.client

DOWN_MESSAGE = "the Port Daddy daemon is not running; start it with `pd start`"
LOST_MESSAGE = ("the connection to the daemon was lost before it answered; the operation may or may not have "
                "been applied")
TAKE_RETRY_DELAY_MAX_S = 1.0  # the longest pause between repeats of a take whose reply was lost
# Codes of the REFUSE (conv_id 0) with which the daemon turns a new IPC connection away before
# reading anything from it (docs/protocol.md, connection rules).
CONNECTION_REFUSALS = frozenset({"too_many_connections", "forbidden"})
IPC_REFUSED_HTTP_S = 5.0  # after a refusal, a client uses HTTP this long before it tries IPC again
_conv_ids = itertools.count(1)


def new_request_id() -> str:
    """A fresh id for one take (128 random bits, hex)."""
    return os.urandom(16).hex()


def reply_lost() -> OpError:
    """The error of a call sent whose reply never came: a take is repeated after it (see Client._take)."""
    return OpError("unavailable", LOST_MESSAGE, replyLost=True)


class IpcUnavailable(OpError):
    """No IPC connection: it could not be made, or the daemon refused it as it opened. Nothing
    sent on it was read, so the call is safe to make again over HTTP (unlike a lost reply)."""


def refusal_of(type_: int, conv_id: int, payload: dict) -> IpcUnavailable | None:
    """The daemon's refusal of the connection itself, if this frame is one."""
    if conv_id == 0 and type_ == P.REFUSE and payload.get("code") in CONNECTION_REFUSALS:
        err = OpError.from_dict(payload)
        return IpcUnavailable(err.code, err.message, **err.extra)
    return None


def over_http_after(ipc_error: IpcUnavailable, op: Op, args: dict, config: Config, timeout: float) -> Any:
    """Make the call over HTTP because IPC failed; when HTTP fails as well, say what both did."""
    try:
        return http_request(op, args, config, timeout)
    except OpError as err:
        if err.code != "unavailable":
            raise  # the daemon answered over HTTP: its answer stands
        if ipc_error.code == "unavailable":
            raise  # neither socket answers: the daemon is down, as HTTP says
        raise OpError("unavailable", f"the daemon refused the IPC connection ({ipc_error.message}) and HTTP "
                                     f"failed too: {err.message}", refused=ipc_error.code, **ipc_error.extra) from None


def _next_conv() -> int:
    return next(_conv_ids) % P.MAX_CONV_ID or 1


def _reply_value(type_: int, payload: dict) -> Any:
    if type_ == P.INFORM_DONE:
        return payload.get("result")
    if type_ in (P.REFUSE, P.FAILURE):
        raise OpError.from_dict(payload)
    if type_ == P.NOT_UNDERSTOOD:
        raise OpError("not_understood", payload.get("error", "the daemon did not understand the frame"))
    if type_ == P.AGREE:
        return payload
    raise OpError("internal", f"unexpected reply frame type 0x{type_:02x}")


# -- HTTP fallback ---------------------------------------------------------------------------
# http.client (with email, ssl, ...) is imported only when a call goes over HTTP: most `pd`
# commands go over IPC, and those imports would be a large part of their start-up.
@functools.cache
def _unix_http_connection() -> type[http.client.HTTPConnection]:
    """The class of HTTP connections over a Unix socket (made on first use)."""
    import http.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        def __init__(self, path: str, timeout: float) -> None:
            super().__init__("localhost", timeout=timeout)
            self._path = path

        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(self._path)
            self.sock = sock

    return UnixHTTPConnection


def auth_headers(config: Config) -> dict[str, str]:
    """The Authorization header a TCP request of this home carries (none when no token is at hand)."""
    token = client_token(config.token_path)
    return {"Authorization": f"Bearer {token}"} if token else {}


def served_home(port: int, conn: http.client.HTTPConnection | None = None, timeout: float = 2.0,
                headers: dict[str, str] | None = None) -> str | None:
    """The home tag (config.home_tag) the daemon on 127.0.0.1:`port` names with HEAD /health
    (to a caller with its token: `headers`); "" when a daemon answers 401 (it does not take this
    token: another home's, or a rotated token); None when nothing answers or no home is named.
    Uses `conn` (kept open) when given."""
    import http.client

    own = conn is None
    link = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout) if conn is None else conn
    # Without a token, a token that cannot match: a Port Daddy daemon still shows itself by refusing it.
    headers = headers or {"Authorization": "Bearer -"}
    try:
        link.request("HEAD", "/health", headers=headers)
        resp = link.getresponse()
        resp.read()
        if resp.status == 401:
            return "" if AUTH_REALM in (resp.getheader("WWW-Authenticate") or "") else None
        return resp.getheader(HOME_HEADER)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        if own:
            link.close()


def _check_tcp_daemon_home(conn: http.client.HTTPConnection, config: Config, headers: dict[str, str]) -> None:
    """Before a call over TCP, make sure the daemon on the port serves this home.

    TCP is the last fallback, used when this home has no sockets, which is also what a home
    whose daemon is not running looks like: the port may then belong to another home's daemon,
    and a claim or a note sent there would land in the wrong state. One HEAD /health on the
    call's own keep-alive connection asks it (a failure here fails the call itself next)."""
    served = served_home(config.tcp_port, conn, headers=headers)
    if served == "":
        conn.close()
        raise OpError("unavailable", f"the daemon on 127.0.0.1:{config.tcp_port} refused this home's token "
                                     f"({config.token_path}, or PORT_DADDY_TOKEN): either it serves another home "
                                     f"and this one ({config.home}) has no daemon running (start it with pd start "
                                     "on a free port: PORT_DADDY_PORT), or the token was rotated (`pd token` "
                                     "prints the current one)")
    if served is not None and served != home_tag(config.home):
        conn.close()
        raise OpError("unavailable", f"this home ({config.home}) has no daemon running; the one on "
                                     f"127.0.0.1:{config.tcp_port} serves another home. Start this one with "
                                     "pd start on a free port (PORT_DADDY_PORT)")


def http_request(op: Op, args: dict, config: Config, timeout: float) -> dict:
    """Call `op` over HTTP (Unix socket if present, else TCP) using its first route."""
    import http.client

    route = op.routes[0]
    path = route.path
    rest = dict(args)
    for arg in op.args:
        token = "{" + arg.name + "}"
        if token in path:
            if arg.name not in rest:
                raise OpError("missing_field", f"{arg.name} is required", arg.name)
            path = path.replace(token, urllib.parse.quote(str(rest.pop(arg.name)), safe=""))
    body = None
    if route.method in ("GET", "HEAD"):
        query = {k: (json.dumps(v) if isinstance(v, (dict, list, bool)) else str(v)) for k, v in rest.items()
                 if v is not None}
        if query:
            path += "?" + urllib.parse.urlencode(query)
    else:
        body = json.dumps({k: v for k, v in rest.items() if v is not None})
    headers = {"Content-Type": "application/json"}
    if Path(config.sock).exists():
        conn: http.client.HTTPConnection = _unix_http_connection()(str(config.sock), timeout)
    elif not config.no_tcp:
        conn = http.client.HTTPConnection("127.0.0.1", config.tcp_port, timeout=timeout)
        token = auth_headers(config)
        _check_tcp_daemon_home(conn, config, token)
        headers.update(token)
    else:
        raise OpError("unavailable", DOWN_MESSAGE)
    try:
        try:
            conn.request(route.method, path, body=body, headers=headers)
        except (OSError, http.client.HTTPException):
            raise OpError("unavailable", DOWN_MESSAGE) from None
        try:
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError):
            raise reply_lost() from None  # sent: it may have been applied (a take is repeated by its id)
    finally:
        conn.close()
    if not data.get("success", resp.status < 400):
        raise OpError.from_dict(data)
    data.pop("success", None)
    return data


class FramePacer:
    """Keeps one IPC connection under the daemon's frame rate (`ipc_rate_limit` per public
    connection), so nothing it sends is refused or, fire-and-forget, dropped for the rate:
    past the burst the caller waits instead. The same bucket as the core's (capacity = refill
    per second = the rate), at 95% of it for the slack between sending and arrival."""

    __slots__ = ("rate", "tokens", "at")

    def __init__(self, rate: float) -> None:
        self.rate = max(0.0, float(rate)) * 0.95
        self.tokens = self.rate
        self.at = time.monotonic()

    def delay(self) -> float:
        """Take a token for one frame; return the seconds to wait before sending it."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate) - 1.0
        self.at = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


# -- the sync client -------------------------------------------------------------------------
class Client:
    """A synchronous client; one per thread. `call()` raises OpError on refusal or failure.

    A take (an op marked `takes`: tuple.in, salvage.claim) gets a fresh `requestId` unless the
    caller gives one; when its reply is lost it reconnects and repeats the take with that id until
    the call's timeout, and the daemon answers the repeat with the first result. Set
    `retry_takes = False` on a client to send takes without an id and get the lost reply as an error.
    """

    retry_takes = True

    def __init__(self, config: Config | None = None, home: str | None = None, timeout: float = 30.0,
                 transport: str = "auto", connect_retry_s: float = 3.0) -> None:
        self.config = config or load_config(home)
        self.timeout = timeout
        self.transport = transport  # auto | ipc | http
        self.connect_retry_s = connect_retry_s
        self._sock: socket.socket | None = None
        self._decoder = P.FrameDecoder(1 << 30)
        self._shm = ShmFirst(self.config.shm_path) if self.config.shm_enabled and transport != "http" else None
        self._pacer = FramePacer(self.config.ipc_rate_limit)
        self._http_until = 0.0  # monotonic time until which calls go over HTTP (IPC was refused)

    # -- connection --
    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        deadline = time.monotonic() + self.connect_retry_s
        delay = 0.02
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(str(self.config.ipc))
            except OSError:
                s.close()
                if time.monotonic() + delay > deadline:
                    raise IpcUnavailable("unavailable", DOWN_MESSAGE) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            self._sock = s
            self._decoder = P.FrameDecoder(1 << 30)
            return s

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _use_ipc(self) -> bool:
        if self.transport == "ipc":
            return True
        if self.transport == "http":
            return False
        if self._http_until:
            if time.monotonic() < self._http_until:
                return False
            self._http_until = 0.0
        return self._sock is not None or Path(self.config.ipc).exists()

    def _ipc_failed(self, err: IpcUnavailable) -> None:
        """IPC is out of reach: raise when it is the only transport allowed, else go over HTTP."""
        self.close()
        if self.transport == "ipc":
            raise err
        if err.code != "unavailable":
            self._http_until = time.monotonic() + IPC_REFUSED_HTTP_S

    # -- calls --
    def call(self, action: str, **args: Any) -> Any:
        """Run one operation and return its result dict."""
        op = CATALOGUE.get(action)
        if op is None:
            raise OpError("unknown_action", f"unknown action {action!r}", "action")
        args = {k: v for k, v in args.items() if v is not None}
        if op.takes and self.retry_takes:
            return self._take(op, args)
        return self._call(op, args)

    def _take(self, op: Op, args: dict) -> Any:
        """Run a take with a request id, repeating it with the same id after a lost reply."""
        args.setdefault("requestId", new_request_id())
        deadline = None  # the repeats get the call's timeout, counted from the first lost reply
        delay = 0.05
        while True:
            try:
                return self._call(op, args)
            except OpError as err:
                if deadline is None and err.extra.get("replyLost"):
                    deadline = time.monotonic() + self._timeout_for(args)
                if err.code != "unavailable" or deadline is None or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, TAKE_RETRY_DELAY_MAX_S)

    def _call(self, op: Op, args: dict) -> Any:
        """Send one operation once (shared memory, IPC or HTTP) and return its result."""
        action = op.name
        if self._shm is not None:
            result = self._shm.try_call(action, args)
            if result is not None:
                return result
        if not self._use_ipc():
            return http_request(op, args, self.config, self._timeout_for(args))
        payload = {"action": action, **args}
        conv = _next_conv()
        frame = P.encode(P.REQUEST, conv, payload)
        try:
            sock = self._send(frame)
            sock.settimeout(self._timeout_for(args))
            try:
                return self._await_reply(sock, conv)
            except OSError:
                self.close()
                raise reply_lost() from None
        except IpcUnavailable as err:
            self._ipc_failed(err)
            return over_http_after(err, op, args, self.config, self._timeout_for(args))

    def fire(self, action: str, **args: Any) -> None:
        """Send a fire-and-forget operation (no reply, even on error) over IPC."""
        op = CATALOGUE.get(action)
        if op is None or not op.fire_and_forget:
            raise OpError("fire_and_forget_not_allowed", f"{action} cannot be sent fire-and-forget", "action")
        args = {k: v for k, v in args.items() if v is not None}
        if not self._use_ipc():
            http_request(op, args, self.config, self.timeout)
            return
        try:
            if self._sock is not None:
                self._check_refused(self._sock)
            self._send(P.encode(P.REQUEST, 0, {"action": action, **args}))
        except IpcUnavailable as err:
            self._ipc_failed(err)
            over_http_after(err, op, args, self.config, self.timeout)

    def _send(self, frame: bytes) -> socket.socket:
        wait = self._pacer.delay()
        if wait:
            time.sleep(wait)
        for attempt in (0, 1):
            sock = self._connect()
            try:
                sock.sendall(frame)
                return sock
            except OSError:
                self._check_refused(sock)  # the daemon may have refused it and closed it already
                self.close()
                if attempt:
                    raise IpcUnavailable("unavailable", DOWN_MESSAGE) from None
        raise AssertionError("unreachable")

    def _check_refused(self, sock: socket.socket) -> None:
        """Read what the daemon has sent without waiting; raise if it refused the connection.

        A caller that only fires (and never reads replies) learns this way that its connection
        was turned away; other frames waiting there are replies nobody waits for any more."""
        readable = select.poll()
        readable.register(sock, select.POLLIN)
        while True:
            try:
                if not readable.poll(0):
                    return
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.close()
                return  # closed by the daemon: the next send opens a new connection
            for item in self._decoder.feed(data):
                if not isinstance(item, P.ProtocolError):
                    refused = refusal_of(item[0], item[1], P.unpack_payload(item[2]))
                    if refused is not None:
                        raise refused

    def _timeout_for(self, args: dict) -> float:
        wait = max((v for k, v in args.items() if k in ("wait", "timeout") and isinstance(v, (int, float))),
                   default=0)
        return self.timeout + wait / 1000.0

    def _await_reply(self, sock: socket.socket, conv: int) -> Any:
        while True:
            data = sock.recv(262144)
            if not data:
                raise ConnectionResetError("daemon closed the connection")
            for item in self._decoder.feed(data):
                if isinstance(item, P.ProtocolError):
                    raise OpError("internal", f"bad frame from the daemon: {item}")
                type_, conv_id, body = item
                if conv_id != conv:
                    refused = refusal_of(type_, conv_id, P.unpack_payload(body)) if not conv_id else None
                    if refused is not None:
                        raise refused  # the connection was turned away: the request was never read
                    continue
                return _reply_value(type_, P.unpack_payload(body))

    def subscribe(self, *patterns: str, reconnect: bool = True) -> Subscription:
        """Subscribe to channels or patterns (`myapp:*`); iterate the returned object for messages."""
        return Subscription(self.config, list(patterns), reconnect=reconnect)


class Subscription:
    """Messages of subscribed channels, on a connection of its own.

    Reconnects with backoff when the daemon goes away and replays the subscriptions, so a
    watcher survives a daemon restart. Iterating yields delivery dicts
    (`{"id", "channel", "message", "sender", "ts"}`); `next_message(timeout)` returns None on
    timeout. A reader too slow for the daemon's `subscriber_queue_max` loses deliveries; the
    daemon says so before the next one, and `dropped` counts them (a warning is logged too;
    `msg.history` still holds what each channel keeps).
    """

    def __init__(self, config: Config, patterns: list[str], reconnect: bool = True) -> None:
        if not patterns:
            raise OpError("invalid_argument", "subscribe needs at least one channel or pattern", "channels")
        self.config = config
        self.patterns = patterns
        self.reconnect = reconnect
        self._sock: socket.socket | None = None
        self._decoder = P.FrameDecoder(1 << 30)
        self._pending: list[dict] = []
        self.reconnects = 0
        self.dropped = 0  # deliveries the daemon dropped because this reader fell behind
        self._open(initial=True)

    def _open(self, initial: bool = False) -> None:
        delay = 0.05
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(10)
                s.connect(str(self.config.ipc))
                conv = _next_conv()
                s.sendall(P.encode(P.SUBSCRIBE, conv, {"channels": self.patterns}))
                self._sock, self._decoder = s, P.FrameDecoder(1 << 30)
                self._read_until_agree(conv)
                return
            except IpcUnavailable:
                s.close()
                self._sock = None
                if initial:
                    raise  # the daemon refused the connection (its caps): say so now
            except (OSError, ConnectionError):
                s.close()
                self._sock = None
                if initial and not self.reconnect:
                    raise OpError("unavailable", DOWN_MESSAGE) from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            initial = False

    def _read_until_agree(self, conv: int) -> None:
        """Read until the daemon agrees to the subscription, keeping deliveries that come first."""
        assert self._sock is not None
        while True:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionResetError("closed")
            agreed = False
            for item in self._decoder.feed(data):
                if isinstance(item, P.ProtocolError):
                    continue
                type_, conv_id, body = item
                payload = P.unpack_payload(body)
                refused = None if conv_id else refusal_of(type_, conv_id, payload)
                if refused is not None:
                    raise refused
                if conv_id == conv:
                    _reply_value(type_, payload)
                    agreed = True
                elif type_ == P.INFORM:
                    self._inform(payload)
            if agreed:
                return

    def next_message(self, timeout: float | None = None) -> dict | None:
        """The next delivery, or None when `timeout` seconds pass without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._pending:
            if self._sock is None:
                if not self.reconnect:
                    raise OpError("unavailable", DOWN_MESSAGE)
                self._open()
                self.reconnects += 1
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._sock.settimeout(remaining if remaining is not None else 30.0)
            try:
                data = self._sock.recv(262144)
            except TimeoutError:
                if deadline is None:
                    continue
                return None
            except OSError:
                data = b""
            if not data:
                self._sock.close()
                self._sock = None
                continue
            for item in self._decoder.feed(data):
                if isinstance(item, P.ProtocolError):
                    continue
                type_, _conv, body = item
                payload = P.unpack_payload(body)
                if type_ == P.INFORM:
                    self._inform(payload)
        return self._pending.pop(0)

    def _inform(self, payload: dict) -> None:
        action = payload.pop("action", None)
        if action == "msg.delivery":
            self._pending.append(payload)
        elif action == "msg.dropped":
            count = payload.get("count") or 0
            self.dropped += count
            import logging  # here, not at import: `pd` start-up does not need it

            logging.getLogger("pdcore.client").warning(
                "subscriber fell behind: the daemon dropped %s deliveries on %s (channel history still "
                "holds them: pd channel history NAME --after ID)", count,
                ", ".join(payload.get("channels") or []) or "its channels")

    def __iter__(self) -> Iterator[dict]:
        while True:
            msg = self.next_message()
            if msg is not None:
                yield msg

    def close(self) -> None:
        self.reconnect = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- generated methods -----------------------------------------------------------------------
def _make_sync(op: Op):
    name = op.name
    if op.fire_and_forget:
        def method(self: Client, _reply: bool = False, **args: Any) -> Any:
            if _reply or not self._use_ipc():
                return self.call(name, **args)
            return self.fire(name, **args)
    else:
        def method(self: Client, **args: Any) -> Any:
            return self.call(name, **args)
    method.__name__ = op.method_name
    method.__doc__ = f"{op.summary}\n\nOperation `{name}`; arguments: {', '.join(a.name for a in op.args) or 'none'}."
    return method


for _op in CATALOGUE.values():
    setattr(Client, _op.method_name, _make_sync(_op))


def __getattr__(name: str) -> Any:
    """`AsyncClient` lives in pdcore.aclient; it is loaded on first use so the CLI never imports asyncio."""
    if name == "AsyncClient":
        from pdcore.aclient import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
