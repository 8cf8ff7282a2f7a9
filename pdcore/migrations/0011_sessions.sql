-- Sessions and their advisory file claims.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    agent_id    TEXT,
    identity    TEXT,
    project     TEXT,
    purpose     TEXT NOT NULL,
    phase       TEXT NOT NULL DEFAULT 'planning',
    status      TEXT NOT NULL DEFAULT 'active',
    metadata    TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    note_count  INTEGER NOT NULL DEFAULT 0,   -- notes appended so far
    note_head   TEXT                          -- chain link of the last note (detects a removed tail)
);
CREATE INDEX sessions_status ON sessions(status, created_at);
CREATE INDEX sessions_agent ON sessions(agent_id, created_at);
CREATE INDEX sessions_project ON sessions(project, created_at);

CREATE TABLE file_claims (
    session_id  TEXT NOT NULL,
    path        TEXT NOT NULL,
    claimed_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    strict      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, path)
);
