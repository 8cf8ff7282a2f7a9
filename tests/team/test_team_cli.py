"""`pd team join | status | leave` and `pd doctor` against a real nats-server."""

from __future__ import annotations

import json

import yaml

from pdcore.team.space import BUCKETS, STREAMS
from tests.conftest import Daemon
from tests.team.conftest import wait_team_ready


def test_join_status_leave_round_trip(nats_server):
    d = Daemon(ipc_rate_limit=0)
    try:
        joined = d.pd("team", "join", nats_server.url, "--space", "clitest", "--host-id", "laptop", "--json")
        assert joined.returncode == 0, joined.stderr
        assert json.loads(joined.stdout)["joined"]
        team = yaml.safe_load((d.home / "config.yaml").read_text())["team"]
        assert team == {"servers": [nats_server.url], "space": "clitest", "replicas": 1, "host_id": "laptop"}
        d.start()
        wait_team_ready(d)
        status = d.pd("team", "status", "--json")
        assert status.returncode == 0, status.stderr
        body = json.loads(status.stdout)
        assert body["space"] == "clitest" and body["hostId"] == "laptop" and body["connected"]
        declared = {b.short for b in BUCKETS} | {st.short for st in STREAMS}
        assert {"hosts", "locks"} <= declared
        assert {s["name"] for s in body["streams"] if s["ok"]} == declared
        assert [h["host"] for h in body["hosts"]] == ["laptop"]
        human = d.pd("team", "status")
        assert "space clitest as host laptop: connected" in human.stdout and "locks" in human.stdout
        doctor = d.pd("doctor", "--json")
        team_check = next(c for c in json.loads(doctor.stdout)["checks"] if c["check"] == "team")
        assert team_check["ok"], team_check
        left = d.pd("team", "leave")
        assert left.returncode == 0, left.stderr
        assert "left space clitest" in left.stdout
        assert "team" not in (yaml.safe_load((d.home / "config.yaml").read_text()) or {})
        d.wait_ready(own_process=False)
        local = json.loads(d.pd("team", "status", "--json").stdout)
        assert local["configured"] is False
    finally:
        d.stop()


def test_join_refuses_in_one_line_and_writes_nothing(nats_server):
    d = Daemon(ipc_rate_limit=0)
    try:
        unreachable = d.pd("team", "join", "nats://127.0.0.1:1", "--space", "x", timeout=60)
        assert unreachable.returncode == 1
        assert len(unreachable.stderr.strip().splitlines()) == 1 and "127.0.0.1:1" in unreachable.stderr
        too_many = d.pd("team", "join", nats_server.url, "--space", "x", "--replicas", "3", timeout=60)
        assert too_many.returncode == 1 and len(too_many.stderr.strip().splitlines()) == 1
        bad_space = d.pd("team", "join", nats_server.url, "--space", "no spaces")
        assert bad_space.returncode == 1 and "team.space" in bad_space.stderr
        assert not (d.home / "config.yaml").exists()
    finally:
        d.stop()
