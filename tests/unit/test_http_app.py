"""The HTTP app in-process: falcon's TestClient against create_app with a fake core link.

What is proven here: every catalogue route reaches its op; path, query and body arguments
merge and are typed by the schema; core refusals keep their code and status; the gate's
Host, Origin and size rules; Prometheus rendering; the event stream; OpenAPI and the docs
table cover every route.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
from typing import Any

import pytest
from falcon import testing

from pdcore.config import Config
from pdcore.errors import STATUS_BY_CODE, OpError
from pdcore.ops import CATALOGUE
from pdcore.ops.schema import Arg, Op, Route
from pdcore.testing import local_client, token_home
from workers import openapi, sse
from workers.app import create_app
from workers.corelink import CoreClient, reply_timeout
from workers.guard import UNIX_PEER_UID, is_loopback_host, is_loopback_origin
from workers.limits import Limits
from workers.metrics import render_prometheus
from workers.routes import OpResource, build_resources, router_template
from workers.server import SOCKET_UMASK, gunicorn_settings

APP_HOME, LOCAL = token_home()  # Host and the home's token: a local caller that may call


class FakeStream:
    """A core connection for one event stream: AGREE, then the given deliveries, then EOF."""

    def __init__(self, deliveries: list[dict], refuse: OpError | None = None) -> None:
        self.deliveries = list(deliveries)
        self.refuse = refuse
        self.subscribed: list[str] = []
        self.closed = False

    async def subscribe(self, channels: list[str], timeout_s: float = 30.0) -> dict:
        if self.refuse is not None:
            raise self.refuse
        self.subscribed = channels
        return {"action": "subscribe", "channels": channels}

    async def next_delivery(self, timeout_s: float) -> dict | None:
        if self.deliveries:
            return self.deliveries.pop(0)
        raise ConnectionError("the core closed the connection")

    def close(self) -> None:
        self.closed = True


class FakeCore:
    """Records calls; answers with `results[action]` (a dict, an exception, or a function,
    which may be a coroutine function)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, bool]] = []
        self.timeouts: list[float | None] = []
        self.results: dict[str, Any] = {}
        self.streams: list[FakeStream] = []
        self.deliveries: list[dict] = []
        self.refuse: OpError | None = None

    async def call(self, action: str, args: dict, *, idempotent: bool = False,
                   timeout_s: float | None = None) -> dict:
        self.calls.append((action, dict(args), idempotent))
        self.timeouts.append(timeout_s)
        result = self.results.get(action, {"echo": action})
        if isinstance(result, BaseException):
            raise result
        if callable(result):
            result = result(args)
            if inspect.isawaitable(result):
                result = await result
        return result

    def stream(self) -> FakeStream:
        s = FakeStream(self.deliveries, self.refuse)
        self.streams.append(s)
        return s

    @property
    def last(self) -> tuple[str, dict]:
        action, args, _ = self.calls[-1]
        return action, args


ECHO_OP = Op(
    "test.echo", "test.echo", "Echo for tests.",
    args=(
        Arg("name", "name", required=True, where="path"),
        Arg("n", "int", where="path"),
        Arg("limit", "int", where="query"),
        Arg("ratio", "float", where="query"),
        Arg("active", "bool", where="query"),
        Arg("pattern", "list", where="query"),
        Arg("note", "str"),
    ),
    routes=(Route("POST", "/test/{name}/items/{n}", 201), Route("GET", "/test/{name}/items/{n}")),
)
PARKING_OP = Op("test.wait", "test.wait", "Parks.", args=(Arg("wait", "int"),), parks=True,
                routes=(Route("POST", "/test-wait"),))


def make_app(core: FakeCore, monkeypatch: pytest.MonkeyPatch | None = None, **settings: Any) -> Any:
    if monkeypatch is not None:
        monkeypatch.setitem(CATALOGUE, ECHO_OP.name, ECHO_OP)
        monkeypatch.setitem(CATALOGUE, PARKING_OP.name, PARKING_OP)
    return create_app(Config(home=APP_HOME, **settings), core=core)


