"""Sessions, notes and file claims against a live daemon: the CLI's per-terminal context, notes that
stay encrypted and immutable in the database, tamper detection, durability across `kill -9` of
the core, and the 4xx of every new route on bad input."""

from __future__ import annotations

import json
import queue
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from pdcore.errors import OpError

REPO = Path(__file__).resolve().parents[2]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Terminal:
    """A shell in a session of its own (like a terminal window); `pd` commands typed into it share
    that session, so they share the CLI's context, and two terminals never do."""

    def __init__(self, daemon, cwd: Path) -> None:
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     env=daemon.env, cwd=cwd, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line)

    def pd(self, *args: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run `pd ARGS` in this terminal; return (exit code, output)."""
        marker = f"__PD_DONE_{uuid.uuid4().hex}__"
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
        self.proc.stdin.write(f"{sys.executable} -m cli.main {quoted}; echo \"{marker} $?\"\n")  # type: ignore
        self.proc.stdin.flush()  # type: ignore[union-attr]
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pd {quoted} did not finish in {timeout}s: {''.join(out)}")
            line = self.lines.get(timeout=left)
            if line.startswith(marker):
                return int(line.split()[-1]), "".join(out)
            out.append(line)

    def json(self, *args: str) -> dict:
        code, text = self.pd("--json", *args)
        assert code == 0, text
        return json.loads(text)

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def terminals(daemon, tmp_path):
    project = tmp_path / unique("proj")
    project.mkdir()
    opened: list[Terminal] = []

    def open_terminal() -> Terminal:
        t = Terminal(daemon, project)
        opened.append(t)
        return t

    yield open_terminal
    for t in opened:
        t.close()


def test_begin_three_notes_done_keeps_them_readable_in_order(daemon, terminals):
    term = terminals()
    began = term.json("begin", "Building auth", "--files", "src/auth/*.ts")
    sid = began["sessionId"]
    for text in ("first: JWT parsing", "second: refresh tokens", "third: tests green"):
        code, out = term.pd("note", text, "--type", "progress")
        assert code == 0, out
    done = term.json("done", "--note", "handing off")
    assert done["sessionStatus"] == "completed" and done["agentUnregistered"] is True
    notes = daemon.client().call("session.notes", id=sid)["notes"]
    assert [n["content"] for n in notes] == ["first: JWT parsing", "second: refresh tokens", "third: tests green",
                                             "handing off"]
    code, out = term.pd("notes", "--session", sid)
    assert code == 0 and out.index("first") < out.index("second") < out.index("third")
    code, out = term.pd("whoami")
    assert code == 0 and "no current agent" in out


def test_two_terminals_in_one_folder_keep_their_own_context(daemon, terminals):
    left, right = terminals(), terminals()
    a = left.json("begin", "left work")
    b = right.json("begin", "right work")
    assert a["agentId"] != b["agentId"]
    assert left.pd("note", "from the left")[0] == 0
    assert right.pd("note", "from the right")[0] == 0
    assert left.json("whoami")["sessionId"] == a["sessionId"]
    assert right.json("whoami")["sessionId"] == b["sessionId"]
    client = daemon.client()
    assert [n["content"] for n in client.call("session.notes", id=a["sessionId"])["notes"]] == ["from the left"]
    assert [n["content"] for n in client.call("session.notes", id=b["sessionId"])["notes"]] == ["from the right"]
    left.json("done")
    assert right.json("whoami")["active"] is True


def test_env_vars_override_the_terminal_context(daemon, tmp_path):
    began = daemon.client().call("sugar.begin", purpose="pinned", agentId=unique("pinned"))
    env = {"PORT_DADDY_AGENT": began["agentId"], "PORT_DADDY_SESSION": began["sessionId"]}
    res = daemon.pd("note", "via env", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    notes = daemon.client().call("session.notes", id=began["sessionId"])["notes"]
    assert [n["content"] for n in notes] == ["via env"]


def pd_in_a_new_terminal(daemon, *args: str, env: dict | None = None, cwd: Path | None = None):
    """`pd ARGS` in a terminal of its own (no context file), with only the PORT_DADDY_* overrides in `env`."""
    full = {k: v for k, v in daemon.env.items() if k not in ("PORT_DADDY_AGENT", "PORT_DADDY_SESSION")}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env={**full, **(env or {})}, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=30, start_new_session=True)


def test_no_current_session_or_agent_is_a_runtime_error_exit_1_not_usage(daemon):
    res = pd_in_a_new_terminal(daemon, "session", "files", "claim", "src/x.py")
    assert res.returncode == 1 and "no current session" in res.stderr, (res.returncode, res.stderr)
    res = pd_in_a_new_terminal(daemon, "done")
    assert res.returncode == 1 and "no current agent or session" in res.stderr, (res.returncode, res.stderr)
    res = pd_in_a_new_terminal(daemon, "agent", "heartbeat")
    assert res.returncode == 1 and "no agent given" in res.stderr, (res.returncode, res.stderr)
    lonely = unique("lonely")
    daemon.client().call("agent.register", id=lonely)
    res = pd_in_a_new_terminal(daemon, "session", "files", "claim", "src/x.py", env={"PORT_DADDY_AGENT": lonely})
    assert res.returncode == 1 and f"agent {lonely} has no active session" in res.stderr, res.stderr


def test_an_agent_alone_in_the_environment_acts_on_its_active_session(daemon):
    client = daemon.client()
    began = client.call("sugar.begin", purpose="h3 work", agentId=unique("h3"), identity=unique("h3proj"))
    env = {"PORT_DADDY_AGENT": began["agentId"]}
    res = pd_in_a_new_terminal(daemon, "session", "files", "claim", "src/h3.py", env=env)
    assert res.returncode == 0, res.stderr
    files = client.call("session.get", id=began["sessionId"])["files"]
    assert [f["path"] for f in files] == ["src/h3.py"]
    res = pd_in_a_new_terminal(daemon, "--json", "session", "get", env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["session"]["id"] == began["sessionId"], res.stderr


def test_sitrep_cuts_long_note_bodies_to_one_line_but_json_keeps_them(daemon):
    client = daemon.client()
    project = unique("sitrep")
    began = client.call("sugar.begin", purpose="writes a long note", agentId=unique("long"), identity=project)
    body = "start of the note\n" + "x" * (60 * 1024)
    client.call("note.add", id=began["sessionId"], content=body)
    res = daemon.pd("sitrep", "--project", project)
    assert res.returncode == 0, res.stderr
    note_lines = [line for line in res.stdout.splitlines() if "start of the note" in line]
    assert len(note_lines) == 1 and note_lines[0].endswith("...") and len(note_lines[0]) < 300, note_lines
    assert max(len(line) for line in res.stdout.splitlines()) < 300
    full = json.loads(daemon.pd("sitrep", "--project", project, "--json").stdout)
    assert [n["content"] for n in full["recentNotes"]] == [body]


def test_note_text_never_appears_in_the_database_or_its_wal(daemon, tmp_path):
    marker = f"SECRET-{uuid.uuid4().hex}"
    began = daemon.client().call("sugar.begin", purpose="secrets", agentId=unique("sec"))
    env = {"PORT_DADDY_AGENT": began["agentId"], "PORT_DADDY_SESSION": began["sessionId"]}
    assert daemon.pd("note", f"the password is {marker}", env=env, cwd=tmp_path).returncode == 0
    assert daemon.pd("done", "--note", f"closing {marker}", env=env, cwd=tmp_path).returncode == 0
    found = [n["content"] for n in daemon.client().call("session.notes", id=began["sessionId"])["notes"]]
    assert found == [f"the password is {marker}", f"closing {marker}"]
    for name in ("state.db", "state.db-wal", "daemon.log"):
        path = daemon.home / name
        if path.exists():
            assert marker.encode() not in path.read_bytes(), f"{name} holds note text in plain form"


def test_the_database_refuses_update_and_delete_of_notes(daemon):
    began = daemon.client().call("sugar.begin", purpose="immutable", agentId=unique("imm"))
    daemon.client().call("note.add", id=began["sessionId"], content="carved in stone")
    db = sqlite3.connect(daemon.home / "state.db", timeout=10)
    try:
        for sql in ("UPDATE notes SET type = 'general'", "DELETE FROM notes"):
            with pytest.raises(sqlite3.DatabaseError, match="immutable"):
                db.execute(sql)
    finally:
        db.close()


def test_tampering_one_ciphertext_byte_is_reported_by_verify(fresh_daemon):
    client = fresh_daemon.client()
    began = client.call("sugar.begin", purpose="audit", agentId=unique("aud"))
    ids = [client.call("note.add", id=began["sessionId"], content=f"entry {i}")["noteId"] for i in range(3)]
    db = sqlite3.connect(fresh_daemon.home / "state.db", timeout=10)
    try:
        blob = bytearray(db.execute("SELECT ciphertext FROM notes WHERE id=?", (ids[1],)).fetchone()[0])
        blob[0] ^= 0x01
        db.execute("DROP TRIGGER notes_no_update")
        db.execute("UPDATE notes SET ciphertext=? WHERE id=?", (bytes(blob), ids[1]))
        db.commit()
    finally:
        db.close()
    res = fresh_daemon.pd("notes", "--verify", "--session", began["sessionId"])
    assert res.returncode == 1
    assert f"note {ids[1]} " in res.stdout and "decrypt_failed" in res.stdout
    assert f"note {ids[0]} " not in res.stdout and f"note {ids[2]} " not in res.stdout


def test_kill_core_right_after_acknowledged_notes_loses_none(fresh_daemon):
    client = fresh_daemon.client()
    began = client.call("sugar.begin", purpose="durable", agentId=unique("dur"))
    acked = [client.call("note.add", id=began["sessionId"], content=f"n{i}")["noteId"] for i in range(50)]
    fresh_daemon.kill_core()
    after = fresh_daemon.client()
    notes = after.call("session.notes", id=began["sessionId"], limit=1000)["notes"]
    assert [n["id"] for n in notes] == acked
    assert after.call("note.verify", sessionId=began["sessionId"])["ok"] is True
    after.call("note.add", id=began["sessionId"], content="after the crash")
    assert after.call("note.verify")["ok"] is True


def test_file_claims_advisory_strict_and_queries_over_http(daemon):
    project = unique("files")
    s1 = daemon.http("POST", "/sessions", {"purpose": "holder", "identity": project, "agentId": unique("h"),
                                          "files": ["src/**"]})[1]["sessionId"]
    s2 = daemon.http("POST", "/sessions", {"purpose": "second", "identity": project, "agentId": unique("s")})[1][
        "sessionId"]
    status, body = daemon.http("POST", f"/sessions/{s2}/files", {"files": ["src/a.py"]})
    assert status == 200 and body["conflicts"][0]["sessionId"] == s1
    status, body = daemon.http("POST", f"/sessions/{s2}/files", {"files": ["src/b.py"], "strict": True})
    assert status == 409 and body["code"] == "file_conflict" and body["field"] == "files"
    status, body = daemon.http("GET", f"/files?project={project}")
    assert status == 200 and sorted(f["path"] for f in body["files"]) == ["src/**", "src/a.py"]
    status, body = daemon.http("GET", f"/files/who-owns?path=src/a.py&project={project}")
    assert sorted(o["sessionId"] for o in body["owners"]) == sorted([s1, s2])
    status, body = daemon.http("DELETE", f"/sessions/{s1}", {"status": "completed"})
    assert status == 200 and body["releasedFiles"] == ["src/**"]
    status, body = daemon.http("GET", f"/files/who-owns?path=src/b.py&project={project}")
    assert body["owned"] is False


def test_session_routes_phase_update_and_notes(daemon):
    sid = daemon.http("POST", "/sessions", {"purpose": "routes", "agentId": unique("r")})[1]["sessionId"]
    assert daemon.http("PUT", f"/sessions/{sid}/phase", {"phase": "testing"})[1]["phase"] == "testing"
    assert daemon.http("PUT", f"/sessions/{sid}", {"purpose": "renamed"})[1]["session"]["purpose"] == "renamed"
    status, body = daemon.http("POST", f"/sessions/{sid}/notes", {"content": "via http", "type": "decision"})
    assert status == 200 and body["noteId"] > 0
    status, body = daemon.http("GET", f"/sessions/{sid}/notes")
    assert [n["content"] for n in body["notes"]] == ["via http"]
    status, body = daemon.http("GET", f"/notes?type=decision&limit=5&sessionId={sid}")
    assert body["count"] == 1
    status, body = daemon.http("GET", f"/sessions/{sid}")
    assert body["session"]["phase"] == "testing" and body["notes"][0]["content"] == "via http"
    status, body = daemon.http("GET", "/sessions?status=active")
    assert any(s["id"] == sid for s in body["sessions"])


def test_sugar_routes_keep_the_37_field_names(daemon):
    agent = unique("sugar")
    status, body = daemon.http("POST", "/sugar/begin", {"purpose": "sugar", "agentId": agent, "identity": "sug:api"})
    assert status == 200
    assert {"success", "agentId", "sessionId", "identity", "purpose", "agentRegistered", "sessionStarted"} <= set(body)
    status, who = daemon.http("GET", f"/sugar/whoami?agentId={agent}")
    assert {"success", "active", "agentId", "sessionId", "purpose", "identity", "noteCount", "duration"} <= set(who)
    assert who["active"] is True
    status, done = daemon.http("POST", "/sugar/done", {"agentId": agent, "note": "fin"})
    assert {"success", "agentId", "sessionId", "sessionStatus", "agentUnregistered"} <= set(done)
    assert done["sessionStatus"] == "completed" and done["agentUnregistered"] is True


def test_heartbeat_is_fire_and_forget_over_ipc(daemon):
    agent = unique("ff")
    client = daemon.client()
    client.fire("heartbeat", id=agent)
    deadline = time.monotonic() + 5
    while True:
        try:
            got = client.call("agent.get", id=agent)["agent"]
            break
        except OpError:
            assert time.monotonic() < deadline, "a fire-and-forget heartbeat never registered the agent"
            time.sleep(0.05)
    assert got["status"] == "alive"
    status, body = daemon.http("POST", f"/agents/{agent}/heartbeat")
    assert status == 200 and body["agentId"] == agent
    status, body = daemon.http("GET", "/agents?active=true")
    assert any(a["id"] == agent for a in body["agents"])
    assert daemon.http("DELETE", f"/agents/{agent}")[0] == 200
    assert daemon.http("GET", f"/agents/{agent}")[0] == 404


BAD_INPUT = [
    # (method, path, body, status, code, field)
    ("POST", "/agents", {"id": "bad id with spaces"}, 400, "invalid_name", "id"),
    ("POST", "/agents", {"id": "x", "pid": "12"}, 400, "invalid_argument", "pid"),
    ("POST", "/agents", {"id": "x", "identity": "a:b:c:d"}, 400, "invalid_identity", "identity"),
    ("POST", "/agents", {"id": "x\u0000y"}, 400, "invalid_name", "id"),
    ("GET", "/agents/nobody-here", None, 404, "not_found", "id"),
    ("DELETE", "/agents/nobody-here", None, 404, "not_found", "id"),
    ("POST", "/sessions", {}, 400, "missing_field", "purpose"),
    ("POST", "/sessions", {"purpose": 42}, 400, "invalid_argument", "purpose"),
    ("POST", "/sessions", {"purpose": "p", "files": ["../../etc/passwd"]}, 400, "invalid_argument", "files"),
    ("POST", "/sessions", {"purpose": "p", "phase": "dreaming"}, 400, "invalid_argument", "phase"),
    ("GET", "/sessions/session-nope", None, 404, "not_found", "id"),
    ("PUT", "/sessions/session-nope/phase", {"phase": "testing"}, 404, "not_found", "id"),
    ("POST", "/sessions/session-nope/notes", {"content": "x"}, 404, "not_found", "id"),
    ("POST", "/sessions/session-nope/files", {"files": ["a"]}, 404, "not_found", "id"),
    ("DELETE", "/sessions/session-nope", None, 404, "not_found", "id"),
    ("POST", "/notes", {}, 400, "missing_field", "content"),
    ("POST", "/notes", {"content": "x", "type": "gossip"}, 400, "invalid_argument", "type"),
    ("POST", "/notes", {"content": "x" * (64 * 1024 + 1)}, 413, "too_large", "content"),
    ("GET", "/notes?limit=abc", None, 400, "invalid_argument", "limit"),
    ("GET", "/files/who-owns", None, 400, "missing_field", "path"),
    ("POST", "/sugar/begin", {}, 400, "missing_field", "purpose"),
    ("POST", "/sugar/begin", {"purpose": "p", "identity": "bad identity!"}, 400, "invalid_identity", "identity"),
    ("POST", "/sugar/done", {}, 400, "missing_field", "agentId"),
    ("POST", "/sugar/done", {"agentId": "nobody-here"}, 404, "not_found", "agentId"),
    ("POST", "/salvage/claim/nobody-here", {"claimedBy": "me"}, 404, "not_found", "agentId"),
    ("POST", "/salvage/claim/nobody-here", {}, 400, "missing_field", "claimedBy"),
    ("POST", "/resurrection/complete/nobody-here", {"newAgentId": "me"}, 404, "not_found", "agentId"),
    ("POST", "/resurrection/complete/nobody-here", {}, 400, "missing_field", "newAgentId"),
    ("GET", "/salvage?status=bogus", None, 400, "invalid_argument", "status"),
]


@pytest.mark.parametrize("method,path,body,status,code,field", BAD_INPUT)
def test_bad_input_gets_the_right_4xx_and_stores_nothing(daemon, method, path, body, status, code, field):
    def counts() -> tuple:
        db = sqlite3.connect(daemon.home / "state.db", timeout=10)
        try:
            return tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                         for t in ("agents", "sessions", "notes", "file_claims", "salvage"))
        finally:
            db.close()

    before = counts()
    got_status, got = daemon.http(method, path, body)
    assert (got_status, got.get("reason"), got.get("field")) == (status, code, field), got
    assert got["success"] is False and got["error"]
    assert counts() == before


def test_oversized_body_is_refused_with_413(daemon):
    status, body = daemon.http("POST", "/notes", {"content": "x" * (2 * 1024 * 1024)})
    assert status == 413 and body["success"] is False


def test_git_guard_refuses_strictly_claimed_files_and_warns_on_advisory_ones(daemon, tmp_path):
    repo = tmp_path / unique("guarded")
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, timeout=30)  # noqa: E731
    git("init", "-q")
    (repo / "src").mkdir()
    for name in ("hard.py", "soft.py", "free.py"):
        (repo / "src" / name).write_text("x = 1\n")
    client = daemon.client()
    project = repo.name
    client.call("sugar.begin", purpose="holds hard", identity=project, agentId=unique("hard"),
                files=["src/hard.py"], strict=True)
    client.call("sugar.begin", purpose="holds soft", identity=project, agentId=unique("soft"), files=["src/soft.py"])
    res = daemon.pd("guard", "install", cwd=repo)
    assert res.returncode == 0 and (repo / ".git" / "hooks" / "pre-commit").exists(), res.stderr
    git("add", "src/free.py", "src/soft.py")
    res = daemon.pd("guard", "check", "--staged", cwd=repo)
    assert res.returncode == 0 and "warning: src/soft.py" in res.stderr
    git("add", "src/hard.py")
    res = daemon.pd("guard", "check", "--staged", cwd=repo)
    assert res.returncode == 1 and "refused: src/hard.py" in res.stderr
    down = daemon.pd("guard", "check", "src/hard.py", cwd=repo, env={"PORT_DADDY_IPC": str(tmp_path / "none.ipc"),
                                                                    "PORT_DADDY_SOCK": str(tmp_path / "none.sock"),
                                                                    "PORT_DADDY_PORT": "1"})
    assert down.returncode == 0 and down.stderr == ""


def test_two_agents_in_one_terminal_do_not_clobber_each_others_context(daemon):
    """bob begins plainly; alice is pinned by the environment in the same terminal. alice's
    begin and done must leave bob's terminal context alone."""
    env = {**daemon.env, "PD": f"{sys.executable} -m cli.main"}
    env.pop("PORT_DADDY_AGENT", None)
    env.pop("PORT_DADDY_SESSION", None)
    bob, alice = unique("bob"), unique("alice")
    script = (f"$PD begin 'bob works' --agent {bob} -q >/dev/null && "
              f"PORT_DADDY_AGENT={alice} $PD begin 'alice works' --agent {alice} -q >/dev/null && "
              f"PORT_DADDY_AGENT={alice} $PD done -q >/dev/null && "
              "$PD whoami --json")
    res = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60,
                         start_new_session=True, cwd=str(REPO))
    assert res.returncode == 0, res.stderr
    me = json.loads(res.stdout)
    assert me["agentId"] == bob and me["sessionId"], me
    assert daemon.client().call("session.get", id=me["sessionId"])["session"]["status"] == "active"
