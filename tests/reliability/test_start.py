"""A start the daemon can trust: a wrong key, a missing, empty or corrupt state.db, or a bad setting
is refused by a real `pd start` (and supervisor) in one line, with no traceback, nothing written and
nothing left running; the documented ways back (pd restore, pd start --new-state) work, and
`pd doctor` names each case."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pdcore.crypto import key_check
from tests.conftest import REPO, Daemon

CORRUPT_NOTES = 400  # notes of 1 KiB: enough pages that one in the middle is a table or index page


def snapshot(home: Path) -> dict[str, tuple[int, int, str]]:
    """Every file of the home but the log: size, mtime and hash (what a refused start must not change)."""
    found = {}
    for path in sorted(home.rglob("*")):
        if path.is_file() and not path.name.startswith("daemon.log"):
            data = path.read_bytes()
            found[str(path.relative_to(home))] = (len(data), path.stat().st_mtime_ns, hashlib.sha256(data).hexdigest())
    return found


def daemon_processes(home: Path) -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter(["environ"]):
        try:
            if (proc.info.get("environ") or {}).get("PORT_DADDY_HOME") == str(home):
                alive.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return alive


def assert_refused(d: Daemon, out: subprocess.CompletedProcess, before: dict, *words: str) -> str:
    """One line on stderr naming `words`, a non-zero exit, no traceback anywhere, nothing written or running."""
    log = d.log_tail(10_000)
    assert out.returncode != 0, out.stdout
    assert out.stderr.count("\n") == 1 and out.stderr.strip(), out.stderr
    for text in (out.stdout, out.stderr, log):
        assert "Traceback" not in text, text
    for word in words:
        assert word in out.stderr, (word, out.stderr)
    assert snapshot(d.home) == before
    deadline = time.monotonic() + 5
    while daemon_processes(d.home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon_processes(d.home) == []
    return out.stderr.strip()


def home_with_data(notes: int = 3, note_bytes: int = 20) -> tuple[Daemon, str]:
    """A home whose daemon stored claims, a session and notes, then stopped cleanly; returns it and the session."""
    d = Daemon(ipc_rate_limit=0).start()
    sdk = d.client()
    for i in range(20):
        sdk.port_claim(id=f"start-check:svc{i}:main")
    session = sdk.call("sugar.begin", purpose="start checks", agentId="start-checker")["sessionId"]
    for i in range(notes):
        sdk.note_add(id=session, content=f"note {i} " + "x" * note_bytes)
    for c in d._clients:
        c.close()
    d._clients.clear()
    d.proc.terminate()
    assert d.proc.wait(timeout=30) == 0
    return d, session


def doctor_says(d: Daemon, text: str) -> None:
    out = d.pd("doctor")
    assert out.returncode == 1 and text in out.stdout and "Traceback" not in out.stdout + out.stderr, out.stdout


def notes_of(d: Daemon, session: str) -> list[str]:
    return [n["content"] for n in d.client().call("note.list", id=session, limit=1000)["notes"]]


def write_key(path: Path, key: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, key)
    os.close(fd)


def test_a_wrong_key_is_refused_and_the_right_one_still_opens_everything():
    d, session = home_with_data()
    try:
        key_path = d.home / "master.key"
        right = key_path.read_bytes()
        write_key(key_path, os.urandom(32))
        before = snapshot(d.home)
        line = assert_refused(d, d.pd("start"), before, str(key_path), "state.db", "pd start --new-state",
                              "pd restore")
        assert "is not the key" in line
        doctor_says(d, "is not the key")
        write_key(key_path, right)
        assert d.pd("start").returncode == 0
        assert notes_of(d, session) == [f"note {i} " + "x" * 20 for i in range(3)]
    finally:
        d.pd("stop")
        d.stop()


def test_a_database_from_before_the_key_check_gets_it_only_when_the_key_opens_its_notes():
    d, session = home_with_data()
    try:
        db = sqlite3.connect(d.home / "state.db")
        db.execute("DELETE FROM meta")  # as a database made before the check existed
        db.commit()
        db.close()
        key_path = d.home / "master.key"
        right = key_path.read_bytes()
        write_key(key_path, os.urandom(32))
        before = snapshot(d.home)
        assert_refused(d, d.pd("start"), before, str(key_path), "is not the key")
        write_key(key_path, right)
        assert d.pd("start").returncode == 0
        assert d.pd("stop").returncode == 0
        db = sqlite3.connect(f"file:{d.home / 'state.db'}?mode=ro", uri=True)
        assert db.execute("SELECT value FROM meta WHERE key = 'master_key_check'").fetchone() == (key_check(right),)
        db.close()
    finally:
        d.pd("stop")
        d.stop()


def test_an_empty_database_is_refused_and_new_state_starts_afresh_keeping_it_aside():
    d, session = home_with_data()
    try:
        (d.home / "state.db").write_bytes(b"")
        before = snapshot(d.home)
        assert_refused(d, d.pd("start"), before, "state.db is empty", "pd restore", "pd start --new-state")
        doctor_says(d, "is empty (0 bytes)")
        fresh = d.pd("start", "--new-state")
        assert fresh.returncode == 0, fresh.stderr
        aside = list(d.home.glob("state.db.broken-*"))
        assert [p.stat().st_size for p in aside] == [0]  # kept, never deleted
        assert d.client().port_claim(id="after:afresh:main")["port"]
        assert d.pd("stop").returncode == 0
        again = d.pd("start", "--new-state")  # a healthy state is never replaced
        assert again.returncode == 1 and "nothing to start afresh" in again.stderr
    finally:
        d.pd("stop")
        d.stop()


def test_a_missing_database_beside_its_key_is_refused_without_making_a_new_one():
    d, _ = home_with_data()
    try:
        (d.home / "state.db").unlink()
        before = snapshot(d.home)
        assert_refused(d, d.pd("start"), before, "state.db is missing", "master.key exists", "pd restore")
        assert not (d.home / "state.db").exists() and not (d.home / "state.db-wal").exists()
        doctor_says(d, "is missing")
        assert d.pd("start", "--new-state").returncode == 0
        assert d.pd("status").returncode == 0
    finally:
        d.pd("stop")
        d.stop()


def _corrupt_a_middle_page(db_path: Path) -> int:
    """Overwrite a b-tree page from the middle of the file; return its number."""
    db = sqlite3.connect(db_path)
    db.execute("VACUUM")  # no free pages: every page belongs to a table or an index
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = db_path.read_bytes()
    pages = len(data) // page_size
    index = next(n for n in range(pages // 2, pages) if data[n * page_size] in (0x02, 0x05, 0x0A, 0x0D))
    with open(db_path, "r+b") as f:
        f.seek(index * page_size)
        f.write(bytes(page_size))
    return index + 1


def test_a_corrupt_page_in_the_middle_is_refused_and_pd_restore_brings_the_data_back(tmp_path):
    d, session = home_with_data(notes=CORRUPT_NOTES, note_bytes=1024)
    try:
        backup = tmp_path / "bk"
        assert d.pd("start").returncode == 0
        assert d.pd("backup", str(backup)).returncode == 0
        assert d.pd("stop").returncode == 0
        size = (d.home / "state.db").stat().st_size
        page = _corrupt_a_middle_page(d.home / "state.db")
        before = snapshot(d.home)
        started = time.monotonic()
        out = d.pd("start")
        refused_in = time.monotonic() - started
        assert_refused(d, out, before, "state.db", "pd restore", "pd start --new-state")
        assert "quick_check" in out.stderr or "cannot be read" in out.stderr
        doctor_says(d, "state.db")
        restored = d.pd("restore", str(backup))
        assert restored.returncode == 0, restored.stderr
        assert d.pd("start").returncode == 0
        assert len(notes_of(d, session)) == CORRUPT_NOTES
        print(f"page {page} of a {size / 1e6:.1f} MB state.db zeroed: refused in {refused_in:.2f}s (pd start)")
    finally:
        d.pd("stop")
        d.stop()


def test_a_core_that_refuses_after_a_crash_stops_the_daemon_instead_of_looping():
    d, _ = home_with_data()
    try:
        d.start()  # the supervisor as our child, to read its exit code
        (d.home / "state.db").unlink()  # vanishes under the running core, which keeps its open file
        log_size = (d.home / "daemon.log").stat().st_size
        os.kill(d.core_pid(), 9)
        assert d.proc.wait(timeout=30) == 78
        since = (d.home / "daemon.log").read_bytes()[log_size:].decode(errors="replace")
        assert since.count("event=child.spawn name=core") == 1, since  # one restart, refused, no loop
        assert "state.db is missing" in since and "Traceback" not in since
        assert daemon_processes(d.home) == []
    finally:
        d.stop()


BAD_FILES = [
    ("tcp_port: abc\n", ["tcp_port", "'abc'", "1 to 65535"]),
    ("port_range_start: abc\n", ["port_range_start", "'abc'", "whole number"]),
    ("tcp_port: [1, 2\n", ["line 2", "not valid YAML"]),
    ("tcp_prot: 9000\n", ["unknown setting 'tcp_prot'", "did you mean 'tcp_port'"]),
    ("no_tcp: maybe\n", ["no_tcp", "'maybe'", "true or false"]),
    ("http_workers: 1.5\n", ["http_workers", "1.5", "whole number above 0"]),
    ("webhook_timeout_s: 0\n", ["webhook_timeout_s", "above 0"]),
    ("reserved_ports: {a: 1}\n", ["reserved_ports", "a list of whole numbers"]),
    ("pheromone_half_life_overrides: [1]\n", ["pheromone_half_life_overrides", "a mapping"]),
    ("port_range_start: 5000\nport_range_end: 4000\n", ["port_range_start is 5000", "must be below port_range_end"]),
    ("db_synchronous: sometimes\n", ["db_synchronous", "'sometimes'", "OFF, NORMAL, FULL, EXTRA"]),
]
BAD_ENV = [
    ({"PORT_DADDY_PORT": "abc"}, ["PORT_DADDY_PORT", "tcp_port", "'abc'", "1 to 65535"]),
    ({"PORT_DADDY_PORT_RANGE_START": "abc"}, ["PORT_DADDY_PORT_RANGE_START", "'abc'"]),
    ({"PORT_DADDY_NO_TCP": "maybe"}, ["PORT_DADDY_NO_TCP", "no_tcp", "true or false"]),
    ({"PORT_DADDY_DB_SYNCHRONOUS": "FULL; DROP TABLE notes"}, ["PORT_DADDY_DB_SYNCHRONOUS", "one of"]),
    ({"PORT_DADDY_IPC_MAX_CONNECTIONS": "0"}, ["PORT_DADDY_IPC_MAX_CONNECTIONS", "above 0"]),
    ({"PORT_DADDY_RESERVED_PORTS": "80,http"}, ["PORT_DADDY_RESERVED_PORTS", "comma separated"]),
]


@pytest.mark.parametrize("content,words", BAD_FILES, ids=[c.split(":")[0] + str(i) for i, (c, _) in
                                                           enumerate(BAD_FILES)])
def test_a_bad_config_file_is_one_line_before_anything_starts(content, words):
    d = Daemon()
    try:
        cfg = d.home / "config.yaml"
        cfg.write_text(content)
        _refused_everywhere(d, {}, [str(cfg), *words])
    finally:
        d.stop()


@pytest.mark.parametrize("env,words", BAD_ENV, ids=[next(iter(e)) for e, _ in BAD_ENV])
def test_a_bad_environment_variable_is_one_line_before_anything_starts(env, words):
    d = Daemon()
    try:
        _refused_everywhere(d, env, words)
    finally:
        d.stop()


def _refused_everywhere(d: Daemon, env: dict, words: list[str]) -> None:
    """`pd start`, the supervisor run by hand, and a command that loads the config all give the same line."""
    before = snapshot(d.home)
    line = assert_refused(d, d.pd("start", env=env), before, *words)
    assert line.startswith("pd: ")
    supervisor = subprocess.run([sys.executable, "-m", "pdcore.supervisor"], env={**d.env, **env}, cwd=REPO,
                                capture_output=True, text=True, timeout=60)
    assert_refused(d, supervisor, before, *words)
    assert supervisor.returncode == 78 and supervisor.stderr.strip() == "port-daddy: " + line[len("pd: "):]
    claim = d.pd("claim", "x:y:z", env=env)
    assert claim.returncode == 1 and claim.stderr.strip() == line
    doctor = d.pd("doctor", env=env)
    assert doctor.returncode == 1 and line[len("pd: "):] in doctor.stdout
    assert "Traceback" not in doctor.stdout + doctor.stderr
    assert snapshot(d.home) == before and not (d.home / "state.db").exists()


def test_a_bad_dev_port_is_one_line_naming_its_variable(tmp_path):
    d = Daemon()
    try:
        r = d.pd("dev", "status", env={"PORT_DADDY_DEV_HOME": str(tmp_path / "dev"), "PORT_DADDY_DEV_PORT": "abc"})
        assert r.returncode == 1, r
        assert "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "PORT_DADDY_DEV_PORT" in lines[0] and "'abc'" in lines[0], r.stderr
    finally:
        d.stop()