def make_client(core: FakeCore, monkeypatch: pytest.MonkeyPatch | None = None, **settings: Any) -> testing.TestClient:
    return local_client(make_app(core, monkeypatch, **settings), headers=LOCAL)


@pytest.fixture
def core() -> FakeCore:
    return FakeCore()


@pytest.fixture
def client(core: FakeCore, monkeypatch: pytest.MonkeyPatch) -> testing.TestClient:
    return make_client(core, monkeypatch)


def _sample(arg: Arg | None) -> str:
    kind = arg.type if arg else "str"
    return {"int": "7", "float": "1.5", "bool": "true", "identity": "app:api", "idpattern": "app:*"}.get(kind, "x")


# -- routes from the catalogue --------------------------------------------------------------

def test_every_catalogue_route_reaches_its_op_with_its_status(core: FakeCore, client: testing.TestClient):
    sse_key = ("GET", openapi.SSE_PATH)
    for op in list(CATALOGUE.values()):
        args = {a.name: a for a in op.args}
        for route in op.routes:
            if (route.method, route.path) == sse_key:
                continue
            path = re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m, args=args: _sample(args.get(m.group(1))), route.path)
            resp = client.simulate_request(route.method, path, json={} if route.method != "GET" else None)
            assert resp.status_code == route.status, (op.name, route, resp.json)
            assert resp.json["success"] is True
            assert core.last[0] == op.name, (route, core.last)


def test_path_query_and_body_merge_with_types_from_the_schema(core: FakeCore, client: testing.TestClient):
    resp = client.simulate_post("/test/web/items/3", params={"limit": "10", "ratio": "0.5", "active": "no",
                                                            "pattern": '["a", 1]', "ignored": "x"},
                                json={"note": "hi", "extra": {"k": 1}, "action": "daemon.config"})
    assert resp.status_code == 201
    # unknown keys ("ignored", "extra", "action") stay behind: only the op's arguments travel
    assert core.last == ("test.echo", {"limit": 10, "ratio": 0.5, "active": False, "pattern": ["a", 1],
                                       "note": "hi", "name": "web", "n": 3})


def test_path_parameters_win_over_body_and_body_over_query(core: FakeCore, client: testing.TestClient):
    client.simulate_post("/test/web/items/3", params={"note": "q"}, json={"name": "other", "n": 9, "note": "b"})
    _, args = core.last
    assert (args["name"], args["n"], args["note"]) == ("web", 3, "b")


def test_blank_query_values_count_as_absent(core: FakeCore, client: testing.TestClient):
    client.simulate_get("/services", query_string="pattern=&status=&port=")
    assert core.last == ("port.list", {})


def test_reads_are_marked_idempotent_and_writes_are_not(core: FakeCore, client: testing.TestClient):
    client.simulate_get("/health")
    assert core.calls[-1][2] is True
    client.simulate_post("/claim", json={"id": "a:b"})
    assert core.calls[-1][2] is False


def test_agent_id_in_the_query_is_passed_to_the_core(core: FakeCore, client: testing.TestClient):
    client.simulate_get("/health", params={"agentId": "agent-7"})
    assert core.last[1] == {"agentId": "agent-7"}


def test_query_text_of_the_wrong_type_is_refused_naming_the_field(core: FakeCore, client: testing.TestClient):
    resp = client.simulate_get("/services", params={"port": "abc"})
    assert resp.status_code == 400
    assert resp.json["reason"] == "invalid_argument" and resp.json["field"] == "port"
    assert "port" in resp.json["error"]
    assert core.calls == []


def test_an_encoded_slash_stays_inside_its_path_segment(core: FakeCore, client: testing.TestClient):
    resp = client.simulate_post("/test/a%2Fb:c/items/1", json={})
    assert resp.status_code == 201, resp.json
    assert core.last[1]["name"] == "a/b:c"


def test_trailing_slash_is_ignored(core: FakeCore, client: testing.TestClient):
    assert client.simulate_get("/services/").status_code == 200
    assert core.last[0] == "port.list"


