-- Facts about the database itself, one row each: e.g. `master_key_check`, which tells whether a
-- master key is the one this database was sealed with (pdcore.crypto.key_check; never the key).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
