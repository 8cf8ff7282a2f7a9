"""Pheromones (SPEC.md §9): spray, decay at read time, the floor, housekeeping, file heat."""

import pytest

from pdcore.errors import OpError

HALF = 10 * 60 * 1000


@pytest.mark.parametrize("half_lives", [0, 1, 3])
def test_decay_follows_the_half_life_within_one_percent(harness, half_lives):
    ph = harness.state.pheromones
    ph.spray(harness.ctx(), table="services", id="app:api", key="urgency", strength=0.8)
    harness.clock.advance(half_lives * harness.config.pheromone_half_life_ms)
    got = ph.sniff(harness.ctx(), table="services", id="app:api")["pheromones"]["urgency"]
    expected = 0.8 * 0.5 ** half_lives
    assert abs(got - expected) <= 0.01 * expected


def test_default_half_life_is_ten_minutes(harness):
    assert harness.config.pheromone_half_life_ms == HALF


def test_values_under_the_floor_read_as_zero_and_are_collected(harness):
    ph = harness.state.pheromones
    ph.spray(harness.ctx(), table="agents", id="a1", key="busy", strength=0.5)
    ph.spray(harness.ctx(), table="agents", id="a2", key="busy", strength=1.0)
    harness.clock.advance(6 * HALF)  # 0.5/64 < 0.01 <= 1/64
    assert ph.sniff(harness.ctx(), table="agents", id="a1")["pheromones"] == {}
    assert ph.level("agents", "a1", "busy", harness.clock.now) == 0.0
    assert ph.counts()["pheromones"] == 1  # a1 collected on the read that saw it faded
    harness.clock.advance(HALF)
    assert harness.advance(harness.config.pheromone_gc_interval_ms) >= 1  # housekeeping pass
    assert ph.counts()["pheromones"] == 0
    assert ph.list(harness.ctx()) == {"count": 0, "pheromones": []}


def test_add_reinforces_the_decayed_value_capped_at_one(harness):
    ph = harness.state.pheromones
    ph.spray(harness.ctx(), table="files", id="src/a.py", key="heat", strength=0.6)
    harness.clock.advance(HALF)
    got = ph.spray(harness.ctx(), table="files", id="src/a.py", key="heat", strength=0.5, add=True)
    assert abs(got["value"] - 0.8) < 1e-9
    got = ph.spray(harness.ctx(), table="files", id="src/a.py", key="heat", strength=0.9, add=True)
    assert got["value"] == 1.0 and got["pheromones"] == {"heat": 1.0}
    got = ph.spray(harness.ctx(), table="files", id="src/a.py", key="heat", strength=0.2)
    assert got["value"] == 0.2  # without add: set


def test_strength_outside_zero_one_is_refused(harness):
    with pytest.raises(OpError) as info:
        harness.state.pheromones.spray(harness.ctx(), table="t", id="i", key="k", strength=1.5)
    assert (info.value.code, info.value.field) == ("invalid_argument", "strength")


def test_half_life_override_per_key_and_per_spray(make_harness):
    h = make_harness(pheromone_half_life_overrides={"urgency": 1000, "files.heat": 2000})
    ph = h.state.pheromones
    ph.spray(h.ctx(), table="services", id="x", key="urgency", strength=1.0)
    ph.spray(h.ctx(), table="files", id="a.py", key="heat", strength=1.0)
    ph.spray(h.ctx(), table="services", id="x", key="other", strength=1.0)
    ph.spray(h.ctx(), table="services", id="y", key="k", strength=1.0, halfLifeMs=500)
    h.clock.advance(1000)
    now = h.clock.now
    assert abs(ph.level("services", "x", "urgency", now) - 0.5) < 1e-9
    assert abs(ph.level("files", "a.py", "heat", now) - 2 ** -0.5) < 1e-9
    assert abs(ph.level("services", "y", "k", now) - 0.25) < 1e-9
    assert ph.level("services", "x", "other", now) > 0.99


