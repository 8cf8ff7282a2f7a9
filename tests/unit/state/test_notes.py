import os
import sqlite3
import stat

import pytest

from pdcore.crypto import MasterKeyError, load_or_create_key
from pdcore.errors import OpError

# Flips a note's first ciphertext byte (a constant byte would leave it unchanged once in 256 runs).
FLIP_FIRST_BYTE = ("UPDATE notes SET ciphertext = CASE WHEN substr(ciphertext, 1, 1) = X'00' THEN X'01' "
                   "ELSE X'00' END || substr(ciphertext, 2) WHERE id=?")

def _session(h, agent="writer"):
    return h.state.sessions.start(h.ctx(), purpose="notes", agentId=agent, identity="proj:api")["sessionId"]


def _tamper(h, sql, params=()):
    """Change the notes table behind the daemon's back (the triggers must go first)."""
    h.store.commit()
    db = h.store.db
    db.execute("DROP TRIGGER notes_no_update")
    db.execute("DROP TRIGGER notes_no_delete")
    db.execute(sql, params)


def test_notes_are_kept_and_read_back_in_order(harness):
    sid = _session(harness)
    for i, kind in enumerate(("progress", "decision", "blocker")):
        harness.clock.advance(10)
        harness.state.notes.add(harness.ctx(), id=sid, content=f"step {i}", type=kind)
    notes = harness.state.notes.session_notes(harness.ctx(), id=sid)["notes"]
    assert [(n["content"], n["type"]) for n in notes] == [("step 0", "progress"), ("step 1", "decision"),
                                                          ("step 2", "blocker")]
    assert all(n["integrity"] == "ok" for n in notes)
    assert harness.state.sessions.get(harness.ctx(), id=sid)["session"]["noteCount"] == 3


def test_database_refuses_update_and_delete_of_notes(harness):
    sid = _session(harness)
    harness.state.notes.add(harness.ctx(), id=sid, content="immutable")
    harness.store.commit()
    db = sqlite3.connect(harness.config.db_path)
    try:
        for sql in ("UPDATE notes SET type='general'", "DELETE FROM notes"):
            with pytest.raises(sqlite3.DatabaseError, match="immutable"):
                db.execute(sql)
    finally:
        db.close()


def test_note_text_is_never_stored_in_plain_form(harness):
    marker = "PLAINTEXT-MARKER-7f3a9c"
    sid = _session(harness)
    harness.state.notes.add(harness.ctx(), id=sid, content=f"the secret is {marker}")
    harness.state.sugar.done(harness.ctx(), sessionId=sid, note=f"closing {marker}")
    harness.store.commit()
    for suffix in ("", "-wal"):
        path = f"{harness.config.db_path}{suffix}"
        if os.path.exists(path):
            assert marker.encode() not in open(path, "rb").read()


def test_oversized_note_is_refused_with_413_and_nothing_stored(make_harness):
    h = make_harness(note_max_bytes=100)
    sid = _session(h)
    with pytest.raises(OpError) as exc:
        h.state.notes.add(h.ctx(), id=sid, content="é" * 51)  # 102 bytes
    assert (exc.value.code, exc.value.status, exc.value.field) == ("too_large", 413, "content")
    assert h.store.read_one("SELECT COUNT(*) FROM notes")[0] == 0


def test_unknown_type_and_empty_note_are_refused(harness):
    sid = _session(harness)
    with pytest.raises(OpError) as exc:
        harness.state.notes.add(harness.ctx(), id=sid, content="x", type="gossip")
    assert exc.value.field == "type"
    with pytest.raises(OpError) as exc:
        harness.state.notes.add(harness.ctx(), id=sid, content="   ")
    assert exc.value.field == "content"


def test_notes_to_an_ended_session_are_refused(harness):
    sid = _session(harness)
    harness.state.sessions.end(harness.ctx(), id=sid)
    with pytest.raises(OpError) as exc:
        harness.state.notes.add(harness.ctx(), id=sid, content="late")
    assert exc.value.code == "session_ended"


def test_quick_note_uses_the_active_session_or_starts_one(harness):
    sid = _session(harness, agent="quick")
    out = harness.state.notes.quick(harness.ctx(agent_id="quick"), content="attached")
    assert out["sessionId"] == sid and out["sessionCreated"] is False
    lone = harness.state.notes.quick(harness.ctx(), content="nobody")
    again = harness.state.notes.quick(harness.ctx(), content="nobody again")
    assert lone["sessionCreated"] is True and again["sessionId"] == lone["sessionId"]


