"""The root of all live state: one instance per core, holding every primitive.

Primitives are discovered from `pdcore.state.<module>.PRIMITIVE` (a `Primitive` subclass), made
in `load_order`, and reached as attributes (`state.ports`, `state.agents`, ...). Operations name
their handler as `"<primitive>.<method>"`.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable
from typing import Any

from pdcore.config import Config
from pdcore.state.base import Primitive
from pdcore.store import Store
from pdcore.timers import Timers

Deliver = Callable[[str, dict], None]


def primitive_classes() -> list[type[Primitive]]:
    import pdcore.state as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"pdcore.state.{info.name}")
        cls = getattr(module, "PRIMITIVE", None)
        if cls is not None:
            found.append(cls)
    found.sort(key=lambda c: (getattr(c, "load_order", 50), c.name))
    return found


class State:
    def __init__(
        self,
        store: Store,
        config: Config,
        timers: Timers | None = None,
        deliver: Deliver | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.timers = timers or Timers()
        self.deliver: Deliver = deliver or (lambda channel, message: None)
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.started_at = self.clock()
        self.pending_wakes: list[Any] = []
        self.team_link: Any = None  # the core's TeamLink (pdcore.team) when a team is configured; None: local mode
        self.primitives: dict[str, Primitive] = {}
        for cls in primitive_classes():
            inst = cls(self)
            self.primitives[cls.name] = inst
            setattr(self, cls.name, inst)
        self._handlers: dict[str, Callable] = {}
        self._hooks: dict[str, list[Callable]] = {}

    def load(self) -> None:
        """Rebuild in-memory state from the database (after migrations)."""
        now = self.clock()
        for prim in self.primitives.values():
            prim.load(now)
        self.store.commit()

    def handler(self, target: str) -> Callable:
        fn = self._handlers.get(target)
        if fn is None:
            prim_name, _, method = target.partition(".")
            fn = getattr(self.primitives[prim_name], method)
            self._handlers[target] = fn
        return fn

    def wake(self, key: Any) -> None:
        """Tell the core that parked calls waiting on `key` may now succeed."""
        self.pending_wakes.append(key)

    def publish(self, channel: str, message: Any, sender: str | None = None, now: int | None = None) -> None:
        """Emit an event on a channel: into its history ring (if messaging is loaded) and to subscribers."""
        now = self.clock() if now is None else now
        channels = self.primitives.get("channels")
        if channels is not None:
            channels.publish_event(channel, message, sender, now)  # type: ignore[attr-defined]
        else:
            self.deliver(channel, {"channel": channel, "message": message, "sender": sender, "ts": now})

    def notify(self, hook: str, *args: Any) -> None:
        """Call `hook(*args)` on every primitive that defines it (cross-primitive events).

        Hooks in use: `on_connection_closed(conn_id)`, `on_agent_dead(ctx, agent_id, pid)`,
        `on_activity(ctx, type, target, details)` (every activity record, e.g. for webhooks).
        """
        fns = self._hooks.get(hook)
        if fns is None:
            fns = self._hooks[hook] = [getattr(p, hook) for p in self.primitives.values() if hasattr(p, hook)]
        for fn in fns:
            fn(*args)

    def connection_closed(self, conn_id: int) -> None:
        """An IPC connection went away: drop what was bound to it (locks, subscriptions)."""
        self.notify("on_connection_closed", conn_id)

    def offload(self, fn: Callable[[], Any], then: Callable[[Any, BaseException | None], None]) -> None:
        """Run blocking `fn` off the core's thread; call `then(result, error)` back on it.

        The core replaces this with a thread pool; in-process tests run it inline.
        """
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the callback
            then(None, exc)
        else:
            then(result, None)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for prim in self.primitives.values():
            out.update(prim.counts())
        return out
