"""A body over the limit gets its 413 and the pooled keep-alive connection stays usable."""

from __future__ import annotations

import time

from tests.compat.conftest import SockConnection


def test_a_2_mib_body_then_50_requests_on_the_same_connection_are_all_answered(daemon):
    conn = SockConnection(str(daemon.config.sock), timeout=30)
    try:
        status, body, resp = conn.send_json("POST", "/sessions", b"x" * (2 * 1024 * 1024))
        assert status == 413 and body["reason"] == "too_large"
        assert resp.getheader("Connection", "").lower() != "close"
        first_sock = conn.sock
        answered = 0
        deadline = time.monotonic() + 60
        for _ in range(50):
            assert time.monotonic() < deadline
            status, body, _ = conn.send_json("GET", "/health")
            assert status == 200 and body["status"] == "ok"
            answered += 1
        assert answered == 50 and conn.sock is first_sock  # never reconnected
    finally:
        conn.close()
