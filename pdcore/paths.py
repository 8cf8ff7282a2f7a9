"""The home folder and its runtime files: safety checks, stale-file cleanup, the running supervisor.

`supervisor_running` lives here rather than in `pdcore.supervisor` so that `pd status` and the
other CLI commands that ask it do not import the supervisor (and its logging set-up).
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from pdcore.config import Config


# Set by the supervisor in its children's environment: the pid they must outlive no longer than.
SUPERVISOR_PID_ENV = "PORT_DADDY_SUPERVISOR_PID"
SUPERVISOR_CHECK_S = 1.0


def supervisor_gone() -> bool:
    """True in a child of the supervisor once the supervisor has died (the child was re-parented).

    A supervisor killed with SIGKILL cannot stop its children; each child checks this about
    every second and then stops as on SIGTERM, so no core, HTTP server or fleet runner is left
    running unsupervised (and holding the sockets a new `pd start` needs)."""
    expected = os.environ.get(SUPERVISOR_PID_ENV, "")
    return expected.isdigit() and os.getppid() != int(expected)


def watch_supervisor(on_gone: Callable[[], None], name: str) -> threading.Thread | None:
    """In a supervised child: call `on_gone()` once, from a daemon thread, when the supervisor dies."""
    if not os.environ.get(SUPERVISOR_PID_ENV, "").isdigit():
        return None  # run by hand (or by a bench): nobody to outlive

    def watch() -> None:
        stopped = threading.Event()
        while not stopped.wait(SUPERVISOR_CHECK_S):
            if supervisor_gone():
                import logging  # here: `pd status` and friends import this module

                logging.getLogger("pd.supervisor").warning(
                    "event=supervisor.gone child=%s pid=%d action=stopping", name, os.getpid())
                on_gone()
                return

    thread = threading.Thread(target=watch, name="supervisor-watch", daemon=True)
    thread.start()
    return thread


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_XUCRED_HEAD = struct.Struct("IIh")  # struct xucred (BSD, macOS): version, uid, ngroups, groups...


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of the Unix socket `sock`, from the kernel.

    Linux: SO_PEERCRED. macOS and the BSDs: LOCAL_PEERCRED (no pid there: 0), or the kernel's
    getpeereid through the same option. Raises OSError when the kernel cannot tell."""
    if hasattr(socket, "SO_PEERCRED"):
        return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if sys.platform == "darwin" or "bsd" in sys.platform:
        local_peercred = getattr(socket, "LOCAL_PEERCRED", 0x001)
        raw = sock.getsockopt(0, local_peercred, 256)  # SOL_LOCAL is 0
        _version, uid, ngroups = _XUCRED_HEAD.unpack_from(raw)
        gid = struct.unpack_from("I", raw, _XUCRED_HEAD.size + 2)[0] if ngroups > 0 else -1
        return 0, uid, gid
    raise OSError(f"peer credentials are not available on {sys.platform}")


def rotate_log(path: Path, max_bytes: int | None) -> None:
    """Keep a log under `max_bytes`: past it, move it to NAME.1 (one old file kept)."""
    if not max_bytes:
        return
    try:
        if path.stat().st_size > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def check_home(home: Path, create: bool = False) -> str | None:
    """Return a one-line reason the home folder is unsafe, or None when it is fine.

    The home must be owned by the current user and closed to group and others (0700).
    """
    home = Path(home)
    if not home.exists():
        if not create:
            return None
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(home, 0o700)
    st = home.stat()
    if not stat.S_ISDIR(st.st_mode):
        return f"{home} is not a folder"
    if st.st_uid != os.getuid():
        return f"{home} belongs to another user (uid {st.st_uid}); refusing to start there"
    if st.st_mode & 0o077:
        return (f"{home} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run `chmod 700 {home}` and start again")
    return None


def socket_answers(path: Path) -> bool:
    """True when something accepts connections on the Unix socket at `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a crash; refuse to steal one that a live process answers on."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not stat.S_ISSOCK(path.lstat().st_mode):
        raise RuntimeError(f"{path} exists and is not a socket; remove it by hand")
    if socket_answers(path):
        raise RuntimeError(f"{path} is in use by a running process")
    path.unlink()


def read_pid(pid_file: Path) -> int | None:
    try:
        text = Path(pid_file).read_text().strip()
        return int(text) if text else None
    except (FileNotFoundError, ValueError):
        return None


def supervisor_running(config: Config) -> int | None:
    """The pid of a live supervisor of this home, or None (a stale pid file is not one)."""
    pid = read_pid(config.pid_file)
    if pid is None or pid == os.getpid():
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return pid if "pdcore.supervisor" in cmdline else None
