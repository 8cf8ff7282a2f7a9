"""A process is its pid and its start time: a pid alone may have been reused by another process."""

from __future__ import annotations

START_TOLERANCE_S = 0.01  # two readings of one process's start time differ by less than a clock tick


def process_start(pid: int) -> float | None:
    """The start time of `pid`, or None when no such process exists."""
    import psutil  # here, not at import: the CLI imports this module and most commands never call it

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def same_start(a: float | None, b: float | None) -> bool:
    """Are two start-time readings of the same process (None only matches None)?"""
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) < START_TOLERANCE_S


def pid_alive(pid: int, started: float | None) -> bool:
    """Is `pid` still the same process (start time compared, so a reused pid is not it)?"""
    now_start = process_start(pid)
    if now_start is None:
        return False
    return started is None or same_start(now_start, started)
