"""Live state owned by the core: one module per primitive, handlers with no I/O.

`State` (with the store and SQLite behind it) is loaded on first use, so a module that only
needs one primitive's constants (the op catalogue, which every `pd` command loads) does not
pay for the database.
"""

from typing import Any

from pdcore.state.base import Await, Ctx, Park, Primitive

__all__ = ["Await", "Ctx", "Park", "Primitive", "State"]


def __getattr__(name: str) -> Any:
    if name == "State":
        from pdcore.state.root import State

        return State
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
