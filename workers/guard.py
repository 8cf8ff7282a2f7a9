"""The front gate of every HTTP request: where it came from, who sent it, how big it is.

- Who (docs/security.md): over the Unix socket the peer's uid (SO_PEERCRED) must be the
  daemon's, else 403 `forbidden`; over TCP the request must carry the home's token
  (`Authorization: Bearer`) or the dashboard cookie, else 401 `unauthorized` naming the token
  file. Only `GET`/`HEAD /health` (answered here with a bare "ok", nothing about the home) and
  the dashboard link's redemption pass without. `admit` is that policy as a plain function of
  the request's facts, apart from the server's request objects. Operations that run commands
  (`Op.runs_commands`) are refused again to any caller `admit` let in unauthenticated.
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
  The server decodes the path before routing, so the gate re-splits the raw path and keeps
  such a slash escaped for the router; `unescape_param` restores it.

The gate runs on every request, so its answers for a Host or Origin value are remembered
(clients send the same one or two values every time); the memory is bounded and forgets
everything when full, so a client sending ever-new values costs the full check, no more.
The peer's uid is asked of the kernel once per connection, by the server when it accepts it
(workers.server.DoorProtocol), and handed over in the ASGI scope (`UNIX_PEER_UID`); the token
is compared in constant time against a copy re-read only when the file changes
(`pdcore.auth.TokenKeys`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import falcon
from falcon.asgi import Request, Response

from pdcore.auth import TokenKeys, cookie_name
from pdcore.config import HOME_HEADER, home_tag
from pdcore.errors import OpError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SLASH = "%2F"
_CACHE_MAX = 256  # distinct Host / Origin values remembered per worker process
OWN_UID = os.getuid()
HEALTH_PATH = "/health"
TICKET_PATH = "/auth/dashboard"  # where a `pd dashboard` link lands; the ticket is its credential
READ_METHODS = frozenset({"GET", "HEAD"})
HEALTH_ANONYMOUS = b'{"success":true,"status":"ok"}'

# Who a caller is, as `admit` tells it (kept on req.context.caller).
OWNER = "owner"  # a process of the daemon's uid, over the Unix socket
TOKEN = "token"  # presented the home's token
COOKIE = "cookie"  # the dashboard cookie (a browser that followed a `pd dashboard` link)
ANONYMOUS = ""  # nothing: only /health and the ticket route get this far


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


# Keys the server (workers.server.DoorProtocol) puts in every request's ASGI scope.
UNIX_PEER_UID = "pd.unix_peer_uid"  # only on daemon.sock connections: the peer's uid (SO_PEERCRED), or None
CLIENT_GONE = "pd.client_gone"  # a future done once the client's connection is closed


def over_unix_socket(scope: dict) -> bool:
    """True when the request arrived on daemon.sock rather than over TCP.

    Without the server's word (a scope from elsewhere) we cannot know: assume TCP, so the checks apply."""
    return UNIX_PEER_UID in scope


def _unauthorized(keys: TokenKeys, wrong: bool) -> OpError:
    what = ("the token in Authorization is not this daemon's (was it rotated? `pd token` prints the current one)"
            if wrong else "this request needs the daemon's token")
    return OpError("unauthorized", f"{what}; the token is in {keys.path}: send it as `Authorization: Bearer <token>` "
                                   "(e.g. curl -H \"Authorization: Bearer $(pd token)\"); the browser dashboard "
                                   "opens with `pd dashboard`", "Authorization")


