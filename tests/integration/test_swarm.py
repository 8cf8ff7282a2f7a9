"""Pheromones, harbors and the arbiter against a real daemon, through IPC, HTTP and the CLI."""

from __future__ import annotations

import json
import time
import uuid

import pytest


def tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(fn, timeout: float = 5.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


# -- pheromones -----------------------------------------------------------------------------
def test_spray_is_fire_and_forget_over_ipc(daemon):
    entity = tag("svc")
    c = daemon.client(transport="ipc")
    assert c.pheromone_spray(table="services", id=entity, key="urgency", strength=0.8) is None
    got = wait_for(lambda: c.call("pheromone.sniff", table="services", id=entity)["pheromones"])
    assert 0.79 < got["urgency"] <= 0.8


def test_pheromone_http_shapes(daemon):
    entity = tag("svc")
    status, body = daemon.http("POST", "/pheromone/spray", {"table": "services", "id": entity, "key": "k",
                                                            "strength": 0.5})
    assert status == 200 and (body["table"], body["id"], body["key"], body["strength"]) == ("services", entity, "k", 0.5)
    assert "k" in body["pheromones"]
    status, body = daemon.http("POST", "/pheromone/spray", {"table": "services", "id": entity, "key": "k",
                                                            "strength": 0.9, "add": True})
    assert body["value"] == 1.0
    status, body = daemon.http("GET", f"/pheromone/services/{entity}")
    assert status == 200 and body["pheromones"]["k"] > 0.99
    status, body = daemon.http("GET", "/pheromone")
    assert status == 200 and any(e["id"] == entity for e in body["pheromones"]) and body["count"] >= 1
    status, body = daemon.http("POST", "/pheromone/spray", {"table": "t", "id": "i", "key": "k", "strength": 2})
    assert (status, body["code"], body["field"]) == (400, "invalid_argument", "strength")


def test_file_heat_from_two_sessions_on_one_file(daemon):
    project = tag("proj")
    c = daemon.client()
    for agent in ("a1", "a2"):
        sid = c.call("session.start", purpose="heat", agentId=f"{project}-{agent}", identity=f"{project}:api",
                     force=True)["sessionId"]
        c.call("session.claim_files", id=sid, files=["src/hot.py"])
    c.call("pheromone.spray", table="files", id=f"{project}/notes.md", key="heat", strength=0.4)
    status, body = daemon.http("GET", f"/pheromone/files?project={project}&depth=2")
    assert status == 200
    hot = next(f for f in body["files"] if f["path"] == "src/hot.py")
    assert hot["conflict"] and hot["activeClaims"] == 2 and len(hot["agents"]) == 2
    assert body["summary"]["activeConflicts"] >= 1 and {"files", "dirs", "summary"} <= set(body)
    r = daemon.pd("pheromone", "files", "--project", project, "--path", "src", "--json")
    assert r.returncode == 0, r.stderr
    assert [f["path"] for f in json.loads(r.stdout)["files"]] == ["src/hot.py"]


def test_pheromone_cli(daemon):
    entity = tag("cli")
    r = daemon.pd("pheromone", "spray", "services", entity, "urgency", "0.6", "-q")
    assert r.returncode == 0 and float(r.stdout) == pytest.approx(0.6)
    r = daemon.pd("pheromone", "spray", "--table", "services", "--id", entity, "--key", "urgency",
                  "--strength", "0.6", "--add", "-q")
    assert r.returncode == 0 and float(r.stdout) == 1.0
    r = daemon.pd("pheromone", "file", f"{entity}/a.py", "0.7")
    assert r.returncode == 0 and "heat 0.700" in r.stdout
    r = daemon.pd("pheromone", "sniff", "services", entity)
    assert r.returncode == 0 and "urgency=" in r.stdout
    r = daemon.pd("pheromone", "show", "--table", "files", "--id", f"{entity}/a.py", "--json")
    assert json.loads(r.stdout)["pheromones"]["heat"] > 0.69
    r = daemon.pd("pheromone", "list", "--table", "services")
    assert r.returncode == 0 and entity in r.stdout
    r = daemon.pd("pheromone", "spray", "t", "i", "k")
    assert r.returncode == 2


# -- harbors --------------------------------------------------------------------------------
def test_harbor_lifecycle_over_http(daemon):
    name = f"{tag('h')}:fleet"
    status, body = daemon.http("POST", "/harbors", {"name": name, "capabilities": ["tuple:*"], "channels": ["c1"]})
    assert status == 201 and body["harbor"]["name"] == name and body["harbor"]["gated"]
    status, body = daemon.http("POST", f"/harbors/{name}/enter", {"agentId": "h-a1", "capabilities": ["tuple:rd"]})
    assert status == 200 and body["member"]["capabilities"] == ["tuple:rd"]
    status, body = daemon.http("POST", f"/harbors/{name}/enter", {"agentId": "h-a2", "capabilities": ["deploy"]})
    assert (status, body["code"]) == (403, "capability_denied")
    status, body = daemon.http("GET", f"/harbors/{name}/members")
    assert [m["agentId"] for m in body["members"]] == ["h-a1"]
    status, body = daemon.http("GET", "/harbors/agent/h-a1")
    assert name in [h["name"] for h in body["harbors"]]
    status, body = daemon.http("GET", "/harbors")
    assert status == 200 and name in [h["name"] for h in body["harbors"]]
    status, body = daemon.http("GET", f"/harbors/{name}")
    assert status == 200 and body["harbor"]["channels"] == ["c1"]
    status, body = daemon.http("POST", f"/harbors/{name}/leave", {"agentId": "h-a1"})
    assert status == 200 and body["left"]
    status, body = daemon.http("DELETE", f"/harbors/{name}")
    assert status == 200 and body["destroyed"]
    status, body = daemon.http("GET", f"/harbors/{name}")
    assert (status, body["code"]) == (404, "not_found")
    status, body = daemon.http("POST", "/harbors", {"name": "bad name!"})
    assert (status, body["code"]) == (400, "invalid_name")


def test_tuples_in_a_gated_harbor_need_the_capability(daemon):
    name = f"{tag('g')}:fleet"
    c = daemon.client()
    c.call("harbor.create", name=name, capabilities=["tuple:rd", "tuple:out"])
    c.call("harbor.enter", name=name, agentId=f"{name}-w", capabilities=["tuple:out", "tuple:rd"])
    c.call("harbor.enter", name=name, agentId=f"{name}-r", capabilities=["tuple:rd"])
    c.call("tuple.out", fields=["job", 1], harbor=name, agentId=f"{name}-w")
    status, body = daemon.http("DELETE", "/tuples", {"pattern": ["job"], "harbor": name, "agentId": f"{name}-r"})
    assert (status, body["code"]) == (403, "capability_denied")
    status, body = daemon.http("GET", f"/tuples?harbor={name}&agentId={name}-r")
    assert status == 200 and body["count"] == 1
    found = wait_for(lambda: daemon.http("GET", f"/arbiter/violations?agentId={name}-r")[1]["violations"])
    assert found[0]["rule"] == "CAP_ESCALATION" and found[0]["target"] == name


def test_harbor_cli(daemon):
    name = f"{tag('c')}:fleet"
    env = {"PORT_DADDY_AGENT": f"{name}-me"}
    assert daemon.pd("harbor", "create", name, "--cap", "tuple:*", "--expires", "1h").returncode == 0
    r = daemon.pd("harbor", "enter", name, "--cap", "tuple:rd", env=env)
    assert r.returncode == 0, r.stderr
    r = daemon.pd("harbor", "members", name, "-q")
    assert r.stdout.split() == [f"{name}-me"]
    r = daemon.pd("harbor", "of", f"{name}-me", "-q")
    assert name in r.stdout.split()
    r = daemon.pd("harbor", "show", name)
    assert r.returncode == 0 and "tuple:*" in r.stdout
    assert name in daemon.pd("harbor", "list", "-q").stdout.split()
    assert daemon.pd("harbor", "leave", name, env=env).returncode == 0
    assert daemon.pd("harbor", "destroy", name).returncode == 0
    r = daemon.pd("harbor", "show", name)
    assert r.returncode == 1 and "no harbor" in r.stderr


# -- the arbiter ----------------------------------------------------------------------------
def test_arbiter_routes_and_cli(daemon):
    status, body = daemon.http("GET", "/arbiter")
    assert status == 200 and body["rulesCount"] == 6 and body["strictMode"] is False
    assert [r["name"] for r in body["rules"]] == ["PID_SQUATTING", "CAP_ESCALATION", "NOTE_MONOTONICITY",
                                                  "NOTE_INTEGRITY", "LOCK_OWNER_VALID", "HEARTBEAT_FRESHNESS"]
    status, body = daemon.http("GET", "/arbiter/violations?limit=5")
    assert status == 200 and {"violations", "count", "total"} <= set(body)
    status, body = daemon.http("GET", "/arbiter/violations?rule=NOPE")
    assert (status, body["code"]) == (400, "invalid_argument")
    r = daemon.pd("arbiter", "status")
    assert r.returncode == 0 and "HEARTBEAT_FRESHNESS" in r.stdout
    r = daemon.pd("arbiter", "violations", "--json")
    assert r.returncode == 0 and "violations" in json.loads(r.stdout)


def test_strict_mode_throws_an_escalating_agent_overboard_into_salvage(daemon_factory):
    d = daemon_factory(ipc_rate_limit=0, arbiter_strict=1)
    c = d.client()
    c.call("agent.register", id="greedy")
    c.call("session.start", purpose="grab more than granted", agentId="greedy", identity="strict:api")
    c.call("harbor.create", name="strict:fleet", capabilities=["tuple:rd"])
    status, body = d.http("POST", "/harbors/strict:fleet/enter", {"agentId": "greedy", "capabilities": ["deploy"]})
    assert (status, body["code"]) == (403, "capability_denied")
    dead = wait_for(lambda: c.call("agent.get", id="greedy")["agent"]["status"] == "dead")
    assert dead, "the offender was not thrown overboard"
    entries = c.call("salvage.list", agentId="greedy")["entries"]
    assert [e["agentId"] for e in entries] == ["greedy"]
    status, body = d.http("GET", "/arbiter")
    assert [o["agentId"] for o in body["overboard"]] == ["greedy"]
    v = d.http("GET", "/arbiter/violations?agentId=greedy")[1]["violations"][0]
    assert (v["rule"], v["action"]) == ("CAP_ESCALATION", "man_overboard")
    c.call("agent.register", id="greedy")
    assert d.http("GET", "/arbiter")[1]["overboard"] == []


def test_strict_mode_refuses_writes_of_an_overboard_agent(daemon_factory):
    d = daemon_factory(ipc_rate_limit=0, arbiter_strict=1)
    c = d.client()
    c.call("agent.register", id="greedy")
    c.call("harbor.create", name="strict:fleet", capabilities=["tuple:rd"])
    d.http("POST", "/harbors/strict:fleet/enter", {"agentId": "greedy", "capabilities": ["deploy"]})
    status, body = d.http("POST", "/tuples", {"fields": ["x"], "agentId": "greedy"})
    assert (status, body["code"]) == (403, "agent_overboard")
    for path, body in (("/locks/strict-lock", {"owner": "greedy"}), ("/tuples", {"fields": ["x"], "writtenBy": "greedy"}),
                       ("/msg/strict-chan", {"payload": "hi", "sender": "greedy"}),
                       ("/agents/someone/inbox", {"content": "hi", "from": "greedy"})):
        status, reply = d.http("POST", path, body)  # naming itself in the op's own actor field changes nothing
        assert (status, reply["code"]) == (403, "agent_overboard"), path
    c.call("agent.register", id="greedy")
    status, body = d.http("POST", "/tuples", {"fields": ["x"], "agentId": "greedy"})
    assert status == 200
