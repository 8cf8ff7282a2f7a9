"""Counters that never go backwards across restarts, without a database write per number.

Like a database sequence cache: numbers are handed out from a block whose ceiling is written
to `sequence_blocks` before the first number of the block is used. The write belongs to the
same loop tick as the operation that used the number, so it is committed before that operation
is acknowledged; after a restart (or `kill -9`) counting resumes above the last ceiling.
Lock fencing tokens and pub/sub message ids use it.
"""

from __future__ import annotations

from pdcore.store import Store


class BlockSequence:
    """A strictly increasing counter persisted once per `block` numbers."""

    def __init__(self, store: Store, name: str, block: int = 1000) -> None:
        self.store = store
        self.name = name
        self.block = block
        self.value = 0
        self.ceiling = 0

    def load(self, floor: int = 0) -> None:
        """Resume above the stored ceiling (and above `floor`, e.g. the largest value still in use)."""
        row = self.store.read_one("SELECT ceiling FROM sequence_blocks WHERE name = ?", (self.name,))
        self.value = max(row[0] if row else 0, floor)
        self.ceiling = self.value

    def next(self) -> int:
        """The next number; reserves (writes) a new block when the current one is used up."""
        self.value += 1
        if self.value > self.ceiling:
            self.ceiling = self.value + self.block - 1
            self.store.write(
                "INSERT INTO sequence_blocks (name, ceiling) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET ceiling = excluded.ceiling",
                (self.name, self.ceiling),
            )
        return self.value
