-- The arbiter (SPEC.md §12): violations of the six invariants, and agents thrown overboard
-- in strict mode (their writes are refused until they register again).
CREATE TABLE arbiter_violations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          INTEGER NOT NULL,
    rule        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    agent_id    TEXT,
    target      TEXT,
    details     TEXT NOT NULL,
    action      TEXT NOT NULL,
    subject     TEXT,
    metadata    TEXT
);
CREATE INDEX arbiter_violations_rule ON arbiter_violations(rule, id);
CREATE INDEX arbiter_violations_agent ON arbiter_violations(agent_id, id);

CREATE TABLE arbiter_overboard (
    agent_id      TEXT PRIMARY KEY,
    violation_id  INTEGER NOT NULL,
    rule          TEXT NOT NULL,
    since         INTEGER NOT NULL
);
