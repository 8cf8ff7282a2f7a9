"""Inbox: durable direct messages to one agent, with read state (SPEC.md §7).

Unlike channels, an inbox message is kept until it is cleared (or pushed out by the per-agent
bound `inbox_max_per_agent`, oldest first). Messages live in SQLite and are paged from it with
an index; the core keeps no inbox in memory. Each new message is also announced (without its
content) on the channel `pd:inbox:<agentId>`, so an agent can `pd watch` its inbox.

A fleet agent's id is its identity, `<fleet>:fleet:<agent>` by default, but people (and the MCP
tool `talk_to_agent`) call it by its bare name, `qa`. So a send to an id that names no registered
agent and has no `:` looks for the one fleet agent of that name and delivers there; several are
refused with the list (give the full id); none delivers to the id as given, with a warning.
"""

from __future__ import annotations

import json
from typing import Any

from pdcore.errors import OpError
from pdcore.state.base import Ctx, Primitive
from pdcore.store import where_clause

_COLUMNS = "id, agent_id, from_agent, content, content_type, type, read, read_at, created_at"


def inbox_channel(agent_id: str) -> str:
    """The channel on which new messages for `agent_id` are announced."""
    return f"pd:inbox:{agent_id}"


def _row(r: tuple) -> dict:
    content = json.loads(r[3]) if r[4] == "json" else r[3]
    return {
        "id": r[0],
        "agentId": r[1],
        "from": r[2],
        "content": content,
        "contentType": r[4],
        "type": r[5],
        "read": bool(r[6]),
        "readAt": r[7],
        "createdAt": r[8],
    }


