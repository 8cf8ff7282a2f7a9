"""Stand-ins for the core's in-process tests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class FakeTransport:
    """A transport over one end of a socket pair: the kernel reports this process as the peer."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.sock, self.other = socket.socketpair()
        self.reading = True

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.sock.close()
        self.other.close()


@contextmanager
def core_on_fake_connection(home: Path, **settings: object) -> Iterator[tuple]:
    """A Core over a fresh home with one public Connection on a FakeTransport, on its own loop:
    (core, connection, transport, loop)."""
    from pdcore.config import load_config
    from pdcore.core import Connection, Core

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    core = Core(load_config(home, **settings))
    try:
        core.state.load()
        conn = Connection(core, True)
        transport = FakeTransport()
        conn.connection_made(transport)
        yield core, conn, transport, loop
    finally:
        core.store.close()
        loop.close()
        asyncio.set_event_loop(None)
