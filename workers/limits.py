"""Per-worker caps on the requests that stay open: event streams and parked calls.

A worker serves every request as a coroutine on one event loop, so an open stream or a parked
call (a lock wait, a long-poll, a blocking take) costs memory and, for a stream, a core
connection, but holds nothing another request needs. The caps bound that memory:
`http_max_streams` event streams and `http_max_parked` parked calls per worker process. Past
either, the request gets 429 `rate_limited` naming the setting, with `Retry-After`. (The third
cap, `http_max_connections`, is applied where connections are accepted: workers/server.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pdcore.errors import OpError


class Cap:
    """A count of open things of one kind in this worker, refused past `limit`."""

    def __init__(self, limit: int, setting: str, what: str) -> None:
        self.limit = max(1, limit)
        self.setting = setting
        self.what = what
        self.open = 0

    def take(self, request: str) -> None:
        """Count one more, or refuse with 429 naming the setting."""
        if self.open >= self.limit:
            raise OpError("rate_limited",
                          f"{request}: this HTTP worker already holds {self.open} {self.what} "
                          f"({self.setting}={self.limit}); retry shortly, or use the IPC socket",
                          retryAfter=1, limit=self.setting)
        self.open += 1

    def give_back(self) -> None:
        self.open = max(0, self.open - 1)

    @contextmanager
    def held(self, request: str) -> Iterator[None]:
        self.take(request)
        try:
            yield
        finally:
            self.give_back()


class Limits:
    """The caps of one worker process."""

    def __init__(self, max_streams: int, max_parked: int) -> None:
        self.streams = Cap(max_streams, "http_max_streams", "open event streams")
        self.parked = Cap(max_parked, "http_max_parked", "parked calls (waiting for a lock, a message or a tuple)")
