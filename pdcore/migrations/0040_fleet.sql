-- Fleets and spawned agent runs (SPEC.md §11). The core keeps the records; the fleet runner
-- (an IPC client) runs the processes and reports back.

-- Daemon-managed fleets: `POST /fleet/register` makes the daemon's fleet runner run them.
CREATE TABLE fleets (
    name           TEXT PRIMARY KEY,
    project_dir    TEXT NOT NULL,
    file           TEXT,
    registered_at  INTEGER NOT NULL,
    registered_by  TEXT
);

-- Every agent run: ad-hoc spawns (`POST /spawn`, id = agent id) and fleet runs (reported by
-- the runner). Bounded by spawn_history_max; the oldest finished runs are dropped first.
CREATE TABLE spawns (
    id              TEXT PRIMARY KEY,
    agent_id        TEXT NOT NULL,
    fleet           TEXT,
    agent           TEXT,
    backend         TEXT NOT NULL,
    model           TEXT,
    task            TEXT,
    identity        TEXT,
    purpose         TEXT,
    spec            TEXT,
    trigger_name    TEXT,
    state           TEXT NOT NULL,
    outcome         TEXT,
    exit_code       INTEGER,
    pid             INTEGER,
    respawns        INTEGER NOT NULL DEFAULT 0,
    log_path        TEXT,
    session_id      TEXT,
    reason          TEXT,
    kill_requested  INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    ended_at        INTEGER,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX spawns_agent ON spawns(agent_id);
CREATE INDEX spawns_created ON spawns(created_at);
