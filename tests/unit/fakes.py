"""Stand-ins for the core's in-process tests."""

from __future__ import annotations

import socket


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
