-- Durable direct messages to one agent, with read state.
CREATE TABLE inbox_messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id     TEXT NOT NULL,
    from_agent   TEXT,
    content      TEXT NOT NULL,
    content_type TEXT NOT NULL DEFAULT 'text',
    type         TEXT NOT NULL DEFAULT 'message',
    read         INTEGER NOT NULL DEFAULT 0,
    read_at      INTEGER,
    created_at   INTEGER NOT NULL
);
CREATE INDEX inbox_agent ON inbox_messages(agent_id, id);
CREATE INDEX inbox_unread ON inbox_messages(agent_id, id) WHERE read = 0;