def test_fields_named_differently_at_one_level_do_not_conflict():
    ops = [Op("a.get", "a.get", "A.", args=(Arg("id", where="path"),), routes=(Route("GET", "/things/{id}"),)),
           Op("a.parts", "a.parts", "B.", args=(Arg("thingId", where="path"),),
              routes=(Route("GET", "/things/{thingId}/parts"),))]
    core = FakeCore()
    resources = build_resources(ops, core, Limits(4, 4), 1000, {}, skip=set())
    assert set(resources) == {"/things/{p2}", "/things/{p2}/parts"}
    assert router_template("/things/{thingId}/parts") == ("/things/{p2}/parts", {"p2": "thingId"})
    assert router_template("/files/{path:path}") == ("/files/{p2:path}", {"p2": "path"})


def test_two_ops_on_one_method_and_path_are_refused_at_build_time():
    ops = [Op("a.one", "a.one", "A.", routes=(Route("GET", "/same"),)),
           Op("a.two", "a.two", "B.", routes=(Route("GET", "/same"),))]
    with pytest.raises(ValueError, match="routed to both"):
        build_resources(ops, FakeCore(), Limits(4, 4), 1000, {}, skip=set())
    assert isinstance(OpResource("/x"), OpResource)


# -- bodies and errors ----------------------------------------------------------------------

@pytest.mark.parametrize("body, phrase", [
    ("{bad", "not valid JSON"),
    ("[1, 2]", "not an array"),
    ('"text"', "not a string"),
    (b"\xff\xfe\xfa", "not valid JSON"),
])
def test_a_body_that_is_not_a_json_object_is_400_invalid_json(core: FakeCore, client: testing.TestClient,
                                                              body: Any, phrase: str):
    resp = client.simulate_post("/claim", body=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json["reason"] == "invalid_json" and resp.json["field"] == "body"
    assert phrase in resp.json["error"]
    assert core.calls == []


def test_an_empty_body_is_an_empty_object(core: FakeCore, client: testing.TestClient):
    assert client.simulate_post("/claim").status_code == 200
    assert core.last == ("port.claim", {})


def test_core_refusals_keep_their_code_status_field_and_details(core: FakeCore, client: testing.TestClient):
    core.results["port.claim"] = OpError("claim_taken", "port 3100 is held by x:y; pick another", "port",
                                         holder="x:y", action="port.claim")
    resp = client.simulate_post("/claim", json={"id": "a:b", "port": 3100})
    assert resp.status_code == 409
    assert resp.json == {"success": False, "error": "port 3100 is held by x:y; pick another",
                         "code": "claim_taken", "reason": "claim_taken", "field": "port", "holder": "x:y"}


@pytest.mark.parametrize("code", sorted(STATUS_BY_CODE))
def test_every_error_code_maps_to_its_status(core: FakeCore, client: testing.TestClient, code: str):
    core.results["daemon.health"] = OpError(code, f"{code} happened")
    resp = client.simulate_get("/health")
    assert resp.status_code == STATUS_BY_CODE[code]
    assert resp.json["reason"] == code and resp.json["success"] is False


def test_core_down_is_503_saying_how_to_start_it(tmp_path):
    link = CoreClient(tmp_path / "core.sock", connect_wait_ms=0)
    client = local_client(create_app(Config(home=tmp_path, token_path=APP_HOME / "auth.token"), core=link), headers=LOCAL)
    resp = client.simulate_get("/health")
    assert resp.status_code == 503
    assert resp.json["reason"] == "unavailable"
    assert "pd start" in resp.json["error"]
    assert resp.headers["retry-after"] == "1"


def test_an_unexpected_exception_is_500_internal_and_logged(core: FakeCore, client: testing.TestClient, caplog):
    core.results["daemon.health"] = KeyError("boom")
    with caplog.at_level("ERROR", logger="pd.http"):
        resp = client.simulate_get("/health")
    assert resp.status_code == 500
    assert resp.json["reason"] == "internal" and "KeyError" in resp.json["error"]
    assert "event=internal_error" in caplog.text
    assert client.simulate_get("/version").status_code == 200  # the app keeps serving


def test_unknown_route_and_wrong_method_are_json_errors(client: testing.TestClient):
    resp = client.simulate_get("/no/such/route")
    assert resp.status_code == 404 and resp.json["reason"] == "not_found"
    assert "/openapi.json" in resp.json["error"]
    resp = client.simulate_request("PATCH", "/claim")
    assert resp.status_code == 405 and resp.json["reason"] == "method_not_allowed"
    assert "POST" in resp.headers["allow"]


# -- the gate: Host, Origin, size -------------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost", "localhost:9876", "LOCALHOST.", "127.0.0.1", "127.0.0.1:9876",
                                  "127.9.9.9:1", "[::1]", "[::1]:9876"])
