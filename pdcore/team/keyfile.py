"""The team key: 32 bytes that seal shared notes; it is given at join and never sent through NATS."""

from __future__ import annotations

from pathlib import Path


def read_key_file(path: Path) -> bytes:
    """The team key (32 bytes, hex or raw) that later seals shared notes; checked at join."""
    data = path.read_bytes()
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode())
        except ValueError:
            pass
    if len(data) == 32:
        return data
    raise ValueError(f"{path}: a team key is 32 bytes (raw, or 64 hex characters)")
