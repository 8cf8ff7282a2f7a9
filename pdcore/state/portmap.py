"""Which ports are free: a three-level bitmap over 0..65535.

`next_free(start, lo, hi)` finds the first free port >= start within [lo, hi] (wrapping to
lo) in a handful of integer operations, so a claim costs the same with 10 or 60,000 services
held. Level 0 has one bit per port (1024 words of 64 bits), level 1 one bit per level-0 word
that has any free port, level 2 one bit per level-1 word.
"""

from __future__ import annotations

_N = 65536


def _lowest_bit_at_or_after(word: int, offset: int) -> int:
    """Index of the lowest set bit of `word` at position >= offset, or -1."""
    masked = word >> offset << offset
    if not masked:
        return -1
    return (masked & -masked).bit_length() - 1


class FreePorts:
    def __init__(self) -> None:
        full = (1 << 64) - 1
        self.l0 = [full] * 1024
        self.l1 = [full] * 16
        self.l2 = (1 << 16) - 1
        self.mark_used(0)

    def is_free(self, port: int) -> bool:
        return bool(self.l0[port >> 6] >> (port & 63) & 1)

    def mark_used(self, port: int) -> None:
        w = port >> 6
        self.l0[w] &= ~(1 << (port & 63))
        if not self.l0[w]:
            w1 = w >> 6
            self.l1[w1] &= ~(1 << (w & 63))
            if not self.l1[w1]:
                self.l2 &= ~(1 << w1)

    def mark_free(self, port: int) -> None:
        w = port >> 6
        w1 = w >> 6
        self.l0[w] |= 1 << (port & 63)
        self.l1[w1] |= 1 << (w & 63)
        self.l2 |= 1 << w1

    def _first_free_from(self, start: int) -> int:
        """First free port >= start in the whole space, or -1."""
        if start >= _N:
            return -1
        w = start >> 6
        b = _lowest_bit_at_or_after(self.l0[w], start & 63)
        if b >= 0:
            return (w << 6) | b
        w += 1  # next level-0 word with any free bit
        if w >= 1024:
            return -1
        w1 = w >> 6
        b1 = _lowest_bit_at_or_after(self.l1[w1], w & 63)
        if b1 < 0:
            w1 += 1
            if w1 >= 16:
                return -1
            w1 = _lowest_bit_at_or_after(self.l2, w1)
            if w1 < 0:
                return -1
            b1 = _lowest_bit_at_or_after(self.l1[w1], 0)
        w = (w1 << 6) | b1
        return (w << 6) | _lowest_bit_at_or_after(self.l0[w], 0)

    def next_free(self, start: int, lo: int, hi: int) -> int:
        """First free port in [lo, hi] at or after `start`, wrapping once to `lo`; -1 if none."""
        p = self._first_free_from(max(start, lo))
        if 0 <= p <= hi:
            return p
        p = self._first_free_from(lo)
        if 0 <= p <= hi and p < max(start, lo):
            return p
        return -1
