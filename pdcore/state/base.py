"""What every state handler sees: the call context, the park request, the primitive base.

Handlers are plain code over in-memory state: no sockets, no awaiting. Time comes in through
`Ctx.now` (epoch ms) so tests inject it. A handler that must wait returns `Park`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pdcore.state import State


class Ctx:
    """The context of one operation call."""

    __slots__ = ("now", "conn", "agent_id", "source", "retry")

    def __init__(self, now: int, conn: Any = None, agent_id: str | None = None, source: str = "internal") -> None:
        self.now = now  # epoch milliseconds
        self.conn = conn  # an object with `.id` for connection-bound resources, or None
        self.agent_id = agent_id
        self.source = source  # "ipc" | "http" | "internal"
        self.retry = False  # True when a parked call is retried after a wake


@dataclass
class Park:
    """Returned by a handler that cannot answer yet.

    The core keeps the call and retries it (same args) whenever one of `keys` is woken, oldest
    parked call first, until it answers or `deadline` (epoch ms) passes; then it replies with
    `on_timeout` (a result dict) or raises it (an OpError).
    """

    keys: tuple
    deadline: int
    on_timeout: Any = field(default_factory=dict)


class Primitive:
    """Base of every state module. `root` is the State, for cross-primitive calls."""

    name = ""

    def __init__(self, root: State) -> None:
        self.root = root
        self.store = root.store
        self.config = root.config

    def load(self, now: int) -> None:
        """Rebuild in-memory state from the database on start (override when durable)."""

    def counts(self) -> dict[str, int]:
        """Figures for /metrics and /health (override)."""
        return {}
