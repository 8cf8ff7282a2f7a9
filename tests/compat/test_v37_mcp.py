"""MCP with the official client: pd_discover lists a category's tools; release_lock and
end_session_full free locks as 3.7 clients expect."""

from __future__ import annotations

import logging

import anyio

from tests.integration.test_mcp import mcp_client, uid


def test_pd_discover_adds_the_category_to_the_list_and_calls_log_no_warning(daemon, caplog):
    async def main():
        async with mcp_client(daemon.env) as client:
            before = {t.name for t in (await client.list_tools()).tools}
            await client.call_tool("pd_discover", {"category": "tuples"})
            after = {t.name for t in (await client.list_tools()).tools}
            with caplog.at_level(logging.WARNING):
                result = await client.call_tool("tuple_count", {"pattern": ["compat", "*"]})
            return before, after, result

    before, after, result = anyio.run(main)
    assert "tuple_count" not in before and {"tuple_out", "tuple_count", "tuple_take"} <= after
    assert not result.is_error
    assert not [r for r in caplog.records if "not listed" in r.getMessage()]


def test_release_lock_defaults_its_owner_and_end_session_full_releases_locks(daemon):
    lock, other = f"mcp-{uid()}", f"mcp-{uid()}"

    async def main():
        async with mcp_client(daemon.env) as client:
            await client.call_tool("begin_session", {"purpose": "mcp locks"})
            took = await client.call_tool("acquire_lock", {"name": lock, "ttl": 60_000})
            released = await client.call_tool("release_lock", {"name": lock})
            await client.call_tool("acquire_lock", {"name": other, "ttl": 60_000})
            ended = await client.call_tool("end_session_full", {})
            return took, released, ended

    took, released, ended = anyio.run(main)
    assert not took.is_error and not released.is_error, released.content
    assert released.structured_content["released"] is True
    assert ended.structured_content["releasedLocks"] == [other]
    assert daemon.client().call("lock.get", name=other)["held"] is False
