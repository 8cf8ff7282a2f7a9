"""The team key: 32 bytes that seal shared notes; it is given at join and never sent through NATS."""

from __future__ import annotations

from pathlib import Path

from pdcore.privatefile import PrivateFileError, read_private


class TeamKeyError(PrivateFileError):
    """The team key file cannot be used; one line naming the file and the fix."""


def read_key_file(path: Path) -> bytes:
    """The team key (32 bytes, hex or raw) that seals shared notes: a private file of ours, like master.key."""
    try:
        data = read_private(Path(path), "team key", 4096)
    except FileNotFoundError:
        raise TeamKeyError(f"team key {path} is missing; copy the team's key file there, or fix team.key_file") from None
    except PrivateFileError as exc:
        raise TeamKeyError(str(exc)) from None
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode())
        except ValueError:
            pass
    if len(data) == 32:
        return data
    raise TeamKeyError(f"team key {path} is {len(data)} bytes; a team key is 32 bytes (raw, or 64 hex characters)")
