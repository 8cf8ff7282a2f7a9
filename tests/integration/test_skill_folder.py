"""The agent skill folder (skills/port-daddy/): its links resolve, its templates are accepted by
`pd`, and its helper scripts work against a real daemon (SPEC §14)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO

SKILL = REPO / "skills" / "port-daddy"
SCRIPTS = ("preflight.sh", "session-resume.sh", "salvage-triage.sh", "fleet-validate.sh", "agent-handshake.sh")
# a path relative to the skill folder (examples/..., scripts/...) or to the repository (docs/...)
SKILL_PATH_RE = re.compile(r"(?<![\w/.$-])((?:examples|schemas|scripts|assets|references)/[\w.*-]+)")
DOCS_PATH_RE = re.compile(r"(?<![\w/.$-])(docs/[\w.-]+\.md)")


def _mentions(pattern: re.Pattern[str], text: str) -> set[str]:
    return {m.rstrip(".") for m in pattern.findall(text)}


def test_every_mentioned_path_exists() -> None:
    """SKILL.md, the INDEX files and every other page only point at files that exist."""
    pages = sorted(SKILL.rglob("*.md"))
    assert SKILL / "SKILL.md" in pages and SKILL / "examples" / "INDEX.md" in pages
    assert SKILL / "schemas" / "INDEX.md" in pages
    missing, seen = [], set()
    for page in pages:
        text = page.read_text()
        for rel in _mentions(SKILL_PATH_RE, text):
            seen.add(rel)
            if not (SKILL / rel).exists():
                missing.append(f"{page.relative_to(SKILL)} -> {rel}")
        for rel in _mentions(DOCS_PATH_RE, text):
            if not (REPO / rel).exists():
                missing.append(f"{page.relative_to(SKILL)} -> {rel}")
    assert not missing, "dangling paths:\n" + "\n".join(missing)
    # the decision tree, triage table and index point at these; they must have been checked
    for rel in ("examples/INDEX.md", "examples/02-two-agents-same-file.md", "examples/04-fleet-from-zero.md",
                "examples/06-debug-daemon-down.md", "schemas/INDEX.md", "scripts/fleet-validate.sh",
                "assets/pd-fleet.starter.yml", "references/sdk-reference.md"):
        assert rel in seen, rel


def test_skill_front_matter() -> None:
    text = (SKILL / "SKILL.md").read_text()
    assert text.startswith("---\n")
    front = text.split("---\n", 2)[1]
    assert re.search(r"^name: port-daddy$", front, re.M)
    assert re.search(r"^description: .*NOT for", front, re.M)
    assert "4.0.0" in text  # the product's version, not the seed's 3.8.2
    assert "3.8.2" not in text


def test_examples_index_names_eight_scenarios() -> None:
    index = (SKILL / "examples" / "INDEX.md").read_text()
    names = sorted(set(re.findall(r"\b(0\d-[\w-]+\.md)", index)))
    assert len(names) == 8, names
    for name in names:
        assert (SKILL / "examples" / name).is_file(), name


def _script_env(d, tmp: Path) -> dict[str, str]:
    """d.env plus a PATH where `pd` runs this checkout with this interpreter."""
    env = dict(d.env)
    bindir = os.path.dirname(sys.executable)
    path = [bindir, env.get("PATH", os.defpath)]
    if not shutil.which("pd", path=bindir) or not shutil.which("python3", path=os.pathsep.join(path)):
        wrappers = tmp / "bin"
        wrappers.mkdir(exist_ok=True)
        (wrappers / "pd").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.main "$@"\n')
        (wrappers / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        for f in wrappers.iterdir():
            f.chmod(0o755)
        path.insert(0, str(wrappers))
    env["PATH"] = os.pathsep.join(path)
    env.pop("PORT_DADDY_AGENT", None)
    env.pop("PORT_DADDY_SESSION", None)
    return env


def _run(script: str, *args: str, env: dict[str, str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    # a new process session per run: its terminal context (keyed by session id) is its own
    return subprocess.run([str(SKILL / "scripts" / script), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help(script: str, tmp_path: Path) -> None:
    path = SKILL / "scripts" / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    head = path.read_text().splitlines()[:6]
    assert any(line.strip() == "set -eu" for line in path.read_text().splitlines()), script
    assert head[0].startswith("#!/bin/sh"), script
    r = subprocess.run([str(path), "-h"], capture_output=True, text=True, timeout=10, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {script}"), r.stdout
    bad = subprocess.run([str(path), "--no-such-flag"], capture_output=True, text=True, timeout=10, cwd=tmp_path)
    assert bad.returncode != 0 and bad.stderr.strip(), script


def test_scripts_against_a_daemon(daemon, tmp_path: Path) -> None:
    env = _script_env(daemon, tmp_path)
    project = f"sk{uuid.uuid4().hex[:8]}"
    work = tmp_path / project
    work.mkdir()

    r = _run("preflight.sh", env=env, cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "daemon: running" in r.stdout and "checks ok" in r.stdout
    assert "preflight: ok" in r.stdout and "whoami:" in r.stdout

    # handshake: stdout is only export lines, for eval
    ident = f"{project}:api:main"
    r = _run("agent-handshake.sh", "-i", ident, "-p", "Skill test", "-a", f"{project}-a", env=env, cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", r.stdout, re.M))
    assert set(exports) == {"PORT_DADDY_AGENT", "PORT_DADDY_SESSION", "PORT"}, r.stdout
    assert len(r.stdout.strip().splitlines()) == 3
    c = daemon.client()
    assert c.call("port.claim", id=ident)["port"] == int(exports["PORT"])
    hello = c.call("msg.history", channel=f"{project}:agents")["messages"][-1]["payload"]
    assert hello["event"] == "hello" and hello["agentId"] == f"{project}-a"

    # a second handshake for the same agent is refused with a one-line reason
    again = _run("agent-handshake.sh", "-i", ident, "-a", f"{project}-a", env=env, cwd=work)
    assert again.returncode != 0 and "agent-handshake:" in again.stderr

    agent_env = {**env, "PORT_DADDY_AGENT": exports["PORT_DADDY_AGENT"],
                 "PORT_DADDY_SESSION": exports["PORT_DADDY_SESSION"]}
    c.call("note.quick", content="resume me", agentId=exports["PORT_DADDY_AGENT"])
    c.call("session.claim_files", id=exports["PORT_DADDY_SESSION"], files=["src/skill.py"])
    r = _run("session-resume.sh", env=agent_env, cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    for want in (exports["PORT_DADDY_SESSION"], "resume me", "src/skill.py", f"== salvage for {project}",
                 f"session-resume: ok (project {project})"):
        assert want in r.stdout, (want, r.stdout)
    c.call("sugar.done", agentId=exports["PORT_DADDY_AGENT"])


def test_salvage_triage_against_a_daemon(daemon, tmp_path: Path) -> None:
    env = _script_env(daemon, tmp_path)
    project = f"sk{uuid.uuid4().hex[:8]}"
    dead = f"{project}-dead"
    child = subprocess.Popen(["sleep", "60"])
    try:
        c = daemon.client()
        c.call("sugar.begin", purpose="Half-done refactor", identity=f"{project}:db", agentId=dead,
               pid=child.pid, files=["billing/*.py"])
    finally:
        child.kill()
        child.wait(timeout=10)
    deadline = time.monotonic() + 25  # the reaper checks pids every reaper_interval_ms (5 s)
    while time.monotonic() < deadline:
        if c.call("salvage.list", project=project)["count"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the dead agent never reached the salvage queue")

    r = _run("salvage-triage.sh", "-p", project, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert dead in r.stdout and "fresh" in r.stdout and f"pd salvage claim {dead}" in r.stdout
    assert c.call("salvage.list", project=project)["count"] == 1  # nothing dismissed without the flag

    r = _run("salvage-triage.sh", "-p", project, "--stale-after", "1ms", env=env, cwd=tmp_path)
    assert r.returncode == 0 and f"pd salvage dismiss {dead}" in r.stdout, r.stdout + r.stderr

    bad = _run("salvage-triage.sh", "-p", project, "--dismiss-older-than", "soon", env=env, cwd=tmp_path)
    assert bad.returncode != 0 and "bad duration" in bad.stderr
    assert c.call("salvage.list", project=project)["count"] == 1

    r = _run("salvage-triage.sh", "-p", project, "--dismiss-older-than", "1ms", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert c.call("salvage.list", project=project)["count"] == 0
    assert "nothing to salvage" in _run("salvage-triage.sh", "-p", project, env=env, cwd=tmp_path).stdout


def test_fleet_validate_script(daemon, tmp_path: Path) -> None:
    env = _script_env(daemon, tmp_path)
    project = tmp_path / "myapp"  # the starter's fleet name
    project.mkdir()
    shutil.copy(SKILL / "assets" / "pd-fleet.starter.yml", project / "pd-fleet.yml")

    r = _run("fleet-validate.sh", env=env, cwd=project)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is valid" in r.stdout and "ok: fleet.name 'myapp' = folder name" in r.stdout
    assert "not in a git repository" in r.stdout

    hooks = project / ".git" / "hooks"
    hooks.mkdir(parents=True)
    (hooks / "post-commit").write_text("#!/bin/sh\n# >>> port-daddy fleet (pd fleet init) >>>\n# <<< port-daddy fleet <<<\n")
    r = _run("fleet-validate.sh", str(project / "pd-fleet.yml"), env=env, cwd=tmp_path)
    assert r.returncode == 0 and "publishes git:committed" in r.stdout, r.stdout + r.stderr

    # the most common bug: the folder was renamed, the fleet name was not
    renamed = tmp_path / "renamed"
    shutil.copytree(project, renamed)
    r = _run("fleet-validate.sh", str(renamed), env=env, cwd=tmp_path)
    assert r.returncode != 0
    assert "fleet.name is 'myapp' but the project folder is 'renamed'" in r.stdout
    assert r.stderr.strip().startswith("fleet-validate:") and len(r.stderr.strip().splitlines()) == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    r = _run("fleet-validate.sh", str(empty), env=env, cwd=tmp_path)
    assert r.returncode != 0 and "no pd-fleet.yml" in r.stderr


def test_preflight_refuses_when_the_daemon_is_down(daemon, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {**_script_env(daemon, tmp_path), "PORT_DADDY_HOME": str(home)}
    r = _run("preflight.sh", "--no-start", env=env, cwd=tmp_path)
    assert r.returncode != 0
    assert r.stderr.strip() == "preflight: daemon is not running (pd start; see examples/06-debug-daemon-down.md)"


def test_assets_are_accepted_by_pd(daemon, tmp_path: Path) -> None:
    project = tmp_path / "myapp"
    project.mkdir()
    shutil.copy(SKILL / "assets" / "pd-fleet.starter.yml", project / "pd-fleet.yml")
    r = daemon.pd("fleet", "validate", str(project / "pd-fleet.yml"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True
    assert not [p for p in report["problems"] if p["level"] == "error"]

    r = daemon.pd("up", "--plan", "--json", "--file", str(SKILL / "assets" / ".portdaddyrc.starter"))
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads(r.stdout)
    assert plan["project"] == "myapp" and plan["order"] == ["db", "api", "worker"]
    assert not (SKILL / "assets" / ".portdaddy").exists()  # --plan starts and writes nothing

    template = (SKILL / "assets" / "session-note.template.md").read_text()
    for note_type in ("progress", "decision", "blocker", "handoff"):
        assert f"--type {note_type}" in template or note_type in template
