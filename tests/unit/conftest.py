"""In-process fixtures: a State over a real SQLite file in a temporary folder, time injected."""

from __future__ import annotations

import pytest

from pdcore.config import load_config
from pdcore.state import Ctx, State
from pdcore.store import Store


class FakeClock:
    """Epoch-ms clock the test moves by hand."""

    def __init__(self, now: int = 1_800_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class StateHarness:
    """A State with its clock, store and collected deliveries; `ctx()` makes a call context."""

    def __init__(self, tmp_path, **overrides) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        overrides.setdefault("probe_bound_ports", False)
        self.config = load_config(tmp_path, **overrides)
        self.clock = FakeClock()
        self.delivered: list[tuple[str, dict]] = []
        self.store = Store(self.config.db_path)
        self.store.migrate()
        self.state = State(self.store, self.config, deliver=lambda ch, msg: self.delivered.append((ch, msg)),
                           clock=self.clock)
        self._offload_after_commit()
        self.state.load()

    def _offload_after_commit(self) -> None:
        """Like the core: off-thread work starts once the tick's writes are committed (inline here)."""
        inline = self.state.offload

        def offload(fn, then) -> None:
            self.store.commit()
            inline(fn, then)

        self.state.offload = offload

    def ctx(self, agent_id: str | None = None, conn=None, source: str = "internal") -> Ctx:
        return Ctx(self.clock.now, conn=conn, agent_id=agent_id, source=source)

    def advance(self, ms: int) -> int:
        """Move time forward and fire due timers; return how many fired."""
        self.clock.advance(ms)
        fired = self.state.timers.run_due(self.clock.now)
        self.store.commit()
        return fired

    def reopen(self) -> StateHarness:
        """Commit, then build a new State from the same database (a restart)."""
        self.store.commit()
        self.store.close()
        self.store = Store(self.config.db_path)
        self.store.migrate()
        self.state = State(self.store, self.config, deliver=lambda ch, msg: self.delivered.append((ch, msg)),
                           clock=self.clock)
        self._offload_after_commit()
        self.state.load()
        return self


@pytest.fixture
def harness(tmp_path) -> StateHarness:
    h = StateHarness(tmp_path)
    yield h
    h.store.close()


@pytest.fixture
def make_harness(tmp_path):
    """Build a harness with config overrides: `make_harness(agent_dead_ms=1000)`."""
    made = []

    def make(**overrides) -> StateHarness:
        h = StateHarness(tmp_path / f"h{len(made)}", **overrides)
        made.append(h)
        return h

    yield make
    for h in made:
        h.store.close()
