-- Immutable, encrypted notes. Bodies are AES-256-GCM ciphertext (never plain text); each row
-- links to the previous note of its session (prev_hash -> hash), a tamper-evident chain.
CREATE TABLE notes (
    id          INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL,
    agent_id    TEXT,
    type        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX notes_session ON notes(session_id, id);
CREATE INDEX notes_agent ON notes(agent_id, id);
CREATE INDEX notes_type ON notes(type, id);

-- Notes are append-only: the database itself refuses to change or remove one.
CREATE TRIGGER notes_no_update BEFORE UPDATE ON notes
BEGIN
    SELECT RAISE(ABORT, 'notes are immutable: UPDATE is not allowed');
END;

CREATE TRIGGER notes_no_delete BEFORE DELETE ON notes
BEGIN
    SELECT RAISE(ABORT, 'notes are immutable: DELETE is not allowed');
END;
