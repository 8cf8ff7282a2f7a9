"""pd up / pd down from a .portdaddyrc: dependency order, claimed ports, health, stop and release."""

from __future__ import annotations

import json
import shlex
import socket
import sys
import time
import urllib.request
import uuid

from cli.up import same_process

PY = shlex.quote(sys.executable)
SERVE = f"exec {PY} -m http.server $PORT --bind 127.0.0.1"
# B refuses to start unless A already answers: proves A was healthy before B was started
NEEDS_A = (f"{PY} -c \"import os, urllib.request; urllib.request.urlopen(os.environ['A_URL'] + '/', timeout=5)\" "
           f"&& {SERVE}")


def uid(prefix: str = "up") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def write_rc(folder, project: str, services: dict) -> None:
    (folder / ".portdaddyrc").write_text(json.dumps({"project": project, "services": services}))


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_up_starts_services_in_order_on_their_claims_and_down_stops_and_releases(daemon, tmp_path):
    project = uid()
    write_rc(tmp_path, project, {
        "b": {"cmd": NEEDS_A, "healthPath": "/", "needs": ["a"]},
        "a": {"cmd": SERVE, "healthPath": "/", "healthTimeout": 15000},
    })
    plan = daemon.pd("up", "--plan", "-q", cwd=tmp_path)
    assert plan.returncode == 0 and plan.stdout.split() == ["a", "b"], plan.stderr

    started = daemon.pd("up", "--json", cwd=tmp_path, timeout=60)
    assert started.returncode == 0, started.stderr
    services = {s["name"]: s for s in json.loads(started.stdout)["services"]}
    assert [s["status"] for s in services.values()] == ["started", "started"]
    client = daemon.client()
    for name in ("a", "b"):
        svc = services[name]
        claim = client.port_get(id=f"{project}:{name}:main")["service"]
        assert (claim["port"], claim["pid"]) == (svc["port"], svc["pid"])
        assert claim["metadata"]["startedBy"] == "pd up"
        assert answers(svc["port"]), f"{name} does not answer on its claimed port"
        assert (tmp_path / ".portdaddy" / "logs" / f"{name}.log").is_file()
    assert (tmp_path / ".portdaddy" / "up-main.json").is_file()

    again = daemon.pd("up", "--json", cwd=tmp_path, timeout=60)
    assert again.returncode == 0 and {s["status"] for s in json.loads(again.stdout)["services"]} == {"running"}

    stopped = daemon.pd("down", "--json", cwd=tmp_path, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    report = json.loads(stopped.stdout)["services"]
    assert [r["name"] for r in report] == ["b", "a"]  # dependents first
    assert all(r["process"] in ("stopped", "killed") and r["released"] == 1 for r in report)
    for svc in services.values():
        assert wait_until(lambda s=svc: not same_process(s["pid"], None)), "process still running after pd down"
        assert wait_until(lambda s=svc: refused(s["port"])), "port still answers after pd down"
    assert client.port_list(pattern=f"{project}:*")["count"] == 0
    assert not (tmp_path / ".portdaddy" / "up-main.json").exists()


def test_a_dependency_cycle_is_refused_naming_it(daemon, tmp_path):
    write_rc(tmp_path, uid(), {"a": {"cmd": "true", "needs": ["b"]}, "b": {"cmd": "true", "needs": ["a"]},
                               "c": {"cmd": "true"}})
    out = daemon.pd("up", cwd=tmp_path)
    assert out.returncode == 1 and "cycle: a -> b -> a" in out.stderr


def test_a_service_that_fails_rolls_back_what_this_run_started(daemon, tmp_path):
    project = uid()
    write_rc(tmp_path, project, {
        "a": {"cmd": SERVE, "healthPath": "/"},
        "b": {"cmd": "echo boom; exit 3", "needs": ["a"]},
    })
    out = daemon.pd("up", cwd=tmp_path, timeout=60)
    assert out.returncode == 1 and "exited with code 3" in out.stderr and "boom" in out.stderr
    assert daemon.client().port_list(pattern=f"{project}:*")["count"] == 0
    assert not (tmp_path / ".portdaddy" / "up-main.json").exists()
    header = (tmp_path / ".portdaddy" / "logs" / "a.log").read_text().splitlines()[0]
    a_port = int(header.rsplit("PORT=", 1)[1].rstrip(")"))
    assert wait_until(lambda: refused(a_port)), "a was left running after b failed"
