"""The front gate of every HTTP request: where it came from, who sent it, how big it is.

- Host check (DNS rebinding): over TCP the Host header must name a loopback host
  (`localhost`, 127.0.0.0/8, `[::1]`); a page on evil.example whose name was re-pointed at
  127.0.0.1 is refused with 403 `bad_host`. Requests over the Unix socket are not checked:
  a browser cannot reach it.
- Origin check (cross-site writes): a request other than GET/HEAD/OPTIONS that carries an
  `Origin` header which is not a loopback origin is refused with 403 `bad_origin`, whatever
  the transport. Clients that are not browsers send no Origin and are not affected.
- Size: a body over `http_max_body` bytes is refused with 413 `too_large` without being parsed.
  Its bytes (up to `http_drain_max`) are read and dropped first: the server closes a keep-alive
  connection whose unread body it cannot drain, and a pooled client would then write its next
  request into a closed socket. Past `http_drain_max` the connection is closed after the 413.
- Encoded slashes: names may contain `/`; a client sends it as `%2F` inside one path segment.
  The WSGI server decodes the path before routing, so the gate re-splits the raw URI and
  keeps such a slash escaped for the router; `unescape_param` restores it.

The gate runs on every request, so its answers for a Host or Origin value are remembered
(clients send the same one or two values every time); the memory is bounded and forgets
everything when full, so a client sending ever-new values costs the full check, no more.
"""

from __future__ import annotations

import _socket
import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import falcon

from pdcore.config import HOME_HEADER, home_tag
from pdcore.errors import OpError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SLASH = "%2F"
_CACHE_MAX = 256  # distinct Host / Origin values remembered per worker process
_FAMILY = _socket.socket.family  # the C attribute: an int, without socket.socket's enum conversion


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, an address in 127.0.0.0/8 or ::1 (brackets and port allowed)."""
    host = host.strip().lower()
    if not host:
        return False
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        name = host[1:end]
        rest = host[end + 1:]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False
    else:
        name, sep, port = host.rpartition(":")
        if not sep:
            name = host
        elif not port.isdigit() or ":" in name:
            return False
    name = name.rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_origin(origin: str) -> bool:
    """True for an Origin such as `http://localhost:9876` or `http://127.0.0.1`."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and is_loopback_host(parts.netloc)


def _remembered(check: Callable[[str], bool]) -> Callable[[str], bool]:
    """`check` with its answers kept per value (bounded: cleared when `_CACHE_MAX` are kept)."""
    answers: dict[str, bool] = {}

    def cached(value: str) -> bool:
        answer = answers.get(value)
        if answer is None:
            answer = check(value)
            if len(answers) >= _CACHE_MAX:
                answers.clear()
            answers[value] = answer
        return answer

    return cached


loopback_host = _remembered(is_loopback_host)
loopback_origin = _remembered(is_loopback_origin)


def over_unix_socket(env: dict) -> bool:
    """True when the request arrived on daemon.sock rather than over TCP."""
    sock = env.get("gunicorn.socket")
    # Without the server's socket object we cannot know: assume TCP, so the checks apply.
    if sock is None:
        return False
    if isinstance(sock, _socket.socket):
        return _FAMILY.__get__(sock) == socket.AF_UNIX
    return getattr(sock, "family", None) == socket.AF_UNIX


def client_key(env: dict) -> str:
    """Who the client is, for per-client caps: its IP, or `unix` for the Unix socket."""
    return "unix" if over_unix_socket(env) else (env.get("REMOTE_ADDR") or "unknown")


def unescape_param(value: str) -> str:
    """Undo the escaping `Gate` applies to a slash inside a path segment."""
    return value.replace(_SLASH, "/") if _SLASH in value else value


class Gate:
    """Falcon middleware that applies the checks above before routing."""

    def __init__(self, max_body: int, home: str | None = None, drain_max: int = 0) -> None:
        self.max_body = max_body
        self.drain_max = drain_max
        self.home_tag = home_tag(home) if home is not None else None

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        if self.home_tag is not None:  # which home this daemon serves (a TCP client checks it)
            resp.set_header(HOME_HEADER, self.home_tag)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        env = req.env
        if not over_unix_socket(env):
            host = env.get("HTTP_HOST")
            if host is not None and not loopback_host(host):
                raise OpError(
                    "bad_host",
                    f"Host header {host[:100]!r} is not a loopback name; use http://localhost or "
                    "http://127.0.0.1 (other names are refused to stop DNS rebinding)", "Host")
        origin = env.get("HTTP_ORIGIN")
        if origin is not None and req.method not in SAFE_METHODS and not loopback_origin(origin):
            raise OpError(
                "bad_origin",
                f"cross-origin {req.method} from {origin[:100]!r} is refused; only pages served from "
                "localhost may change state", "Origin")
        length = req.content_length
        if length is not None and length > self.max_body:
            if length <= self.drain_max:
                drain(req.stream, length)
            raise OpError(
                "too_large",
                f"request body is {length} bytes; the limit is {self.max_body} (http_max_body)", "body")
        raw = env.get("RAW_URI") or env.get("REQUEST_URI")
        if raw and "%2f" in raw.lower():
            req.path = _escaped_path(raw, req.path)


DRAIN_CHUNK = 64 * 1024


def drain(stream: Any, length: int) -> None:
    """Read and drop `length` bytes of a request body (the input ends at Content-Length)."""
    while length > 0:
        chunk = stream.read(min(DRAIN_CHUNK, length))
        if not chunk:
            return
        length -= len(chunk)


def _escaped_path(raw: str, fallback: str) -> str:
    path = raw.split("?", 1)[0]
    if not path.startswith("/"):  # absolute-form request target
        path = urlsplit(path).path or "/"
    segments = [unquote(s).replace("/", _SLASH) for s in path.split("/")]
    new = "/".join(segments)
    if len(new) > 1 and new.endswith("/"):
        new = new[:-1]
    return new or fallback
