"""3.7 clients over daemon.sock: the sugar routes and salvage/resurrection (SPEC.md §4, §5)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.compat.conftest import sock_http


@pytest.fixture(scope="module")
def reaping():
    """A daemon whose reaper looks at pids every 300 ms (dead agents reach salvage fast)."""
    from tests.conftest import Daemon

    d = Daemon(ipc_rate_limit=0, reaper_interval_ms=300).start()
    yield d
    d.stop()


def _dead_agent(daemon, project: str, agent: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        status, _ = sock_http(daemon, "POST", "/sugar/begin", {"purpose": "migrate", "identity": f"{project}:db",
                                                              "agentId": agent, "pid": proc.pid, "files": ["a.sql"]})
        assert status == 200
    finally:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        agents = sock_http(daemon, "GET", f"/salvage/pending?project={project}")[1]["agents"]
        if any(a["agentId"] == agent for a in agents):
            return
        time.sleep(0.05)
    raise AssertionError(f"{agent} never reached salvage")


def test_sugar_begin_lists_claimed_paths_and_says_salvage_in_a_sentence(reaping, uid):
    project = f"sb{uid}"
    _dead_agent(reaping, project, f"dead-{uid}")
    status, body = sock_http(reaping, "POST", "/sugar/begin", {"purpose": "carry on", "identity": project,
                                                               "agentId": f"new-{uid}", "files": ["src/a.py"]})
    assert status == 200 and body["fileClaims"] == ["src/a.py"] and body["fileConflicts"] == []
    assert isinstance(body["salvageHint"], str) and project in body["salvageHint"]
    assert body["salvage"]["entries"][0]["agentId"] == f"dead-{uid}"


def test_sugar_done_counts_notes_and_says_if_a_final_note_was_written(daemon, uid):
    agent = f"done-{uid}"
    began = sock_http(daemon, "POST", "/sugar/begin", {"purpose": "work", "agentId": agent})[1]
    sock_http(daemon, "POST", f"/sessions/{began['sessionId']}/notes", {"content": "halfway"})
    status, body = sock_http(daemon, "POST", "/sugar/done", {"agentId": agent, "note": "all done"})
    assert status == 200 and body["notesCount"] == 2 and body["finalNote"] is True
    assert body["sessionStatus"] == "completed" and body["agentUnregistered"] is True


def test_sugar_done_without_an_active_session_is_404_no_active_session(daemon, uid):
    status, body = sock_http(daemon, "POST", "/sugar/done", {"agentId": f"nobody-{uid}"})
    assert status == 404 and body["code"] == "NO_ACTIVE_SESSION" and body["reason"] == "not_found"
    sock_http(daemon, "POST", "/agents", {"id": f"idle-{uid}"})
    status, body = sock_http(daemon, "POST", "/sugar/done", {"agentId": f"idle-{uid}"})
    assert status == 404 and body["code"] == "NO_ACTIVE_SESSION"


def test_whoami_without_an_agent_carries_a_hint(daemon):
    status, body = sock_http(daemon, "GET", "/sugar/whoami")
    assert status == 200 and body["active"] is False and "pd begin" in body["hint"]


def test_salvage_and_resurrection_list_under_agents(reaping, uid):
    project = f"sl{uid}"
    _dead_agent(reaping, project, f"dead-{uid}")
    for path in ("/salvage", "/resurrection", "/salvage/pending", "/resurrection/pending"):
        status, body = sock_http(reaping, "GET", f"{path}?project={project}")
        assert status == 200 and [a["agentId"] for a in body["agents"]] == [f"dead-{uid}"], path
        assert body["entries"] == body["agents"]


def test_claim_accepts_new_agent_id_and_complete_requires_it(reaping, uid):
    project = f"sc{uid}"
    _dead_agent(reaping, project, f"dead-{uid}")
    status, body = sock_http(reaping, "POST", f"/resurrection/claim/dead-{uid}", {"newAgentId": f"heir-{uid}"})
    assert status == 200 and body["claimedBy"] == f"heir-{uid}"
    status, body = sock_http(reaping, "POST", f"/salvage/complete/dead-{uid}", {})
    assert status == 400 and body["field"] == "newAgentId" and "newAgentId" in body["error"]
    assert body["code"] == "VALIDATION_ERROR"
    status, body = sock_http(reaping, "POST", f"/salvage/complete/dead-{uid}", {"newAgentId": f"heir-{uid}"})
    assert status == 200 and body["status"] == "completed"


def test_abandon_and_dismiss_of_an_unknown_agent_answer_200_success(daemon, uid):
    for method, path in (("POST", "/salvage/abandon/"), ("POST", "/resurrection/abandon/"),
                         ("DELETE", "/salvage/"), ("DELETE", "/resurrection/")):
        status, body = sock_http(daemon, method, f"{path}ghost-{uid}", {})
        assert status == 200 and body["success"] is True, (path, body)


def test_reap_routes_answer_the_pending_list(reaping, uid):
    project = f"rp{uid}"
    _dead_agent(reaping, project, f"dead-{uid}")
    for path in ("/salvage/reap", "/resurrection/reap"):
        status, body = sock_http(reaping, "POST", f"{path}?project={project}", {})
        assert status == 200 and [a["agentId"] for a in body["agents"]] == [f"dead-{uid}"]


def test_pd_done_without_an_active_session_says_so_and_forgets_the_terminal_context(daemon, uid, tmp_path):
    env = {"PORT_DADDY_AGENT": f"cli-{uid}"}
    assert daemon.pd("begin", "short task", env=env, cwd=tmp_path).returncode == 0
    first = daemon.pd("done", env=env, cwd=tmp_path)
    assert first.returncode == 0 and "completed" in first.stdout, first.stderr
    again = daemon.pd("done", "--agent", f"cli-{uid}", env=env, cwd=tmp_path)
    assert again.returncode == 1 and "no active session" in again.stderr and again.stderr.count("\n") == 1
