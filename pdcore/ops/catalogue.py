"""Assemble the catalogue from every `pdcore.ops.<primitive>` module's `OPS` tuple.

Each primitive declares its operations in its own module; this module gathers them, refuses
duplicates, and compiles one validator per op. Nothing else lists operations.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from pdcore.errors import OpError
from pdcore.ops.schema import Op, compile_validator

_NOT_PRIMITIVES = {"catalogue", "schema"}


def _load() -> dict[str, Op]:
    import pdcore.ops as package

    ops: dict[str, Op] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name in _NOT_PRIMITIVES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"pdcore.ops.{info.name}")
        for op in getattr(module, "OPS", ()):
            if op.name in ops:
                raise RuntimeError(f"operation {op.name} is declared twice")
            ops[op.name] = op
    return ops


CATALOGUE: dict[str, Op] = _load()
VALIDATORS: dict[str, Callable[[dict], dict]] = {name: compile_validator(op) for name, op in CATALOGUE.items()}


def get_op(name: str) -> Op:
    """Look an operation up by name, or refuse with `unknown_action`."""
    op = CATALOGUE.get(name)
    if op is None:
        raise OpError("unknown_action", f"unknown action {name!r}", "action")
    return op
