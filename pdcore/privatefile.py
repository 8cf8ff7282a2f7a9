"""Reading a secret file (the token, the master key, the team key): ours, private, not a link.

One check for every secret the daemon reads from disk: opened without following a symlink,
a regular file, owned by the caller's uid, mode without group or other bits. Each refusal is
one line that names the file and says what to do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class PrivateFileError(ValueError):
    """A secret file that must not be used; the message is one line naming the file and the fix."""


def read_private(path: Path, what: str, max_bytes: int, after_chmod: str = "") -> bytes:
    """Up to `max_bytes` of the secret file `path`, called `what` in messages.

    Raises FileNotFoundError when it does not exist (callers word that case themselves) and
    PrivateFileError when it cannot be trusted. `after_chmod` is added to the fix for a file
    others could read (e.g. "then `pd token rotate`").
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PrivateFileError(f"{what} {path} cannot be opened: {exc.strerror}; it must be a regular file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PrivateFileError(f"{what} {path} is not a regular file")
        if info.st_uid != os.getuid():
            raise PrivateFileError(f"{what} {path} belongs to uid {info.st_uid}, not to you; fix its owner")
        if info.st_mode & 0o077:
            fix = f"run: chmod 600 {path}" + (f", {after_chmod}" if after_chmod else "")
            raise PrivateFileError(f"{what} {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be 0600 ({fix})")
        return os.read(fd, max_bytes)
    finally:
        os.close(fd)
