-- The tuple space (SPEC.md §8). Live tuples are in memory; this table makes them durable.
-- AUTOINCREMENT keeps the id sequence in sqlite_sequence, so an id is never reused, even after
-- the newest tuples were taken and the core restarted.
CREATE TABLE tuples (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    harbor      TEXT,
    fields      TEXT NOT NULL,
    written_by  TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
);
