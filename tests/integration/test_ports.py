"""Ports end to end: CLI, SDK over IPC and HTTP agree; claims survive restarts and crashes."""

from __future__ import annotations

import threading
import time
import uuid

from pdcore.client import Client
from pdcore.errors import OpError


def uid(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def test_same_identity_same_port_through_cli_sdk_and_http(daemon):
    ident = f"{uid()}:api:main"
    cli = daemon.pd("claim", ident, "-q")
    assert cli.returncode == 0, cli.stderr
    port = int(cli.stdout.strip())
    assert daemon.client().port_claim(id=ident)["port"] == port
    status, body = daemon.http("POST", "/claim", {"id": ident})
    assert status == 200 and body["success"] is True
    assert (body["port"], body["id"], body["existing"]) == (port, ident, True)
    http_client = Client(daemon.config, transport="http")
    assert http_client.port_claim(id=ident)["port"] == port


def test_services_find_and_release_routes(daemon):
    project = uid("p")
    for stack in ("api", "web"):
        daemon.client().port_claim(id=f"{project}:{stack}:main")
    status, body = daemon.http("GET", f"/services?pattern={project}:*")
    assert status == 200 and body["count"] == 2
    status, body = daemon.http("GET", f"/services/{project}:api:main")
    assert status == 200 and body["service"]["id"] == f"{project}:api:main"
    found = daemon.pd("find", f"{project}:*:main", "--json")
    assert found.returncode == 0 and '"count": 2' in found.stdout
    status, body = daemon.http("PUT", f"/services/{project}:api:main/endpoints/local", {"url": "http://x"})
    assert status == 200 and body["endpoints"] == {"local": "http://x"}
    status, body = daemon.http("DELETE", "/release", {"id": f"{project}:*"})
    assert status == 200 and body["released"] == 2 and len(body["releasedPorts"]) == 2
    status, body = daemon.http("GET", f"/services/{project}:api:main")
    assert status == 404 and body["success"] is False and body["code"] == "not_found"


def test_bad_identity_gets_400_naming_the_field(daemon):
    status, body = daemon.http("POST", "/claim", {"id": "no spaces allowed"})
    assert status == 400 and body["field"] == "id" and body["reason"] == "invalid_identity"
    status, body = daemon.http("POST", "/claim", {})
    assert status == 400 and body["field"] == "id"
    bad = daemon.pd("claim", "a:b:c:d:e")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "id" in bad.stderr


def test_fifty_concurrent_claims_of_one_identity_get_one_port(daemon):
    ident = f"{uid()}:api"
    ports: list[int] = []
    errors: list[Exception] = []

    def worker() -> None:
        try:
            with daemon.client() as c:
                ports.append(c.port_claim(id=ident)["port"])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(ports) == 50 and len(set(ports)) == 1


def test_five_hundred_identities_get_five_hundred_ports(daemon):
    project = uid("m")
    results: dict[str, int] = {}

    def worker(k: int) -> None:
        with daemon.client() as c:
            for i in range(k, 500, 10):
                results[f"{project}:s{i}"] = c.port_claim(id=f"{project}:s{i}")["port"]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 500 and len(set(results.values())) == 500


def test_port_survives_restart(fresh_daemon):
    ident = f"{uid()}:api:main"
    port = fresh_daemon.client().port_claim(id=ident)["port"]
    out = fresh_daemon.pd("restart")
    assert out.returncode == 0, out.stderr
    # `pd restart` started a new supervisor outside the fixture's; adopt it for cleanup
    fresh_daemon.wait_ready(own_process=False)
    again = Client(fresh_daemon.config).port_claim(id=ident)
    assert again["port"] == port and again["existing"] is True
    fresh_daemon.pd("stop")


def test_kill_core_during_burst_loses_no_acknowledged_claim(fresh_daemon):
    project = uid("k")
    acked: dict[str, int] = {}
    stop = threading.Event()

    def burst(k: int) -> None:
        c = fresh_daemon.client(connect_retry_s=10)
        i = 0
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            ident = f"{project}:w{k}:n{i}"
            i += 1
            try:
                acked[ident] = c.port_claim(id=ident)["port"]
            except OpError:
                c.close()

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.7)
    old = fresh_daemon.core_pid()
    new = fresh_daemon.kill_core()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert new != old and len(acked) > 50
    listed = {s["id"]: s["port"] for s in Client(fresh_daemon.config).port_list(pattern=f"{project}:*",
                                                                                 limit=100000)["services"]}
    lost = {i: p for i, p in acked.items() if listed.get(i) != p}
    assert not lost, f"{len(lost)} acknowledged claims lost, e.g. {list(lost.items())[:3]}"


def test_new_user_path(fresh_daemon):
    status = fresh_daemon.pd("status")
    assert status.returncode == 0 and "running" in status.stdout
    claimed = fresh_daemon.pd("claim", "myapp:api:main", "-q")
    assert claimed.returncode == 0 and claimed.stdout.strip().isdigit()
    version = fresh_daemon.pd("version")
    assert version.returncode == 0 and "daemon" in version.stdout
    stopped = fresh_daemon.pd("stop")
    assert stopped.returncode == 0
    after = fresh_daemon.pd("status")
    assert after.returncode == 1 and "not running" in after.stdout
    down = fresh_daemon.pd("claim", "myapp:api:main", "-q")
    assert down.returncode == 1 and "pd start" in down.stderr


def test_shared_memory_answers_equal_the_core(daemon):
    ident = f"{uid()}:api:shm"
    with_shm = daemon.client()
    without = Client(daemon.config, transport="ipc")
    without._shm = None
    with_shm.port_claim(id=ident, metadata={"k": 1})
    assert with_shm._shm.try_call("port.get", {"id": ident}) == without.port_get(id=ident)
    with_shm.port_set_endpoint(id=ident, env="dev", url="http://127.0.0.1:1")
    assert with_shm._shm.try_call("port.get", {"id": ident}) == without.port_get(id=ident)
    status, body = daemon.http("GET", f"/services/{ident}")
    assert status == 200 and body["service"] == without.port_get(id=ident)["service"]
    with_shm.port_release(id=ident)
    try:
        with_shm.port_get(id=ident)
    except OpError as err:
        assert err.code == "not_found"
    else:
        raise AssertionError("a released service must be gone from state.shm too")
