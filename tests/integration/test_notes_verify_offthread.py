"""`note.verify` reads every note off the core's thread: the daemon keeps answering meanwhile."""

from __future__ import annotations

import sqlite3
import threading
import time

from pdcore.crypto import NoteCipher, load_or_create_key
from tests.integration.test_sessions_cli import unique

EXTRA_NOTES = 60_000  # enough for a verify to take a few hundred ms on a CI machine


def _append_valid_notes(home, session_id: str, agent: str, count: int) -> int:
    """Continue a session's hash chain with `count` genuine notes written by SQL (fast)."""
    cipher = NoteCipher(load_or_create_key(home / "master.key", True))
    db = sqlite3.connect(home / "state.db", timeout=10)
    try:
        next_id = db.execute("SELECT MAX(id) FROM notes").fetchone()[0] + 1
        prev = db.execute("SELECT note_head FROM sessions WHERE id=?", (session_id,)).fetchone()[0]
        rows, now = [], int(time.time() * 1000)
        for note_id in range(next_id, next_id + count):
            nonce, ciphertext = cipher.encrypt(note_id, session_id, f"bulk note {note_id}")
            link = cipher.link(prev, note_id, session_id, agent, "general", now, nonce, ciphertext)
            rows.append((note_id, session_id, agent, "general", now, nonce, ciphertext, prev, link))
            prev = link
        with db:
            db.executemany("INSERT INTO notes (id, session_id, agent_id, type, created_at, nonce, ciphertext, "
                           "prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?)", rows)
            db.execute("UPDATE sessions SET note_count = note_count + ?, note_head=? WHERE id=?",
                       (count, prev, session_id))
    finally:
        db.close()
    return count


def test_verify_of_many_notes_does_not_stall_the_core(fresh_daemon):
    client = fresh_daemon.client()
    agent = unique("bulk")
    began = client.call("sugar.begin", purpose="bulk", agentId=agent)
    sid = began["sessionId"]
    for i in range(3):
        client.call("note.add", id=sid, content=f"real {i}")
    added = _append_valid_notes(fresh_daemon.home, sid, agent, EXTRA_NOTES)
    fresh_daemon.kill_core()  # the core reloads the session rows written behind its back

    result: dict = {}

    def verify() -> None:
        started = time.monotonic()
        result["reply"] = fresh_daemon.client().call("note.verify")
        result["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=verify)
    worker.start()
    probe = fresh_daemon.client()
    slowest = 0.0
    deadline = time.monotonic() + 120
    while worker.is_alive() and time.monotonic() < deadline:
        t0 = time.monotonic()
        probe.call("daemon.health")
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.005)
    worker.join(timeout=5)
    reply = result["reply"]
    assert reply["ok"] is True and reply["checked"] == added + 3
    # The scan takes a while; had it run on the core's thread, one health call would have waited for all of it.
    assert result["seconds"] > 0.2
    assert slowest < result["seconds"] / 2, (slowest, result["seconds"])


def test_verify_sees_a_note_added_in_the_same_pipelined_burst(fresh_daemon):
    client = fresh_daemon.client()
    began = client.call("sugar.begin", purpose="burst", agentId=unique("burst"))
    sid = began["sessionId"]
    for i in range(5):
        client.call("note.add", id=sid, content=f"n{i}")
        assert client.call("note.verify", sessionId=sid)["checked"] == i + 1
