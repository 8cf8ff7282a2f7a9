"""Wait-for-service, briefing, changelog and projects end to end (docs/projects.md)."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from pdcore.errors import OpError


def uid(prefix: str = "w") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _claim_later(daemon, identity: str, delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        with daemon.client() as c:
            c.port_claim(id=identity)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_get_wait_parks_until_another_client_claims(daemon):
    ident = f"{uid()}:api:main"
    claimer = _claim_later(daemon, ident, 0.2)
    began = time.monotonic()
    status, body = daemon.http("GET", f"/wait/{ident}?timeout=10000")
    waited = time.monotonic() - began
    claimer.join(5)
    assert status == 200 and body["success"] is True and body["id"] == ident and body["ready"] is True
    assert body["port"] == daemon.client().port_get(id=ident)["service"]["port"]
    assert 0.15 <= waited < 5, waited


def test_get_wait_times_out_with_408_timeout(daemon):
    ident = f"{uid()}:never"
    began = time.monotonic()
    status, body = daemon.http("GET", f"/wait/{ident}?timeout=300")
    assert time.monotonic() - began >= 0.25
    assert status == 408 and body["success"] is False and body["code"] == "timeout" and body["field"] == "id"
    assert ident in body["error"]


def test_post_wait_returns_when_the_last_service_is_claimed(daemon):
    project = uid()
    a, b = f"{project}:a", f"{project}:b"
    daemon.client().port_claim(id=a)
    claimer = _claim_later(daemon, b, 0.2)
    status, body = daemon.http("POST", "/wait", {"ids": [a, b], "timeout": 10_000})
    claimer.join(5)
    assert status == 200 and set(body["ports"]) == {a, b} and body["count"] == 2


def test_post_wait_timeout_names_the_missing_ones(daemon):
    project = uid()
    a, b = f"{project}:a", f"{project}:b"
    daemon.client().port_claim(id=a)
    status, body = daemon.http("POST", "/wait", {"services": [a, b], "timeout": 200})
    assert status == 408 and body["code"] == "timeout" and body["missing"] == [b] and body["ready"] == [a]


def test_sdk_and_cli_wait(daemon):
    ident = f"{uid()}:db"
    claimer = _claim_later(daemon, ident, 0.2)
    assert daemon.client().service_wait(id=ident, timeout=10_000)["id"] == ident
    claimer.join(5)
    out = daemon.pd("wait", ident, "-q")
    assert out.returncode == 0 and int(out.stdout.strip()) > 0
    with pytest.raises(OpError) as info:
        daemon.client().service_wait(id=f"{uid()}:nope", timeout=100)
    assert info.value.code == "timeout"
    late = daemon.pd("wait", f"{uid()}:nope", "--timeout", "200ms")
    assert late.returncode == 1 and "not claimed within 200 ms" in late.stderr


def test_bad_wait_input_is_400(daemon):
    status, body = daemon.http("GET", "/wait/bad%20id")
    assert status == 400 and body["reason"] == "invalid_identity"
    status, body = daemon.http("POST", "/wait", {"ids": []})
    assert status == 400 and body["field"] == "ids"
    status, body = daemon.http("GET", f"/wait/{uid()}:x?timeout=999999999")
    assert status == 400 and body["field"] == "timeout"


def test_changelog_projects_and_briefing_routes(daemon):
    project = uid("p")
    daemon.client().port_claim(id=f"{project}:api:main")
    status, body = daemon.http("POST", "/changelog", {"identity": f"{project}:api:auth", "summary": "JWT login",
                                                      "type": "feature"})
    assert status == 200 and body["ancestors"] == [f"{project}:api", project]
    status, body = daemon.http("GET", f"/changelog?project={project}")
    assert status == 200 and [e["summary"] for e in body["entries"]] == ["JWT login"]
    status, body = daemon.http("GET", "/projects")
    mine = [p for p in body["projects"] if p["project"] == project]
    assert status == 200 and mine and mine[0]["services"] == 1
    status, body = daemon.http("GET", f"/briefing?project={project}")
    assert status == 200 and body["markdown"].startswith(f"# Briefing: {project}")
    assert f"{project}:api:main" in body["markdown"] and "JWT login" in body["markdown"]
    status, body = daemon.http("POST", "/changelog", {"summary": "x", "type": "party"})
    assert status == 400 and body["field"] == "type"


def test_cli_changelog_briefing_projects_and_swarm(daemon, tmp_path):
    project = uid("c")
    (tmp_path / ".portdaddyrc").write_text(json.dumps({"project": project, "services": {"api": {"cmd": "true"}}}))
    added = daemon.pd("changelog", "add", "Fixed login", "-t", "fix", "-q", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    listed = daemon.pd("changelog", "list", cwd=tmp_path)
    assert listed.returncode == 0 and "Fixed login" in listed.stdout and f"{project}" in listed.stdout
    md = daemon.pd("changelog", "list", "--markdown", cwd=tmp_path)
    assert "### Fixed" in md.stdout
    begun = daemon.pd("begin", "Swarm test", "--identity", f"{project}:api", "--files", "src/x.py",
                      "--agent", f"{project}-agent", cwd=tmp_path)
    assert begun.returncode == 0, begun.stderr
    brief = daemon.pd("briefing", cwd=tmp_path)
    assert brief.returncode == 0 and brief.stdout.startswith(f"# Briefing: {project}") and "src/x.py" in brief.stdout
    projects = daemon.pd("projects", "-q")
    assert project in projects.stdout.split()
    for name in ("swarm", "swarm_awareness"):
        out = daemon.pd(name, "--project", project)
        assert out.returncode == 0, out.stderr
        assert f"{project}-agent" in out.stdout and "src/x.py" in out.stdout
    daemon.pd("done", "--agent", f"{project}-agent", cwd=tmp_path)
