-- Results of takes (tuple.in, salvage.claim) made with a caller's request id, written in the
-- same transaction as the take, so a repeat of the take after a lost reply gets the same result
-- instead of taking again. Kept for take_record_ttl_ms, at most take_records_max rows.
CREATE TABLE take_records (
    request_id  TEXT PRIMARY KEY,
    action      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX take_records_expiry ON take_records (expires_at);
