"""`pd` starts fast: what a command imports is pinned here, and the lazy command table is checked.

Agents run `pd` many times (`PORT=$(pd claim myapp:api -q)`), so most of a command's time is
Python start-up and imports. These tests import in a fresh interpreter and fail when a heavy
module (the database, the cipher, the process table, the HTTP client) comes back on the path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]

# Never needed to start `pd` or to run `pd claim`: each is tens of milliseconds or drags in more.
HEAVY = ("cryptography", "sqlite3", "psutil", "http.client", "pdcore.state", "pdcore.store", "asyncio", "yaml")

# Imported although heavy, and why (none today: keep the reason next to any name added here).
UNAVOIDABLE: dict[str, str] = {}


def _modules_after(code: str) -> set[str]:
    """The names in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _heavy(modules: set[str], heavy: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy))


@pytest.mark.parametrize("code", [
    "import cli.main",
    # what `pd claim x:y:z -q` loads: the root command and the one area module it needs
    "import cli.main; cli.main.cli.get_command(None, 'claim')",
    # commands that read this terminal's agent (cli.context) must not pay for psutil either
    "import cli.main; cli.main.cli.get_command(None, 'lock')",
    "import cli.main; cli.main.cli.get_command(None, 'inbox')",
])
def test_starting_pd_imports_nothing_heavy(code):
    loaded = _modules_after(code)
    unexpected = [m for m in _heavy(loaded, HEAVY) if m not in UNAVOIDABLE]
    assert not unexpected, f"`{code}` imports {unexpected}; import them where they are used"


def test_pd_status_does_not_import_the_supervisor_or_the_database():
    loaded = _modules_after("import cli.main; cli.main.cli.get_command(None, 'status')")
    unexpected = [m for m in _heavy(loaded, ("cryptography", "sqlite3", "http.client", "pdcore.supervisor",
                                             "pdcore.store", "asyncio", "yaml")) if m not in UNAVOIDABLE]
    assert not unexpected, f"`pd status` imports {unexpected}"


def test_a_command_loads_only_its_own_area_module():
    loaded = _modules_after("import cli.main; cli.main.cli.get_command(None, 'c')")  # alias of claim
    areas = sorted(m for m in loaded if m.startswith("cli.commands."))
    assert areas == ["cli.commands.ports"]


def test_command_table_matches_what_the_area_modules_register():
    """cli.main.COMMANDS must name, for every top-level command, the module that registers it."""
    import importlib

    from cli.main import COMMANDS, area_modules

    registered: dict[str, str] = {}
    for area in area_modules():
        register = getattr(importlib.import_module(f"cli.commands.{area}"), "register", None)
        if register is None:
            continue
        group = click.Group()
        register(group)
        for name in group.commands:
            assert name not in registered, f"`pd {name}` is registered by both {registered[name]} and {area}"
            registered[name] = area
    assert COMMANDS == registered, "update COMMANDS in cli/main.py to match the cli/commands modules"


def test_listing_commands_shows_every_command():
    """`pd --help`, completion and the docs see every command, not only the loaded ones."""
    code = "import cli.main; print('\\n'.join(cli.main.cli.list_commands(None)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    from cli.main import COMMANDS

    assert set(proc.stdout.split()) == set(COMMANDS) | {"help"}
