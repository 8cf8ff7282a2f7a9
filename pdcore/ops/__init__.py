"""The op catalogue: every operation declared once. See `pdcore.ops.catalogue`."""

from pdcore.ops.catalogue import CATALOGUE, VALIDATORS, get_op
from pdcore.ops.schema import Arg, Op, Route

__all__ = ["CATALOGUE", "VALIDATORS", "Arg", "Op", "Route", "get_op"]
