"""The MCP front door (`pd mcp`): tools built from the op catalogue; see cli/mcp/server.py.

Submodules are imported where used: `tools` is light, `server` pulls in the `mcp` SDK.
"""
