-- Integration signals: "my service is ready" / "my service needs X", newest first.
CREATE TABLE integration_signals (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    identity   TEXT NOT NULL,
    project    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    message    TEXT,
    agent_id   TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX integration_project ON integration_signals(project, id);
CREATE INDEX integration_identity ON integration_signals(identity, id);
