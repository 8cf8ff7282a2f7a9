"""What every state handler sees: the call context, the park request, the primitive base.

Handlers are plain code over in-memory state: no sockets, no awaiting. Time comes in through
`Ctx.now` (epoch ms) so tests inject it. A handler that must wait returns `Park`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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


@dataclass
class Await:
    """Returned by a handler whose answer comes from an asynchronous call (a team op that
    JetStream must acknowledge). Handlers still never await: they hand the call to the core.

    The core parks the call, runs `call` (a coroutine) on its loop and, when it resolves, calls
    `then(result)` on the core's thread (no `then`: the result is the answer). `then` answers
    like a handler: a result dict, a `Park` (wait on keys; a wake retries the handler), another
    `Await`, or it raises OpError. An OpError raised by `call` is the answer. If `deadline`
    (epoch ms) passes first, the caller gets `on_timeout` and the outcome is ignored.
    """

    call: Awaitable[Any]
    deadline: int
    then: Callable[[Any], Any] | None = None
    on_timeout: Any = None


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
