"""The one timer structure of the core: a heap of (deadline, seq, callback).

Every deadline (TTL, reaper pass, parked-call timeout, housekeeping) is an entry here; the
core sleeps until the earliest one. Cancelling marks the entry dead (lazy deletion), so both
add and cancel are O(log n). Deadlines are epoch milliseconds, the unit stored in records.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class Timer:
    __slots__ = ("deadline", "seq", "fn", "args", "cancelled")

    def __init__(self, deadline: int, seq: int, fn: Callable[..., Any], args: tuple) -> None:
        self.deadline = deadline
        self.seq = seq
        self.fn = fn
        self.args = args
        self.cancelled = False

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """A min-heap of timers; `run_due(now)` fires every timer whose deadline has passed."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        self.on_change: Callable[[], None] | None = None  # the core re-arms its wake-up

    def add(self, deadline: int, fn: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(int(deadline), next(self._seq), fn, args)
        first = not self._heap or timer < self._heap[0]
        heapq.heappush(self._heap, timer)
        if first and self.on_change is not None:
            self.on_change()
        return timer

    def next_deadline(self) -> int | None:
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
        return heap[0].deadline if heap else None

    def run_due(self, now: int) -> int:
        """Fire due timers in deadline order; return how many ran."""
        ran = 0
        heap = self._heap
        while heap and (heap[0].cancelled or heap[0].deadline <= now):
            timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            timer.cancelled = True
            timer.fn(*timer.args)
            ran += 1
        return ran

    def __len__(self) -> int:
        return sum(1 for t in self._heap if not t.cancelled)