def _cookie(header: str, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header, or None."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


def admit(*, over_unix: bool, peer_uid: int | None, authorization: str | None, cookies: str | None,
          method: str, path: str, keys: TokenKeys, cookie: str) -> str:
    """Who the caller is (OWNER, TOKEN, COOKIE, or ANONYMOUS where that is allowed); raises
    OpError `forbidden` (Unix peer of another uid) or `unauthorized` (TCP without the token).

    `cookie` is the dashboard cookie's name; `cookies` the request's Cookie header."""
    if over_unix:
        if peer_uid == OWN_UID:
            return OWNER
        raise OpError("forbidden", f"this socket serves only its owner (uid {OWN_UID}); the connecting process "
                                   f"runs as uid {peer_uid}", "peer")
    if authorization is not None:
        if keys.accepts_authorization(authorization):
            return TOKEN
        raise _unauthorized(keys, wrong=True)
    if cookies:
        value = _cookie(cookies, cookie)
        if value and keys.accepts_cookie(value):
            return COOKIE
    if method in READ_METHODS and (path == HEALTH_PATH or path == TICKET_PATH):
        return ANONYMOUS
    raise _unauthorized(keys, wrong=False)


def refuse_unauthenticated(caller: str, what: str) -> None:
    """Operations that run commands are never served to an unauthenticated caller, whatever the door."""
    if caller == ANONYMOUS:
        raise OpError("unauthorized", f"{what} runs commands as the daemon's owner; it needs the daemon's token "
                                      "(Authorization: Bearer, see `pd token`) or the owner's Unix socket",
                      "Authorization")


def unescape_param(value: str) -> str:
    """Undo the escaping `Gate` applies to a slash inside a path segment."""
    return value.replace(_SLASH, "/") if _SLASH in value else value


class Gate:
    """Falcon (ASGI) middleware that applies the checks above before routing."""

    def __init__(self, max_body: int, token_path: Path, tcp_port: int, home: str | None = None,
                 drain_max: int = 0) -> None:
        self.max_body = max_body
        self.drain_max = drain_max
        self.home_tag = home_tag(home) if home is not None else None
        self.keys = TokenKeys(token_path)
        self.cookie = cookie_name(tcp_port)

    async def process_response(self, req: Request, resp: Response, resource: object,
                               req_succeeded: bool) -> None:
        # Which home this daemon serves (a TCP client checks it); never told to an anonymous caller.
        if self.home_tag is not None and req.context.get("caller"):
            resp.set_header(HOME_HEADER, self.home_tag)

    async def process_request(self, req: Request, resp: Response) -> None:
        scope = req.scope
        unix = UNIX_PEER_UID in scope
        if not unix:
            host = req.get_header("Host")
            if host is not None and not loopback_host(host):
                raise OpError(
                    "bad_host",
                    f"Host header {host[:100]!r} is not a loopback name; use http://localhost or "
                    "http://127.0.0.1 (other names are refused to stop DNS rebinding)", "Host")
        caller = req.context.caller = admit(
            over_unix=unix, peer_uid=scope[UNIX_PEER_UID] if unix else None,
            authorization=req.get_header("Authorization"), cookies=req.get_header("Cookie"),
            method=req.method, path=req.path, keys=self.keys, cookie=self.cookie)
        if caller == ANONYMOUS and req.path == HEALTH_PATH:
            resp.content_type = falcon.MEDIA_JSON
            resp.data = HEALTH_ANONYMOUS
            resp.complete = True
            return
        origin = req.get_header("Origin")
        if origin is not None and req.method not in SAFE_METHODS and not loopback_origin(origin):
            raise OpError(
                "bad_origin",
                f"cross-origin {req.method} from {origin[:100]!r} is refused; only pages served from "
                "localhost may change state", "Origin")
        length = req.content_length
        if length is not None and length > self.max_body:
            if length <= self.drain_max:
                await req.stream.exhaust()
            raise OpError(
                "too_large",
                f"request body is {length} bytes; the limit is {self.max_body} (http_max_body)", "body")
        raw = scope.get("raw_path")
        if raw and b"%2f" in raw.lower():
            req.path = _escaped_path(raw.decode("latin-1"), req.path)


def _escaped_path(raw: str, fallback: str) -> str:
    path = raw.split("?", 1)[0]
    if not path.startswith("/"):  # absolute-form request target
        path = urlsplit(path).path or "/"
    segments = [unquote(s).replace("/", _SLASH) for s in path.split("/")]
    new = "/".join(segments)
    if len(new) > 1 and new.endswith("/"):
        new = new[:-1]
    return new or fallback
