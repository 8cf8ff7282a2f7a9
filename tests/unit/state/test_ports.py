from pdcore.errors import OpError
from pdcore.state.ports import stable_hash


def test_same_identity_gets_same_port_and_existing_flag(harness):
    st = harness.state
    first = st.ports.claim(harness.ctx(), id="myapp:api:main")
    again = st.ports.claim(harness.ctx(), id="myapp:api:main")
    assert first["port"] == again["port"]
    assert (first["existing"], again["existing"]) == (False, True)


def test_port_is_hash_of_identity_into_range(harness):
    cfg = harness.config
    port = harness.state.ports.claim(harness.ctx(), id="alpha:web")["port"]
    size = cfg.port_range_end - cfg.port_range_start + 1
    assert port == cfg.port_range_start + stable_hash("alpha:web") % size


def test_stable_hash_is_fixed_across_runs():
    assert stable_hash("myapp:api:main") == int.from_bytes(
        __import__("hashlib").sha256(b"myapp:api:main").digest()[:8], "big")


def test_collision_probes_to_next_free_port(make_harness):
    h = make_harness(port_range_start=5000, port_range_end=5002, reserved_ports=[])
    ports = {h.state.ports.claim(h.ctx(), id=f"p{i}")["port"] for i in range(3)}
    assert ports == {5000, 5001, 5002}
    try:
        h.state.ports.claim(h.ctx(), id="p3")
    except OpError as exc:
        assert exc.code == "port_unavailable"
    else:
        raise AssertionError("a full range must refuse")


def test_reserved_ports_are_skipped(make_harness):
    h = make_harness(port_range_start=8079, port_range_end=8081, reserved_ports=[8080])
    ports = {h.state.ports.claim(h.ctx(), id=f"r{i}")["port"] for i in range(2)}
    assert ports == {8079, 8081}


def test_claims_survive_reload(harness):
    port = harness.state.ports.claim(harness.ctx(), id="keep:me")["port"]
    harness.reopen()
    again = harness.state.ports.claim(harness.ctx(), id="keep:me")
    assert again == {**again, "port": port, "existing": True}


def test_expiry_releases_at_deadline(harness):
    harness.state.ports.claim(harness.ctx(), id="ttl:svc", expires=1000)
    harness.advance(999)
    assert harness.state.ports.list(harness.ctx(), pattern="ttl:*")["count"] == 1
    harness.advance(2)
    assert harness.state.ports.list(harness.ctx(), pattern="ttl:*")["count"] == 0


def test_find_with_wildcards(harness):
    for ident in ("app:api:main", "app:web:main", "app:api:dev", "other:api"):
        harness.state.ports.claim(harness.ctx(), id=ident)
    find = lambda p: sorted(s["id"] for s in harness.state.ports.list(harness.ctx(), pattern=p)["services"])  # noqa: E731
    assert find("app:*") == ["app:api:dev", "app:api:main", "app:web:main"]
    assert find("app:*:main") == ["app:api:main", "app:web:main"]
    assert find("ap*") == ["app:api:dev", "app:api:main", "app:web:main"]
    assert find("*:api") == ["other:api"]


def test_release_by_pattern(harness):
    for ident in ("rel:a", "rel:b", "keep:a"):
        harness.state.ports.claim(harness.ctx(), id=ident)
    out = harness.state.ports.release(harness.ctx(), id="rel:*")
    assert out["released"] == 2
    assert harness.state.ports.list(harness.ctx())["count"] == 1


def test_preferred_port_held_by_other_is_refused(harness):
    port = harness.state.ports.claim(harness.ctx(), id="a:b")["port"]
    try:
        harness.state.ports.claim(harness.ctx(), id="c:d", port=port)
    except OpError as exc:
        assert exc.code == "port_unavailable" and exc.field == "port"
    else:
        raise AssertionError
