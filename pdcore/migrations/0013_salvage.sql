-- The salvage queue: the work of dead agents, waiting to be claimed by another agent.
-- Note bodies are not copied here; they are read (and decrypted) from notes when listed.
CREATE TABLE salvage (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id         TEXT NOT NULL,
    session_id       TEXT NOT NULL,
    identity         TEXT,
    project          TEXT,
    purpose          TEXT,
    last_heartbeat   INTEGER,
    died_at          INTEGER NOT NULL,
    reason           TEXT,
    files            TEXT,
    status           TEXT NOT NULL DEFAULT 'pending',
    claimed_by       TEXT,
    claimed_at       INTEGER,
    claimed_session  TEXT,
    ended_at         INTEGER,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX salvage_status ON salvage(status, id);
CREATE INDEX salvage_agent ON salvage(agent_id, id);
CREATE INDEX salvage_project ON salvage(project, id);
