"""Live state owned by the core: one module per primitive, handlers with no I/O."""

from pdcore.state.base import Ctx, Park, Primitive
from pdcore.state.root import State

__all__ = ["Ctx", "Park", "Primitive", "State"]