def test_loopback_hosts_are_accepted(host: str):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:9876", "localhost.evil.example", "10.0.0.1",
                                  "0.0.0.0", "[::2]:80", "::1", "127.0.0.1:abc", "", "[::1]x"])
def test_other_hosts_are_refused(host: str):
    assert not is_loopback_host(host)


def test_a_foreign_host_header_over_tcp_is_403_bad_host(core: FakeCore, client: testing.TestClient):
    resp = client.simulate_get("/health", host="rebind.evil.example", remote_addr="127.0.0.1")
    assert resp.status_code == 403
    assert resp.json["reason"] == "bad_host" and resp.json["field"] == "Host"
    assert core.calls == []


def test_the_unix_socket_is_not_host_checked(core: FakeCore, client: testing.TestClient):
    # the server marks a daemon.sock request with its peer's uid: here this process's, the owner
    resp = client.simulate_get("/health", host="anything", extras={UNIX_PEER_UID: os.getuid()})
    assert resp.status_code == 200


@pytest.mark.parametrize("origin, allowed", [
    ("http://localhost:9876", True), ("http://127.0.0.1", True), ("https://[::1]:8443", True),
    ("http://evil.example", False), ("null", False), ("file://", False), ("http://localhost.evil.example", False),
])
def test_origin_rule(origin: str, allowed: bool):
    assert is_loopback_origin(origin) is allowed


def test_a_cross_origin_write_is_403_bad_origin_and_reads_pass(core: FakeCore, client: testing.TestClient):
    resp = client.simulate_post("/claim", json={"id": "a:b"}, headers={"Origin": "http://evil.example"})
    assert resp.status_code == 403 and resp.json["reason"] == "bad_origin" and resp.json["field"] == "Origin"
    assert core.calls == []
    assert client.simulate_get("/health", headers={"Origin": "http://evil.example"}).status_code == 200
    ok = client.simulate_post("/claim", json={"id": "a:b"}, headers={"Origin": "http://localhost:9876"})
    assert ok.status_code == 200


def test_a_body_over_the_limit_is_413_before_the_core_is_asked(core: FakeCore, monkeypatch):
    client = make_client(core, monkeypatch, http_max_body=100)
    resp = client.simulate_post("/claim", body=json.dumps({"id": "a:b", "cmd": "x" * 200}))
    assert resp.status_code == 413
    assert resp.json["reason"] == "too_large" and "100" in resp.json["error"]
    assert core.calls == []
    assert client.simulate_post("/claim", json={"id": "a:b"}).status_code == 200


# -- metrics, OpenAPI, docs, dashboard ------------------------------------------------------

METRICS = {"uptime": 1500, "counters": {"ops": 12, "frames.in": 3}, "gauges": {"services": 2, "up": True},
           "store": {"commits": 4, "path": "/x"}, "timers": 1}


