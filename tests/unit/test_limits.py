"""Every list op's `limit` is honoured up to its declared maximum and refused above it, never cut."""

import inspect

import pytest

from pdcore.config import load_config
from pdcore.errors import OpError
from pdcore.ops import CATALOGUE
from pdcore.ops.schema import compile_validator

LIST_OPS = sorted(name for name, op in CATALOGUE.items() if any(a.name == "limit" for a in op.args))


def _limit(op):
    return next(a for a in op.args if a.name == "limit")


def test_the_catalogue_has_list_ops():
    assert len(LIST_OPS) >= 20


@pytest.mark.parametrize("name", LIST_OPS)
def test_a_limit_above_the_maximum_is_refused_naming_limit_and_the_maximum(name, tmp_path):
    op = CATALOGUE[name]
    arg = _limit(op)
    assert arg.max is not None and arg.min == 1, f"{name}: declare its limit with schema.limit_arg"
    config = load_config(tmp_path)
    top = int(getattr(config, arg.max_setting) if arg.max_setting else arg.max)
    validate = compile_validator(op, config)
    required = {a.name: "x" if a.type in ("str", "name", "text") else ["x"] if a.type in ("list", "any") else "p:q"
                for a in op.args if a.required}
    assert validate({**required, "limit": top})["limit"] == top
    with pytest.raises(OpError) as info:
        validate({**required, "limit": top + 1})
    assert (info.value.code, info.value.field) == ("invalid_argument", "limit")
    assert str(top) in info.value.message


@pytest.mark.parametrize("name", LIST_OPS)
def test_no_handler_cuts_its_limit_silently(name):
    """The handlers use the limit they are given: the catalogue alone bounds it (no min(limit, ...))."""
    prim = CATALOGUE[name].handler.partition(".")[0]
    source = inspect.getsource(_primitive_class(prim))
    assert "min(limit" not in source.replace(" ", "") and "limit=min(" not in source.replace(" ", "")


def _primitive_class(name: str):
    from pdcore.state.root import primitive_classes

    return next(c for c in primitive_classes() if c.name == name)


def test_a_configured_maximum_is_the_one_refused_and_honoured(make_harness):
    h = make_harness(notes_list_max=5)
    sid = h.state.sugar.begin(h.ctx(), purpose="p", identity="lim:api", agentId="lim-agent")["sessionId"]
    for i in range(7):
        h.state.notes.add(h.ctx(), id=sid, content=f"n{i}")
    validate = compile_validator(CATALOGUE["session.notes"], h.config)
    args = validate({"id": sid, "limit": 5})
    assert h.state.notes.session_notes(h.ctx(), **args)["count"] == 5
    with pytest.raises(OpError) as info:
        validate({"id": sid, "limit": 6})
    assert "limit must be <= 5 (setting notes_list_max)" in info.value.message
    h2 = make_harness(tuple_limit_max=3)
    for i in range(5):
        h2.state.tuples.out(h2.ctx(), fields=["t", i])
    validate = compile_validator(CATALOGUE["tuple.in"], h2.config)
    assert h2.state.tuples.take(h2.ctx(), **validate({"pattern": ["t"], "limit": 3}))["count"] == 3
    with pytest.raises(OpError):
        validate({"pattern": ["t"], "limit": 4})
