-- Changelog entries: what changed, at the most specific identity (project[:stack[:context]]).
CREATE TABLE changelog (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    identity    TEXT,
    project     TEXT,
    session_id  TEXT,
    agent_id    TEXT,
    type        TEXT NOT NULL,
    summary     TEXT NOT NULL,
    description TEXT,
    metadata    TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX changelog_project ON changelog(project, id);
CREATE INDEX changelog_identity ON changelog(identity, id);
CREATE INDEX changelog_agent ON changelog(agent_id, id);
