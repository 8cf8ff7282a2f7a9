-- Durable locks (those with a TTL) and the block-reserved sequences that must never go backwards
-- across restarts: lock fencing tokens and pub/sub message ids.
CREATE TABLE locks (
    name        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    fence       INTEGER NOT NULL,
    agent_id    TEXT,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    metadata    TEXT
);
CREATE INDEX locks_owner ON locks(owner);

CREATE TABLE sequence_blocks (
    name     TEXT PRIMARY KEY,
    ceiling  INTEGER NOT NULL
);
