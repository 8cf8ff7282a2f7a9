"""pd mcp [--full] (the stdio MCP server) | pd mcp install [--write] (register it with MCP clients)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.common import fail, options, output, output_options


@click.group(invoke_without_command=True)
@click.option("--full", is_flag=True, help="List every tool (also PORT_DADDY_MCP_FULL=1); by default the "
                                           "essential ones plus pd_discover. Every tool is callable either way.")
@click.pass_context
def mcp(ctx: click.Context, full: bool) -> None:
    """Run the Port Daddy MCP server on stdin/stdout (for Claude Code and other MCP clients).

    It does not start the daemon: while the daemon is down, tools answer with an error saying so.
    """
    if ctx.invoked_subcommand is not None:
        return
    from cli.mcp.server import run  # the mcp SDK is heavy: import it only to serve

    run(options().config, full=full)


@mcp.command("install")
@click.option("--write", is_flag=True, help="Add the server to ./.mcp.json (other entries are kept).")
@click.option("--full", is_flag=True, help="Register `pd mcp --full` (every tool listed).")
@output_options
def install(write: bool, full: bool) -> None:
    """Print the snippet that registers `pd mcp` with Claude Code and other MCP clients."""
    from cli.mcp.install import merge_into, server_entry, snippet

    snip = snippet(full)
    if not write:
        text = json.dumps(snip, indent=2)
        args = " ".join(server_entry(full)["args"])
        output(snip, f"{text}\n\nPut this in your project's .mcp.json (`pd mcp install --write` does it), or run:\n"
                     f"  claude mcp add port-daddy -- pd {args}", quiet=json.dumps(snip))
        return
    path = Path.cwd() / ".mcp.json"
    try:
        doc, changed = merge_into(path, full)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    verb = "added port-daddy to" if changed else "port-daddy is already registered in"
    output({"path": str(path), "changed": changed, "mcpServers": doc["mcpServers"]}, f"{verb} {path}",
           quiet=str(path))


def register(cli: click.Group) -> None:
    cli.add_command(mcp)