class Inbox(Primitive):
    name = "inbox"
    load_order = 40

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.team: Any = None  # TeamInbox in team mode: messages for agents of other hosts go through the stream

    def on_team_link(self, link: Any) -> None:
        """Team mode (docs/team.md): a message for an agent of another host is appended to that host's subject."""
        from pdcore.team.inbox import TeamInbox

        self.team = TeamInbox(self, link)

    def send(self, ctx: Ctx, id: str, content: Any = None, message: Any = None, type: str | None = None,
             **sender: Any) -> dict:
        """Put a message in agent `id`'s inbox (`from` names the sender; `message` is a 3.7 alias)."""
        value = content if content is not None else message
        if value is None or (isinstance(value, str) and not value.strip()):
            raise OpError("missing_field", "content is required (the message to deliver)", "content")
        if isinstance(value, str):
            text, kind = value, "text"
        else:
            text, kind = json.dumps(value, separators=(",", ":")), "json"
        if len(text) > self.config.message_max_bytes:
            raise OpError("too_large", f"content is {len(text)} bytes; the limit is {self.config.message_max_bytes} "
                                       "(message_max_bytes)", "content")
        from_agent = sender.get("from") or ctx.agent_id
        host = self.team.host_of(id) if self.team is not None else None
        if host is not None:
            return self.team.send(ctx, host, id, from_agent, text, kind, type or "message")
        id, resolved = self._recipient(id)
        return {**self.deliver(ctx, id, from_agent, text, kind, type or "message"), **resolved}

    def deliver(self, ctx: Ctx, id: str, from_agent: str | None, text: str, kind: str, type: str) -> dict:
        """Store a checked message in agent `id`'s inbox and announce it."""
        cur = self.store.write(
            "INSERT INTO inbox_messages (agent_id, from_agent, content, content_type, type, created_at) "
            "VALUES (?,?,?,?,?,?)",
            (id, from_agent, text, kind, type, ctx.now),
        )
        message_id = cur.lastrowid
        self.store.write(
            "DELETE FROM inbox_messages WHERE agent_id = ? AND id <= ("
            "SELECT id FROM inbox_messages WHERE agent_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (id, id, self.config.inbox_max_per_agent),
        )
        self.root.activity.record(ctx, "inbox.send", id, actor=from_agent, messageId=message_id)
        self.root.publish(inbox_channel(id), {"messageId": message_id, "from": from_agent, "type": type},
                          from_agent, ctx.now)
        return {"messageId": message_id, "agentId": id, "message": f"delivered to {id}"}

    def _recipient(self, id: str) -> tuple[str, dict]:
        """The inbox to deliver to, and what to add to the reply (how a bare fleet name resolved, or a warning)."""
        agents = getattr(self.root, "agents", None)
        if agents is None or agents.get_agent(id) is not None:
            return id, {}
        found = self.fleet_agents(id) if ":" not in id else []
        if len(found) > 1:
            raise OpError("conflict", f"no agent {id} is registered and {len(found)} fleet agents are named {id}: "
                                      f"{', '.join(found)}; send to one of these full ids", "id", candidates=found)
        if found:
            return found[0], {"resolvedFrom": id,
                              "message": f"delivered to {found[0]} (the fleet agent named {id})"}
        return id, {"warning": f"no agent {id} is registered (nor a fleet agent of that name): the message waits "
                               f"in inbox {id} until an agent with that id reads it"}

    def fleet_agents(self, name: str) -> list[str]:
        """The ids of the fleet agents called `name`, sorted: registered live agents first, else declared ones.

        A fleet agent's id is `<fleet>:fleet:<name>` (or its `identity:` template, as the running
        fleet declares it). Declared agents of a running fleet count when none is registered and
        alive: between runs the agent is unregistered, and its next run reads the same inbox.
        """
        agents = self.root.agents
        suffix = f":fleet:{name}"
        spawn = getattr(self.root, "spawn", None)
        declared = spawn.declared_identities(name) if spawn is not None else set()
        live_ids, dead_ids = set(), set()
        for agent in agents.by_id.values():
            if agent.id.endswith(suffix) or agent.id in declared:
                (dead_ids if agent.dead_at is not None else live_ids).add(agent.id)
        return sorted(live_ids or (declared | dead_ids))

    def list(self, ctx: Ctx, id: str, unread: bool | None = False, limit: int = 50, since: int | None = None,
             before: int | None = None) -> dict:
        """Messages of agent `id`, newest first; `before` (a message id) pages further back."""
        clause, params = where_clause(("agent_id = ?", id), ("read = ?", 0 if unread else None),
                                      ("created_at > ?", since), ("id < ?", before))
        rows = self.store.read(f"SELECT {_COLUMNS} FROM inbox_messages{clause} ORDER BY id DESC LIMIT ?",
                               (*params, limit))
        messages = [_row(r) for r in rows]
        return {"agentId": id, "messages": messages, "count": len(messages)}

    def stats(self, ctx: Ctx, id: str) -> dict:
        total, unread = self.store.read_one(
            "SELECT COUNT(*), COALESCE(SUM(read = 0), 0) FROM inbox_messages WHERE agent_id = ?", (id,))
        return {"agentId": id, "total": total, "unread": unread}

    def mark_read(self, ctx: Ctx, id: str, messageId: int) -> dict:
        cur = self.store.write(
            "UPDATE inbox_messages SET read = 1, read_at = COALESCE(read_at, ?) WHERE agent_id = ? AND id = ?",
            (ctx.now, id, messageId),
        )
        if cur.rowcount == 0:
            raise OpError("not_found", f"agent {id} has no inbox message {messageId}", "messageId")
        return {"agentId": id, "messageId": messageId, "read": True}

    def mark_all_read(self, ctx: Ctx, id: str) -> dict:
        cur = self.store.write(
            "UPDATE inbox_messages SET read = 1, read_at = ? WHERE agent_id = ? AND read = 0", (ctx.now, id))
        return {"agentId": id, "marked": cur.rowcount}

    def clear(self, ctx: Ctx, id: str) -> dict:
        cur = self.store.write("DELETE FROM inbox_messages WHERE agent_id = ?", (id,))
        if cur.rowcount:
            self.root.activity.record(ctx, "inbox.clear", id, deleted=cur.rowcount)
        return {"agentId": id, "deleted": cur.rowcount}


PRIMITIVE = Inbox
