"""A take sent over HTTP whose reply is lost is repeated with the same request id.

A small HTTP server on a Unix socket stands for the daemon: it reads the first take and closes
without answering (as when the core dies after committing it), then answers the repeat.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
from pathlib import Path

from pdcore.client import Client
from pdcore.config import Config


def _serve(path: Path, seen: list[dict], answers: int) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(10)

    def run() -> None:
        try:
            for n in range(answers):
                conn, _ = srv.accept()
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length")))
                    while len(body) < length:
                        body += conn.recv(65536)
                    seen.append(json.loads(body))
                    if n == 0:
                        continue  # read and committed, the reply lost: close without a word
                    reply = json.dumps({"success": True, "taken": [{"id": "t1", "fields": ["job"]}],
                                        "count": 1, "repeated": True}).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(reply)).encode() + b"\r\n\r\n" + reply)
        finally:
            srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_an_http_take_whose_reply_is_lost_is_repeated_with_its_request_id():
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        sock = home / "daemon.sock"
        seen: list[dict] = []
        server = _serve(sock, seen, answers=2)
        config = Config(home=home, sock=sock, ipc=home / "absent.ipc", no_tcp=True, shm_enabled=False)
        with Client(config, transport="http", timeout=5) as c:
            result = c.tuple_in(pattern=["job"])
        server.join(5)
    assert result["taken"][0]["id"] == "t1"
    assert len(seen) == 2, seen
    assert seen[0]["requestId"] and seen[0]["requestId"] == seen[1]["requestId"]
