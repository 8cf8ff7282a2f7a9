-- Registered agents. last_heartbeat is persisted lazily (batched), not on every heartbeat.
CREATE TABLE agents (
    id              TEXT PRIMARY KEY,
    name            TEXT,
    type            TEXT,
    pid             INTEGER,
    pid_start       REAL,
    identity        TEXT,
    purpose         TEXT,
    metadata        TEXT,
    max_services    INTEGER,
    max_locks       INTEGER,
    registered_at   INTEGER NOT NULL,
    last_heartbeat  INTEGER NOT NULL,
    dead_at         INTEGER,
    dead_reason     TEXT
);
CREATE INDEX agents_dead_at ON agents(dead_at);
