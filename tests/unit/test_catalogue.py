"""The op catalogue: declarations are complete, validators refuse bad input with the field named,
and every front door reaches exactly the catalogue's operations."""

import ast
from pathlib import Path

import pytest

from pdcore.client import AsyncClient, Client
from pdcore.errors import STATUS_BY_CODE, OpError
from pdcore.ops import CATALOGUE, VALIDATORS
from pdcore.state.root import primitive_classes

REPO = Path(__file__).resolve().parents[2]


def test_every_op_names_an_existing_handler_method():
    prims = {cls.name: cls for cls in primitive_classes()}
    for op in CATALOGUE.values():
        prim, _, method = op.handler.partition(".")
        assert prim in prims, f"{op.name}: no primitive {prim}"
        assert callable(getattr(prims[prim], method, None)), f"{op.name}: {op.handler} missing"


def test_every_op_has_summary_and_known_error_codes():
    for op in CATALOGUE.values():
        assert op.summary, op.name
        for code in op.errors:
            assert code in STATUS_BY_CODE, f"{op.name}: unknown error code {code}"


def test_every_op_is_reached_by_http_and_the_sdk():
    for op in CATALOGUE.values():
        assert op.routes or op.internal, f"{op.name} has no HTTP route"
        assert callable(getattr(Client, op.method_name)), op.name
        assert callable(getattr(AsyncClient, op.method_name)), op.name


def test_http_routes_are_unique():
    seen = {}
    for op in CATALOGUE.values():
        for r in op.routes:
            key = (r.method, r.path)
            assert key not in seen, f"{key} used by {seen[key]} and {op.name}"
            seen[key] = op.name


def test_path_params_are_declared_args():
    import re

    for op in CATALOGUE.values():
        names = {a.name for a in op.args}
        for r in op.routes:
            for param in re.findall(r"{(\w+)(?::\w+)?}", r.path):
                assert param in names, f"{op.name}: route {r.path} has undeclared {param}"


def _cli_calls() -> set[str]:
    """Every literal action named by `call("...")` in the CLI source."""
    found = set()
    for path in (REPO / "cli").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", "")
                if name in ("call", "fire") and isinstance(node.args[0].value, str):
                    found.add(node.args[0].value)
    return found


def test_cli_names_only_catalogue_operations():
    unknown = _cli_calls() - set(CATALOGUE)
    assert not unknown, f"CLI calls operations the catalogue lacks: {sorted(unknown)}"


def test_ops_declaring_a_cli_command_are_called_by_the_cli():
    called = _cli_calls()
    missing = [op.name for op in CATALOGUE.values() if op.cli and op.name not in called]
    assert not missing, f"ops declare a CLI command but no CLI code calls them: {missing}"


def test_cli_commands_declared_by_ops_exist():
    from cli.main import cli

    for op in CATALOGUE.values():
        for path in op.cli:
            cmd = cli
            for word in path.split():
                assert hasattr(cmd, "get_command"), f"{op.name}: `pd {path}` is not a group path"
                cmd = cmd.get_command(None, word)
                assert cmd is not None, f"{op.name}: `pd {path}` does not exist"


@pytest.mark.parametrize("args,field,code", [
    ({}, "id", "missing_field"),
    ({"id": 5}, "id", "invalid_identity"),
    ({"id": "a:b:c:d"}, "id", "invalid_identity"),
    ({"id": "bad id"}, "id", "invalid_identity"),
    ({"id": "ok:id", "port": "80"}, "port", "invalid_argument"),
    ({"id": "ok:id", "port": 70000}, "port", "invalid_argument"),
    ({"id": "ok:id", "port": True}, "port", "invalid_argument"),
    ({"id": "ok:id", "cmd": "a\x00b"}, "cmd", "invalid_argument"),
    ({"id": "ok:id", "metadata": []}, "metadata", "invalid_argument"),
    ({"id": "x" * 65}, "id", "invalid_identity"),
])
def test_claim_validator_names_the_field(args, field, code):
    with pytest.raises(OpError) as info:
        VALIDATORS["port.claim"](args)
    assert (info.value.field, info.value.code) == (field, code)


def test_validator_fills_defaults_and_ignores_unknown_keys():
    out = VALIDATORS["port.claim"]({"id": "a:b", "junk": 1})
    assert out["id"] == "a:b" and out["port"] is None and "junk" not in out
