-- Harbors (SPEC.md §10): named namespaces with declared capabilities and member agents.
CREATE TABLE harbors (
    name          TEXT PRIMARY KEY,
    capabilities  TEXT NOT NULL DEFAULT '[]',
    channels      TEXT NOT NULL DEFAULT '[]',
    metadata      TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER
);

CREATE TABLE harbor_members (
    harbor_name   TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    identity      TEXT,
    capabilities  TEXT NOT NULL DEFAULT '[]',
    joined_at     INTEGER NOT NULL,
    PRIMARY KEY (harbor_name, agent_id)
);
CREATE INDEX harbor_members_agent ON harbor_members(agent_id);