def test_list_every_table_decays_strongest_first(harness):
    ph = harness.state.pheromones
    ph.spray(harness.ctx(), table="services", id="s", key="k", strength=0.3)
    ph.spray(harness.ctx(), table="sessions", id="x", key="k", strength=0.9)
    listed = ph.list(harness.ctx())
    assert listed["count"] == 2 and [e["table"] for e in listed["pheromones"]] == ["sessions", "services"]
    assert ph.list(harness.ctx(), table="services")["count"] == 1


def test_pheromones_are_never_written_to_the_database(harness):
    harness.state.pheromones.spray(harness.ctx(), table="t", id="i", key="k", strength=0.5)
    harness.reopen()
    assert harness.state.pheromones.list(harness.ctx())["count"] == 0


def test_memory_is_bounded(make_harness):
    h = make_harness(pheromone_max=100)
    for i in range(300):
        h.state.pheromones.spray(h.ctx(), table="t", id=str(i), key="k", strength=(i % 100) / 100 + 0.01)
    assert h.state.pheromones.counts()["pheromones"] <= 100


def _session(h, agent, files):
    sid = h.state.sessions.start(h.ctx(agent), purpose="work", agentId=agent, identity="proj:api")["sessionId"]
    if files:
        h.state.sessions.claim_files(h.ctx(agent), id=sid, files=files)
    return sid


def test_file_heat_from_claims_and_pheromones(harness):
    _session(harness, "a1", ["src/auth/login.py", "docs/readme.md"])
    _session(harness, "a2", ["src/auth/login.py"])
    _session(harness, "a3", ["src/api/**"])
    harness.state.pheromones.spray(harness.ctx(), table="files", id="./src/api/routes.py", strength=0.9)
    heat = harness.state.pheromones.files(harness.ctx())
    files = {f["path"]: f for f in heat["files"]}
    login = files["src/auth/login.py"]
    assert login["conflict"] and login["activeClaims"] == 2 and login["agents"] == ["a1", "a2"]
    assert abs(login["heat"] - (1 - 0.7 ** 2)) < 1e-3
    assert not files["docs/readme.md"]["conflict"]
    routes = files["src/api/routes.py"]  # a pheromone-only file, path normalised like claims
    assert routes["activeClaims"] == 0 and abs(routes["heat"] - 0.9) < 1e-3
    assert heat["summary"]["hottestFile"] == "src/api/routes.py"
    assert heat["summary"]["activeConflicts"] == 1 and heat["summary"]["totalFiles"] == 4
    dirs = {d["path"]: d for d in heat["dirs"]}
    assert dirs["src/"]["fileCount"] == 3 and dirs["src/"]["conflictCount"] == 1
    assert "src/auth/" in dirs and heat["directories"] == heat["dirs"]


def test_overlapping_globs_of_two_sessions_make_a_conflict(harness):
    _session(harness, "a1", ["lib/**"])
    _session(harness, "a2", ["lib/core.py"])
    files = {f["path"]: f for f in harness.state.pheromones.files(harness.ctx())["files"]}
    assert files["lib/core.py"]["conflict"] and files["lib/**"]["conflict"]


def test_file_heat_depth_and_path_filter(harness):
    _session(harness, "a1", ["a/b/c/d/e.py", "x/y.py"])
    ph = harness.state.pheromones
    shallow = {d["path"] for d in ph.files(harness.ctx(), depth=1)["dirs"]}
    assert shallow == {"a/", "x/"}
    deep = {d["path"] for d in ph.files(harness.ctx(), depth=3)["dirs"]}
    assert deep == {"a/", "a/b/", "a/b/c/", "x/"}
    only = ph.files(harness.ctx(), path="a/b")
    assert [f["path"] for f in only["files"]] == ["a/b/c/d/e.py"]


def test_file_heat_works_without_the_sessions_primitive(harness, monkeypatch):
    monkeypatch.delattr(harness.state, "sessions")
    harness.state.pheromones.spray(harness.ctx(), table="files", id="a.py", strength=0.5)
    assert harness.state.pheromones.files(harness.ctx())["summary"]["hottestFile"] == "a.py"
