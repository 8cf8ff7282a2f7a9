"""The home token: the secret a caller on the TCP port must present.

`auth.token` in the home holds a random URL-safe string (0600, created once with O_EXCL by
the supervisor before HTTP starts). A TCP client sends it as `Authorization: Bearer <token>`;
`PORT_DADDY_TOKEN` in a client's environment overrides the file (a container that shares the
loopback but not the home). The browser dashboard gets a cookie instead, whose value is an
HMAC of the token, so rotating the token invalidates the cookie as well.

`rotate_token` replaces the file atomically; the HTTP workers (`TokenKeys`) notice the new
file without a restart. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path

from pdcore.privatefile import PrivateFileError, read_private

TOKEN_ENV = "PORT_DADDY_TOKEN"
AUTH_REALM = 'realm="port-daddy"'  # in the WWW-Authenticate header of every 401
TOKEN_BYTES = 32  # of randomness; secrets.token_urlsafe makes 43 characters of them
COOKIE_PREFIX = "pd_dashboard_"  # + the TCP port: cookies are shared by every port of a host
_COOKIE_LABEL = b"pd-dashboard-cookie-v1"


class TokenError(RuntimeError):
    """The token file cannot be used; the message says what is wrong and what to do."""


def read_token(path: Path) -> str:
    """The token in `path`, refusing a file that is not ours, not private or empty (TokenError)."""
    try:
        data = read_private(path, "token file", 4096,
                            after_chmod="then `pd token rotate`: others may have read it")
    except FileNotFoundError:
        raise TokenError(f"token file {path} is missing; `pd start` creates it") from None
    except PrivateFileError as exc:
        raise TokenError(str(exc)) from None
    token = data.decode("ascii", "replace").strip()
    if not token:
        raise TokenError(f"token file {path} is empty; run `pd token rotate` to make a new token")
    return token


def ensure_token(path: Path) -> str:
    """The token at `path`, created (0600, O_EXCL) when there is none yet."""
    import secrets  # here: clients import this module, and only the daemon makes tokens

    path = Path(path)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        _write_new(path, token)
    except FileExistsError:
        return read_token(path)
    return token


def rotate_token(path: Path) -> str:
    """Write a new token to `path` (atomically: a reader sees the old file or the new one)."""
    import secrets

    path = Path(path)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_new(tmp, token)
    os.replace(tmp, path)
    return token


def _write_new(path: Path, token: str) -> None:
    """Create `path` holding `token`: never an existing file or a symlink (O_EXCL), 0600, on disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def client_token(path: Path) -> str | None:
    """The token a client sends: `PORT_DADDY_TOKEN`, else the home's file; None when neither is readable."""
    given = os.environ.get(TOKEN_ENV)
    if given:
        return given.strip()
    try:
        return read_token(path)
    except TokenError:
        return None


def cookie_value(token: str) -> str:
    """The dashboard cookie's value for `token` (an HMAC: the cookie never carries the token)."""
    return hmac.new(token.encode(), _COOKIE_LABEL, hashlib.sha256).hexdigest()


def cookie_name(tcp_port: int) -> str:
    return f"{COOKIE_PREFIX}{tcp_port}"


class TokenKeys:
    """A worker's view of the token file: the expected `Authorization` and cookie values.

    Checking costs a comparison; the file is looked at (one `stat`) at most every `recheck_s`
    while presented tokens match, and at once when one does not (it may be a newer token). So
    after `pd token rotate` the new token works at once and the old one stops within
    `recheck_s`. A missing or unusable file accepts nothing (`problem` says why).
    """

    def __init__(self, path: Path, recheck_s: float = 1.0) -> None:
        self.path = Path(path)
        self.recheck_s = recheck_s
        self.problem: str | None = None
        self._bearer = b""
        self._header = b""  # b"Bearer " + token: what clients send, compared first
        self._cookie = b""
        self._signature: tuple | None = None
        self._checked_at = float("-inf")
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when it did."""
        self._checked_at = time.monotonic()
        try:
            info = os.stat(self.path)
            signature = (info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode)
        except OSError:
            signature = None
        if signature == self._signature and signature is not None:
            return False
        self._signature = signature
        try:
            token = read_token(self.path)
        except TokenError as exc:
            self.problem, self._bearer, self._header, self._cookie = str(exc), b"", b"", b""
            return True
        self.problem = None
        self._bearer = token.encode()
        self._header = b"Bearer " + self._bearer
        self._cookie = cookie_value(token).encode()
        return True

    def _matches(self, presented: str, attr: str) -> bool:
        if time.monotonic() - self._checked_at > self.recheck_s:
            self.refresh()
        value = presented.encode("latin-1", "replace")
        expected = getattr(self, attr)
        if expected and hmac.compare_digest(value, expected):
            return True
        return self.refresh() and bool(getattr(self, attr)) and hmac.compare_digest(value, getattr(self, attr))

    def accepts_authorization(self, header: str) -> bool:
        """True for `Bearer <the current token>` (the scheme's case does not matter)."""
        if (self._header and time.monotonic() - self._checked_at <= self.recheck_s
                and hmac.compare_digest(header.encode("latin-1", "replace"), self._header)):
            return True  # the usual case, in a few hundred nanoseconds
        scheme, _, token = header.strip().partition(" ")
        return scheme.lower() == "bearer" and self._matches(token.strip(), "_bearer")

    def current_cookie(self) -> str | None:
        """The dashboard cookie's value for the token in the file now (None when it is unusable)."""
        self.refresh()
        return self._cookie.decode() if self._cookie else None

    def accepts_cookie(self, value: str) -> bool:
        """True for the current dashboard cookie value."""
        return self._matches(value, "_cookie")
