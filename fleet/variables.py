"""Template variables of pd-fleet.yml: which exist, where, and how they are filled in.

`{name}` is replaced; `{{` and `}}` are literal braces; `${NAME}` is left alone for the shell,
and so is any brace text that is not a bare variable name (`awk '{print $1}'`). Unknown
variables are a validation error, never left in silently.

In a custom backend's command no value is ever pasted into the shell text: `{message}` becomes
a reference to an environment variable (`"${PD_VAR_MESSAGE}"`, quoted to suit where it stands:
bare, inside double quotes, or inside single quotes), and the value travels in the child's
environment. The shell never parses a value, so a published message cannot inject commands,
whatever quotes the command was written with.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# Scanned left to right: `{{` and `}}` are literal braces; `{name}` not preceded by `$` is a variable.
TOKEN_RE = re.compile(r"\{\{|\}\}|(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")

PROJECT_VARS = frozenset({"project", "project_dir", "harbor", "branch", "sha", "fleet", "agent"})
EVENT_VARS = frozenset({"channel", "message", "sender", "commit", "changed_files"})
HARBOR_VARS = frozenset({"project", "project_dir", "fleet"})  # the harbor is rendered before it exists
IDENTITY_VARS = frozenset({"project", "project_dir", "harbor", "fleet", "agent"})
RUN_VARS = PROJECT_VARS | EVENT_VARS  # prompt, cwd, env, model, a watcher's exec


def variables_in(text: str) -> list[str]:
    """The variable names a template uses, in order of first use."""
    seen: dict[str, None] = {}
    for m in TOKEN_RE.finditer(text):
        if m.group(1):
            seen.setdefault(m.group(1), None)
    return list(seen)


def unknown_variables(text: str, allowed: Iterable[str]) -> list[str]:
    allowed = set(allowed)
    return [v for v in variables_in(text) if v not in allowed]


def as_text(value: Any) -> str:
    """A value as template text: strings as they are, lists space-separated, the rest as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def render(text: str, values: Mapping[str, Any], quote: Callable[[str], str] | None = None) -> str:
    """Fill a template. Variables missing from `values` render as ''; `quote` wraps each value."""

    def sub(m: re.Match) -> str:
        if not m.group(1):
            return m.group(0)[0]  # {{ -> {, }} -> }
        value = as_text(values.get(m.group(1)))
        return quote(value) if quote is not None else value

    return TOKEN_RE.sub(sub, text)


def shell_variable(name: str) -> str:
    """The environment variable carrying template variable `name` into a custom command."""
    return f"PD_VAR_{name.upper()}"


def render_shell(text: str, values: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """Fill a shell command with references to environment variables; return it and those variables."""
    out: list[str] = []
    env: dict[str, str] = {}
    quote: str | None = None  # the shell quoting state at this point: None, ' or "
    i, n = 0, len(text)
    while i < n:
        m = TOKEN_RE.match(text, i)
        if m:
            if m.group(1):
                var = shell_variable(m.group(1))
                env[var] = as_text(values.get(m.group(1)))
                ref = "${" + var + "}"
                out.append(ref if quote == '"' else f"'\"{ref}\"'" if quote == "'" else f'"{ref}"')
            else:
                out.append(m.group(0)[0])
            i = m.end()
            continue
        c = text[i]
        if c == "\\" and quote != "'":
            out.append(text[i:i + 2])
            i += 2
            continue
        if quote is None and c in "'\"":
            quote = c
        elif c == quote:
            quote = None
        out.append(c)
        i += 1
    return "".join(out), env


def _git(project_dir: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def git_state(project_dir: Path) -> dict[str, str]:
    """`{branch}` and `{sha}` of a project folder ('' outside a git repository)."""
    return {"branch": _git(project_dir, "rev-parse", "--abbrev-ref", "HEAD"),
            "sha": _git(project_dir, "rev-parse", "HEAD")}


def event_values(channel: str | None, message: Any, sender: str | None) -> dict[str, Any]:
    """The event variables of a triggered run; a `git:committed` message also gives commit/changed_files."""
    values: dict[str, Any] = {"channel": channel or "", "message": as_text(message), "sender": sender or ""}
    if isinstance(message, dict):
        values["commit"] = message.get("commit") or ""
        files = message.get("changed_files") or []
        values["changed_files"] = files if isinstance(files, list) else as_text(files)
        if message.get("branch"):
            values["branch"] = message["branch"]
    return values


def trigger_context(values: Mapping[str, Any]) -> str:
    """The short block appended to an LLM backend's prompt saying what set the run off."""
    lines = ["", "", "--- trigger context ---"]
    for key, label in (("channel", "channel"), ("sender", "sender"), ("commit", "commit"), ("branch", "branch"),
                       ("changed_files", "changed files"), ("message", "message")):
        text = as_text(values.get(key))
        if text:
            if len(text) > 2000:
                text = text[:2000] + " ..."
            lines.append(f"{label}: {text}")
    lines.append("---")
    return "\n".join(lines) if len(lines) > 4 else ""
