"""HTTP over `daemon.sock`, as Port Daddy 3.7's JS SDK speaks to the daemon.

`sock_http(daemon, method, path, body, headers)` sends one request on a new connection;
`SockConnection` is one keep-alive connection reused for many requests (a pooled client).
"""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from typing import Any

import pytest


class SockConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over an AF_UNIX socket (kept alive between requests)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.sock_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.sock_path)
        self.sock = sock

    def send_json(self, method: str, path: str, body: Any = None,
                  headers: dict | None = None) -> tuple[int, dict, http.client.HTTPResponse]:
        data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
        self.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = self.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else {}), resp


def sock_http(daemon: Any, method: str, path: str, body: Any = None,
              headers: dict | None = None) -> tuple[int, dict]:
    """One request over daemon.sock on a connection of its own: (status, JSON body)."""
    conn = SockConnection(str(daemon.config.sock))
    try:
        status, parsed, _ = conn.send_json(method, path, body, headers)
        return status, parsed
    finally:
        conn.close()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8]
