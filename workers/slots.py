"""Caps on requests that hold a worker thread for long: event streams and parked ops.

A gthread worker serves one request per thread. An SSE stream holds its thread for as long
as the browser stays; a parked op (lock wait, long-poll, blocking take) for its wait. If they
took every thread, the request that would release them (an unlock, a publish) would queue
behind them. So each worker keeps `max_total` such requests at most, and `max_per_client` per
client address; beyond either the client gets 429 `rate_limited` and retries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pdcore.errors import OpError


class Slots:
    """Counts long-held requests per worker process and per client."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max(1, max_total)
        self.max_per_client = max(1, max_per_client)
        self._lock = threading.Lock()
        self._by_client: dict[str, int] = {}
        self.total = 0

    def take(self, client: str, what: str) -> None:
        """Reserve a slot for `client`, or refuse with 429."""
        with self._lock:
            mine = self._by_client.get(client, 0)
            if mine >= self.max_per_client:
                raise OpError(
                    "rate_limited",
                    f"{what}: this client already holds {mine} open streams or waiting requests "
                    f"(sse_max_per_client={self.max_per_client}); close one, or use the IPC socket",
                    retryAfter=1)
            if self.total >= self.max_total:
                raise OpError(
                    "rate_limited",
                    f"{what}: this HTTP worker already holds {self.total} open streams or waiting "
                    f"requests (http_max_waiting={self.max_total}); retry shortly, or use the IPC socket",
                    retryAfter=1)
            self._by_client[client] = mine + 1
            self.total += 1

    def give_back(self, client: str) -> None:
        with self._lock:
            left = self._by_client.get(client, 0) - 1
            if left > 0:
                self._by_client[client] = left
            else:
                self._by_client.pop(client, None)
            self.total = max(0, self.total - 1)

    @contextmanager
    def held(self, client: str, what: str) -> Iterator[None]:
        self.take(client, what)
        try:
            yield
        finally:
            self.give_back(client)
