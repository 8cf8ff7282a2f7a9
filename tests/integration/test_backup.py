"""pd backup / pd restore against a real daemon: a consistent copy taken while claims keep
coming, private files, and a restore that brings back exactly the state of the backup."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import uuid


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def test_backup_while_running_then_restore_brings_back_exactly_that_state(fresh_daemon, tmp_path):
    d = fresh_daemon
    sdk = d.client()
    kept = {unique("kept") + ":api:main" for _ in range(20)}
    ports = {ident: sdk.port_claim(id=ident)["port"] for ident in kept}
    session = sdk.call("sugar.begin", purpose="backup test", agentId=unique("bk"))["sessionId"]
    sdk.note_add(id=session, content="the note that must survive")

    stop = threading.Event()
    during: list[str] = []

    def keep_claiming() -> None:  # the daemon keeps taking writes while the copy is made
        c = d.client()
        while not stop.is_set() and len(during) < 2000:
            ident = unique("during") + ":api:main"
            c.port_claim(id=ident)
            during.append(ident)

    writer = threading.Thread(target=keep_claiming)
    writer.start()
    try:
        dest = tmp_path / "bk"
        out = d.pd("backup", str(dest), "--json")
    finally:
        stop.set()
        writer.join(timeout=30)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["masterKey"] is True and report["counts"]["notes"] == 1
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert {p.name for p in dest.iterdir()} == {"state.db", "master.key"}  # one self-contained file, no WAL
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in dest.iterdir())
    copy = sqlite3.connect(f"file:{dest / 'state.db'}?mode=ro", uri=True)
    saved = dict(copy.execute("SELECT id, port FROM services").fetchall())
    copy.close()
    assert all(saved.get(ident) == port for ident, port in ports.items())  # every write acknowledged before

    later = unique("later") + ":api:main"
    sdk.port_claim(id=later)
    refused = d.pd("restore", str(dest))
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    assert d.pd("backup", str(dest)).returncode == 1  # no silent overwrite without --force

    assert d.pd("stop").returncode == 0
    restored = d.pd("restore", str(dest), "--json")
    assert restored.returncode == 0, restored.stderr
    aside = json.loads(restored.stdout)["keptAside"]
    assert aside and all(os.path.exists(p) for p in aside)  # the state it replaced is kept, never deleted
    assert d.pd("start").returncode == 0
    after = d.client()
    assert all(after.port_get(id=ident)["service"]["port"] == port for ident, port in ports.items())
    assert after.port_list(pattern=later)["count"] == 0  # made after the backup: not in it
    notes = after.call("note.list", id=session)["notes"]
    assert [n["content"] for n in notes] == ["the note that must survive"]  # the key came back with it


def test_backup_refuses_a_folder_open_to_others_and_restore_a_folder_without_a_copy(daemon, tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    out = daemon.pd("backup", str(open_dir))
    assert out.returncode == 1 and "closed to others" in out.stderr and not (open_dir / "state.db").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    idle_home = tmp_path / "idle-home"
    idle_home.mkdir(mode=0o700)
    out = daemon.pd("restore", str(empty), env={"PORT_DADDY_HOME": str(idle_home)})
    assert out.returncode == 1 and "holds no state.db" in out.stderr, out.stderr
    assert list(idle_home.iterdir()) == []  # nothing touched