def test_prometheus_text_has_typed_samples():
    text = render_prometheus(METRICS)
    assert "# TYPE pd_ops_total counter\npd_ops_total 12\n" in text
    assert "pd_frames_in_total 3\n" in text
    assert "# TYPE pd_services gauge\npd_services 2\n" in text
    assert "pd_up 1\n" in text
    assert "pd_store_commits 4\n" in text and "path" not in text
    assert "pd_uptime_ms 1500\n" in text
    for line in text.splitlines():
        assert line.startswith("#") or re.fullmatch(r"pd_[a-z0-9_]+ -?[0-9.e+]+", line), line


def test_metrics_route_renders_prometheus_on_request_and_json_otherwise(core: FakeCore, client: testing.TestClient):
    core.results["daemon.metrics"] = METRICS
    resp = client.simulate_get("/metrics", params={"format": "prometheus"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "pd_ops_total 12" in resp.text
    resp = client.simulate_get("/metrics")
    assert resp.json["success"] is True and resp.json["counters"]["ops"] == 12


def test_openapi_describes_every_catalogue_route(client: testing.TestClient):
    spec = client.simulate_get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    for op in CATALOGUE.values():
        args = {a.name: a for a in op.args}
        for route in op.routes:
            path = openapi.openapi_path(route.path)
            assert path in spec["paths"], (op.name, route)
            operation = spec["paths"][path][route.method.lower()]
            if (route.method, route.path) != ("GET", openapi.SSE_PATH):
                assert operation["x-pd-action"] == op.name
                assert str(route.status) in operation["responses"]
            declared = {(p["in"], p["name"]) for p in operation["parameters"]}
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            for name in openapi.route_fields(route.path):
                assert ("path", name) in declared
            for arg in args.values():
                if arg.name in openapi.route_fields(route.path):
                    continue
                assert ("query", arg.name) in declared or arg.name in body.get("properties", {}), (op.name, arg.name)
            codes = {c for r in operation["responses"].values() for c in r.get("x-codes", [])}
            assert set(op.errors) <= codes, (op.name, set(op.errors) - codes)
            assert "unavailable" in codes


def test_openapi_lists_the_routes_the_http_side_adds(client: testing.TestClient):
    spec = client.simulate_get("/openapi.json").json
    for method, path, *_ in openapi.EXTRA_ROUTES:
        assert method.lower() in spec["paths"][path]


def test_docs_route_table_is_up_to_date():
    current = openapi.docs_table_section(openapi.DOCS_PATH.read_text())
    assert current == openapi.markdown_table(), (
        "docs/http-api.md is out of date with the op catalogue; run: python -m workers.openapi --markdown --write")


def test_dashboard_is_a_small_html_page(client: testing.TestClient):
    resp = client.simulate_get("/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "EventSource" in resp.text and "/services" in resp.text


# -- event streams and caps -----------------------------------------------------------------

def test_sse_streams_deliveries_as_message_events(core: FakeCore, client: testing.TestClient):
    core.deliveries = [
        {"action": "msg.delivery", "id": 7, "channel": "app:build", "message": {"ok": True}, "sender": "ci", "ts": 5},
        {"action": "msg.delivery", "id": 8, "channel": "app:build", "message": "two\nlines", "sender": None, "ts": 6},
    ]
    resp = client.simulate_get("/msg/app:build/subscribe")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream"
    assert core.streams[0].subscribed == ["app:build"]
    events = [e for e in resp.text.split("\n\n") if e.startswith("id:")]
    assert events[0].splitlines()[:2] == ["id: 7", "event: message"]
    data = json.loads(events[0].splitlines()[2][len("data: "):])
    assert data == {"id": 7, "channel": "app:build", "message": {"ok": True}, "sender": "ci", "ts": 5}
    assert json.loads(events[1].splitlines()[2][len("data: "):])["message"] == "two\nlines"
    assert core.streams[0].closed


def test_sse_releases_its_slot_when_the_stream_ends(core: FakeCore, monkeypatch):
    client = make_client(core, monkeypatch, http_max_streams=1)
    for _ in range(3):  # would be refused from the second on if the cap leaked
        assert client.simulate_get("/msg/a/subscribe").status_code == 200


def test_sse_subscribe_refused_by_the_core_is_a_json_error(core: FakeCore, client: testing.TestClient):
    core.refuse = OpError("invalid_argument", "channels must be names", "channels")
    resp = client.simulate_get("/msg/x/subscribe")
    assert resp.status_code == 400 and resp.json["field"] == "channels"
    assert core.streams[0].closed
    assert client.simulate_get("/msg/x/subscribe").status_code == 400  # slot was given back


def test_sse_keepalive_comment_when_idle(monkeypatch):
    class Quiet(FakeStream):
        def __init__(self) -> None:
            super().__init__([])
            self.ticks = 0

        async def next_delivery(self, timeout_s: float) -> dict | None:
            self.ticks += 1
            if self.ticks > 3:
                raise ConnectionError
            return None

    times = iter([0.0, 0.0, 20.0, 20.0, 40.0, 40.0, 60.0, 60.0])
    monkeypatch.setattr(sse, "monotonic", lambda: next(times, 100.0))
    events = sse.ChannelEvents(FakeCore(), Limits(2, 2), keepalive_s=15, field="p2")

    async def collect() -> list[bytes]:
        return [chunk async for chunk in events._events(Quiet(), "c")]

    chunks = asyncio.run(collect())
    assert chunks[0].startswith(b"retry: ")
    assert b": keep-alive\n\n" in chunks


def test_caps_per_worker_name_their_setting():
    limits = Limits(max_streams=2, max_parked=1)
    limits.streams.take("x")
    limits.streams.take("x")
    with pytest.raises(OpError) as err:
        limits.streams.take("x")
    assert err.value.code == "rate_limited" and "http_max_streams=2" in err.value.message
    assert err.value.extra["limit"] == "http_max_streams" and err.value.extra["retryAfter"] == 1
    limits.parked.take("y")  # a cap of its own
    with pytest.raises(OpError) as err:
        limits.parked.take("y")
    assert "http_max_parked=1" in err.value.message
    limits.streams.give_back()
    limits.streams.take("x")


def _conduct(app: Any, scenario: Any) -> Any:
    """Run `scenario(conductor)` against `app` on one event loop (requests can overlap)."""
    async def run() -> Any:
        async with testing.ASGIConductor(app, headers=LOCAL) as conductor:
            return await scenario(conductor)

    return asyncio.run(run())


def test_parked_ops_over_the_cap_get_429_with_retry_after(core: FakeCore, monkeypatch):
    app = make_app(core, monkeypatch, http_max_parked=1)

    async def scenario(conductor: testing.ASGIConductor) -> tuple[Any, Any, Any]:
        release = asyncio.Event()

        async def parked(args: dict) -> dict:
            await release.wait()
            return {"ok": True}

        core.results["test.wait"] = parked
        first = asyncio.ensure_future(conductor.simulate_post("/test-wait", json={"wait": 10}, host="localhost"))
        while not core.calls:
            await asyncio.sleep(0.001)
        inner = await conductor.simulate_post("/test-wait", json={"wait": 10}, host="localhost")  # a second waiter
        release.set()
        outer = await first
        again = await conductor.simulate_post("/test-wait", json={"wait": 10}, host="localhost")
        return outer, inner, again

    outer, inner, again = _conduct(app, scenario)
    assert outer.status_code == 200
    assert inner.status_code == 429 and inner.headers.get("retry-after") == "1"
    assert inner.json["reason"] == "rate_limited" and inner.json["limit"] == "http_max_parked"
    assert again.status_code == 200  # the cap came back


# -- small pieces -----------------------------------------------------------------------------

def test_reply_timeout_follows_the_request_wait():
    assert reply_timeout({}) == 30.0
    assert reply_timeout({"wait": 5000}) == 15.0
    assert reply_timeout({"timeout": 60000, "wait": 1000}) == 70.0
    assert reply_timeout({"wait": True, "timeout": "x"}) == 30.0
    assert reply_timeout({}, parks=True) == 40.0  # the core's own default timeout answers first


def test_only_calls_that_may_park_take_a_parked_place(core: FakeCore, monkeypatch):
    app = make_app(core, monkeypatch, http_max_parked=1)
    inner: list[int] = []

    async def scenario(conductor: testing.ASGIConductor) -> int:
        async def parked(args: dict) -> dict:
            if args.get("wait"):  # no wait: no place taken
                inner.append((await conductor.simulate_post("/test-wait", json={}, host="localhost")).status_code)
            return {}

        core.results["test.wait"] = parked
        return (await conductor.simulate_post("/test-wait", json={"wait": 50}, host="localhost")).status_code

    assert _conduct(app, scenario) == 200
    assert inner == [200]
    client = local_client(app, headers=LOCAL)
    core.results["test.wait"] = {}
    client.simulate_post("/test-wait", json={"wait": 5000})
    assert core.timeouts[-1] == 15.0


def test_gunicorn_settings_bind_the_socket_and_loopback_only():
    cfg = Config(home="/tmp/pd-x", tcp_port=9999, http_workers=3, http_max_connections=77)
    settings = gunicorn_settings(cfg)
    assert settings["bind"] == ["unix:/tmp/pd-x/daemon.sock", "127.0.0.1:9999"]
    assert (settings["worker_class"], settings["workers"]) == ("workers.server.DoorWorker", 3)
    assert settings["worker_connections"] == 77 and settings["http_parser"] == "auto"
    assert settings["preload_app"] is True and settings["accesslog"] is None
    assert settings["errorlog"] == "/tmp/pd-x/daemon.log"
    assert 0o777 & ~SOCKET_UMASK == 0o600
    assert gunicorn_settings(Config(home="/tmp/pd-x", no_tcp=True))["bind"] == ["unix:/tmp/pd-x/daemon.sock"]


def test_every_reply_names_the_home_it_serves(client: testing.TestClient):
    from pdcore.config import HOME_HEADER, home_tag

    for path in ("/health", "/no/such/route"):
        resp = client.simulate_get(path, headers=LOCAL)
        assert resp.headers.get(HOME_HEADER.lower()) == home_tag(APP_HOME)


# -- who may call (docs/security.md) ----------------------------------------------------------------

def test_tcp_without_the_token_is_refused_before_the_core_is_asked(core: FakeCore, client: testing.TestClient):
    resp = client.simulate_get("/services", headers={"Authorization": ""}, extras={})
    assert resp.status_code == 401 and resp.json["code"] == "unauthorized"
    resp = local_client(create_app(Config(home=APP_HOME), core=core)).simulate_get("/services")
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
    assert str(APP_HOME / "auth.token") in resp.json["error"] and resp.json["field"] == "Authorization"
    assert core.calls == []


def test_a_unix_peer_of_another_uid_is_forbidden():
    from pdcore.auth import TokenKeys
    from workers.guard import OWN_UID, OWNER, admit

    keys = TokenKeys(APP_HOME / "auth.token")
    facts = {"over_unix": True, "authorization": None, "cookies": None, "method": "GET", "path": "/services",
             "keys": keys, "cookie": "c"}
    assert admit(peer_uid=OWN_UID, **facts) == OWNER
    for stranger in (OWN_UID + 1, None):
        with pytest.raises(OpError) as info:
            admit(peer_uid=stranger, **facts)
        assert info.value.code == "forbidden" and info.value.status == 403


def test_ops_that_run_commands_are_refused_to_an_anonymous_caller_whatever_let_it_in(
        core: FakeCore, client: testing.TestClient, monkeypatch: pytest.MonkeyPatch):
    from workers import guard

    monkeypatch.setattr(guard, "admit", lambda **facts: guard.ANONYMOUS)  # a door that lets anyone in
    for name in ("spawn.create", "fleet.register", "webhook.register"):
        route = CATALOGUE[name].routes[0]
        resp = client.simulate_request(route.method, route.path, json={})
        assert resp.status_code == 401 and resp.json["code"] == "unauthorized", name
    assert core.calls == []
    assert client.simulate_get("/services").status_code == 200  # the rest is the door's decision
