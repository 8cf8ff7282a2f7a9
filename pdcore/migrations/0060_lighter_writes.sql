-- Lighter writes on the hottest tables (measured with bench_foundation part 2).
-- The activity log is bounded (activity_max rows) and read newest first by id, so a time index
-- only costs inserts; services are keyed by identity, so the table is clustered on it.
DROP INDEX IF EXISTS activity_ts;

CREATE TABLE services_by_id (
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
) WITHOUT ROWID;
INSERT INTO services_by_id SELECT id, port, pid, pid_start, cmd, cwd, status, metadata, pair, endpoints,
    created_at, updated_at, expires_at FROM services;
DROP TABLE services;
ALTER TABLE services_by_id RENAME TO services;
