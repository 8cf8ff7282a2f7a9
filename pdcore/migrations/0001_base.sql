-- Services (port claims) and the activity log.
CREATE TABLE services (
    id          TEXT PRIMARY KEY,
    port        INTEGER NOT NULL UNIQUE,
    pid         INTEGER,
    pid_start   REAL,
    cmd         TEXT,
    cwd         TEXT,
    status      TEXT NOT NULL DEFAULT 'assigned',
    metadata    TEXT,
    pair        TEXT,
    endpoints   TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    expires_at  INTEGER
);

CREATE TABLE activity (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        INTEGER NOT NULL,
    type      TEXT NOT NULL,
    actor     TEXT,
    target    TEXT,
    details   TEXT
);
CREATE INDEX activity_ts ON activity(ts);
CREATE INDEX activity_type ON activity(type, id);
CREATE INDEX activity_actor ON activity(actor, id);
