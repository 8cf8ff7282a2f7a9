"""`pd mcp install`: the snippet that registers the server with MCP clients, and `.mcp.json` merging."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cli.mcp.tools import SERVER_NAME


def server_entry(full: bool = False) -> dict[str, Any]:
    """How an MCP client starts us: `pd mcp` (`pd mcp --full` to list every tool)."""
    return {"command": "pd", "args": ["mcp", "--full"] if full else ["mcp"]}


def snippet(full: bool = False) -> dict[str, Any]:
    """`{"mcpServers": {"port-daddy": {...}}}`, the shape Claude Code, Cursor and others read."""
    return {"mcpServers": {SERVER_NAME: server_entry(full)}}


def merge_into(path: Path, full: bool = False) -> tuple[dict[str, Any], bool]:
    """Add (or update) our entry in an `.mcp.json`, keeping every other key and server.

    Returns (the new document, whether the file changed). Refuses a file that is not a JSON
    object rather than overwriting it. Written atomically (temporary file + rename).
    """
    doc: dict[str, Any] = {}
    if path.exists():
        text = path.read_text()
        try:
            doc = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); fix it or move it away, then retry") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{path} must hold a JSON object")
    servers = doc.get("mcpServers")
    if servers is None:
        servers = doc["mcpServers"] = {}
    elif not isinstance(servers, dict):
        raise ValueError(f"{path}: mcpServers must be a JSON object")
    entry = server_entry(full)
    if servers.get(SERVER_NAME) == entry:
        return doc, False
    servers[SERVER_NAME] = entry
    fd, tmp = tempfile.mkstemp(prefix=".mcp.json.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out, indent=2)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return doc, True