def test_list_filters_by_type_agent_and_session(harness):
    s1, s2 = _session(harness, "one"), _session(harness, "two")
    harness.state.notes.add(harness.ctx(), id=s1, content="a", type="decision")
    harness.state.notes.add(harness.ctx(), id=s2, content="b")
    harness.state.notes.add(harness.ctx(), id=s2, content="c", type="decision")
    assert [n["content"] for n in harness.state.notes.list(harness.ctx(), type="decision")["notes"]] == ["a", "c"]
    assert [n["content"] for n in harness.state.notes.list(harness.ctx(), agentId="two")["notes"]] == ["b", "c"]
    assert harness.state.notes.list(harness.ctx(), limit=1)["notes"][0]["content"] == "c"


def test_verify_passes_on_an_untouched_chain_and_across_restart(harness):
    sid = _session(harness)
    harness.state.notes.add(harness.ctx(), id=sid, content="before")
    harness.reopen()
    harness.state.notes.add(harness.ctx(), id=sid, content="after")
    out = harness.state.notes.verify(harness.ctx())
    assert out["ok"] is True and out["checked"] == 2


def test_verify_reports_a_tampered_ciphertext(harness):
    sid = _session(harness)
    ids = [harness.state.notes.add(harness.ctx(), id=sid, content=f"n{i}")["noteId"] for i in range(3)]
    _tamper(harness, FLIP_FIRST_BYTE, (ids[1],))
    out = harness.state.notes.verify(harness.ctx(), sessionId=sid)
    assert out["ok"] is False
    assert [(b["noteId"], b["reasons"]) for b in out["broken"]] == [(ids[1], ["hash_mismatch", "decrypt_failed"])]
    listed = harness.state.notes.session_notes(harness.ctx(), id=sid)["notes"]
    assert listed[1]["content"] is None and listed[1]["integrity"] == "failed"


def test_ciphertext_moved_to_another_note_does_not_decrypt(harness):
    sid = _session(harness)
    a = harness.state.notes.add(harness.ctx(), id=sid, content="first")["noteId"]
    b = harness.state.notes.add(harness.ctx(), id=sid, content="second")["noteId"]
    _tamper(harness, "UPDATE notes SET nonce=(SELECT nonce FROM notes WHERE id=?), "
            "ciphertext=(SELECT ciphertext FROM notes WHERE id=?) WHERE id=?", (a, a, b))
    out = harness.state.notes.verify(harness.ctx())
    assert any(x["noteId"] == b and "decrypt_failed" in x["reasons"] for x in out["broken"])


def test_verify_catches_a_removed_note(harness):
    sid = _session(harness)
    ids = [harness.state.notes.add(harness.ctx(), id=sid, content=f"n{i}")["noteId"] for i in range(3)]
    _tamper(harness, "DELETE FROM notes WHERE id=?", (ids[-1],))
    out = harness.state.notes.verify(harness.ctx())
    assert [b["reasons"] for b in out["broken"]] == [["head_mismatch"]]


def test_master_key_is_created_once_with_mode_0600(harness):
    path = harness.config.key_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = open(path, "rb").read()
    harness.reopen()
    assert open(path, "rb").read() == key


def test_loose_key_permissions_stop_the_load(harness):
    os.chmod(harness.config.key_path, 0o644)
    with pytest.raises(MasterKeyError, match="0600"):
        harness.reopen()


def test_wrong_key_length_stops_the_load(tmp_path):
    path = tmp_path / "master.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(MasterKeyError, match="32 bytes"):
        load_or_create_key(path, sealed_exist=False)


def test_missing_key_with_notes_is_never_regenerated(harness):
    sid = _session(harness)
    harness.state.notes.add(harness.ctx(), id=sid, content="needs the key")
    harness.store.commit()
    os.unlink(harness.config.key_path)
    with pytest.raises(MasterKeyError, match="missing"):
        harness.reopen()
    assert not os.path.exists(harness.config.key_path)


def test_audit_reports_tampering_to_the_arbiter(harness):
    class Recorder:
        def __init__(self):
            self.chain, self.integrity = [], []

        def check_note_chain(self, ctx, sid, ok, note_id=None, agent_id=None, detail=""):
            self.chain.append((note_id, ok))

        def check_note_integrity(self, ctx, note_id, sid, ok, agent_id=None, detail=""):
            self.integrity.append((note_id, ok))

    sid = _session(harness)
    ids = [harness.state.notes.add(harness.ctx(), id=sid, content=f"n{i}")["noteId"] for i in range(2)]
    _tamper(harness, FLIP_FIRST_BYTE, (ids[0],))
    rec = Recorder()
    harness.state.notes.arbiter_audit(harness.ctx(), rec)
    assert rec.integrity == [(ids[0], False), (ids[1], True)]
    assert rec.chain == [(ids[0], False), (ids[1], True)]
