"""The .portdaddyrc reader and the ordering of pd up (cli/up.py), without processes."""

import json

import pytest

from cli.up import RcError, ServiceSpec, env_name, find_cycle, find_rc, load_rc, service_env, start_order


def rc(tmp_path, body) -> object:
    path = tmp_path / ".portdaddyrc"
    path.write_text(json.dumps(body))
    return path


def test_a_full_rc_is_read_with_identities_and_paths(tmp_path):
    (tmp_path / "packages" / "api").mkdir(parents=True)
    spec = load_rc(rc(tmp_path, {
        "project": "myapp", "context": "feat-x", "portRange": [4000, 4099],
        "services": {
            "api": {"cmd": "npm run dev", "port": 4001, "healthPath": "/health", "healthTimeout": 9000,
                    "cwd": "packages/api", "env": {"DEBUG": "1", "N": 2}, "needs": ["db"]},
            "db": "postgres -p $PORT",
            "worker": {"cmd": "node w.js", "noPort": True, "needs": "api"},
        },
    }))
    api = spec.services["api"]
    assert (spec.project, spec.context, spec.port_range) == ("myapp", "feat-x", "4000-4099")
    assert api.identity == "myapp:api:feat-x" and api.cwd == (tmp_path / "packages" / "api").resolve()
    assert (api.port, api.health_path, api.health_timeout_ms, api.env) == (4001, "/health", 9000,
                                                                           {"DEBUG": "1", "N": "2"})
    assert spec.services["db"].cmd == "postgres -p $PORT" and spec.services["worker"].needs == ["api"]
    assert load_rc(spec.rc_path, context="other").services["db"].identity == "myapp:db:other"


@pytest.mark.parametrize("body,words", [
    ({"services": {"a": {}}}, "project"),
    ({"project": "bad name", "services": {"a": {}}}, "project"),
    ({"project": "p"}, "services"),
    ({"project": "p", "services": {"a": {"cmd": "x", "helthPath": "/"}}}, "unknown field(s) helthPath"),
    ({"project": "p", "services": {"a": {"needs": ["ghost"]}}}, "'ghost'"),
    ({"project": "p", "services": {"a": {"needs": ["a"]}}}, "needs names itself"),
    ({"project": "p", "services": {"a": {"port": 70000}}}, "services.a.port"),
    ({"project": "p", "services": {"a": {"healthPath": "health"}}}, "starting with /"),
    ({"project": "p", "services": {"a": {}}, "portRange": [9, 1]}, "portRange"),
    ({"project": "p", "services": {"a": {}}, "extra": 1}, "unknown top-level"),
])
def test_bad_rc_files_are_refused_naming_the_field(tmp_path, body, words):
    with pytest.raises(RcError) as info:
        load_rc(rc(tmp_path, body))
    assert words in str(info.value)


def test_not_json_is_refused(tmp_path):
    path = tmp_path / ".portdaddyrc"
    path.write_text("{nope")
    with pytest.raises(RcError, match="not valid JSON"):
        load_rc(path)


def test_a_cycle_is_refused_with_its_path(tmp_path):
    with pytest.raises(RcError) as info:
        load_rc(rc(tmp_path, {"project": "p", "services": {
            "web": {"needs": ["api"]}, "api": {"needs": ["db"]}, "db": {"needs": ["web"]}, "x": {}}}))
    assert "web -> api -> db -> web" in str(info.value)


def test_find_cycle():
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]


def test_start_order_puts_needs_first_and_keeps_file_order_for_ties(tmp_path):
    spec = load_rc(rc(tmp_path, {"project": "p", "services": {
        "web": {"needs": ["api", "auth"]}, "api": {"needs": ["db"]}, "auth": {}, "db": {}, "docs": {}}}))
    assert start_order(spec) == ["auth", "db", "docs", "api", "web"]
    assert start_order(spec, ["api"]) == ["db", "api"]
    with pytest.raises(RcError, match="no service nope"):
        start_order(spec, ["nope"])


def test_the_child_environment_names_its_port_and_its_needs(tmp_path):
    svc = ServiceSpec(name="web", identity="p:web:main", env={"PORT": "1", "X": "y"}, cwd=tmp_path)
    env = service_env(svc, 4321, {"auth-api": 4000, "worker": None})
    assert env["PORT"] == "4321" and env["X"] == "y" and env["PORT_DADDY_SERVICE"] == "p:web:main"
    assert env["AUTH_API_PORT"] == "4000" and env["AUTH_API_URL"] == "http://127.0.0.1:4000"
    assert "WORKER_PORT" not in env and env_name("my.svc") == "MY_SVC"


def test_find_rc_walks_up(tmp_path):
    path = rc(tmp_path, {"project": "p", "services": {"a": {}}})
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_rc(deep) == path
