"""Bad HTTP input found by fuzzing the daemon's own OpenAPI spec (schemathesis) gets a 4xx JSON
error naming the field, never a 500, an HTML page or a non-JSON body.

Each test pins one failure class the fuzzer found: integers larger than a frame or SQLite can
hold, NaN/Infinity (which Python's json accepts but JSON does not), lone UTF-16 surrogates,
nesting deeper than the parser's recursion limit, unknown body keys holding such values, and
requests gunicorn refuses before the app sees them.
"""

from __future__ import annotations

import json
import math
import random
import re
from types import SimpleNamespace

import pytest
from falcon import testing

from pdcore.config import Config
from pdcore.errors import OpError
from pdcore.ops import CATALOGUE, VALIDATORS
from pdcore.ops.schema import (
    INT_MAX,
    INT_MIN,
    MAX_NESTING,
    Arg,
    Op,
    check_identity,
    check_identity_pattern,
    coerce_text_args,
    compile_validator,
    loads_json,
)
from pdcore.testing import local_client, token_home
from workers import openapi, server
from workers.app import create_app
from workers.corelink import CoreClient

APP_HOME, _HEADERS = token_home()
LOCAL = {**_HEADERS, "Content-Type": "application/json"}  # a local caller presenting the home's token
NUMBERS = Op("test.numbers", "test.numbers", "Numbers.", args=(
    Arg("count", "int"), Arg("limit", "int", min=1, max=100), Arg("ratio", "float"),
    Arg("share", "float", min=0.0, max=1.0), Arg("meta", "dict"), Arg("any", "any"),
))


def _refusal(validate, raw: dict) -> OpError:
    with pytest.raises(OpError) as info:
        validate(raw)
    return info.value


# -- the catalogue's validators ---------------------------------------------------------------

@pytest.mark.parametrize("value", [INT_MAX + 1, 2**64 - 1, INT_MIN - 1, -(2**70)])
def test_an_int_argument_outside_64_bits_is_refused_naming_it(value: int):
    validate = compile_validator(NUMBERS)
    err = _refusal(validate, {"count": value})
    assert (err.code, err.field, err.status) == ("invalid_argument", "count", 400)
    assert validate({"count": INT_MAX})["count"] == INT_MAX  # the edges themselves are fine
    assert validate({"count": INT_MIN})["count"] == INT_MIN
    err = _refusal(validate, {"limit": value})  # a declared bound is named before the 64-bit one
    assert err.field == "limit" and ("<= 100" in err.message or ">= 1" in err.message)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_a_float_argument_must_be_finite(value: float):
    validate = compile_validator(NUMBERS)
    for name in ("ratio", "share"):
        err = _refusal(validate, {name: value})
        assert (err.code, err.field) == ("invalid_argument", name)


def test_paging_ids_past_sqlite_range_are_refused_by_the_real_catalogue():
    # GET /activity?before=9223372036854775809 crashed the core (SQLite OverflowError): 500.
    err = _refusal(VALIDATORS["activity.list"], {"before": 2**63 + 1})
    assert (err.code, err.field) == ("invalid_argument", "before")


def _nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_containers_nested_past_the_limit_are_refused_naming_the_argument():
    # A 980-deep metadata was stored and echoed back; readers in a thread (the fuzzer itself)
    # then crashed with RecursionError on every GET /services.
    validate = compile_validator(NUMBERS)
    assert validate({"meta": {"a": _nested(MAX_NESTING - 1)}, "any": _nested(MAX_NESTING)})
    for raw, name in (({"meta": {"a": _nested(MAX_NESTING)}}, "meta"), ({"any": _nested(MAX_NESTING + 1)}, "any")):
        err = _refusal(validate, raw)
        assert (err.code, err.field) == ("invalid_argument", name)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_inside_a_container_or_any_argument_is_refused(value: float):
    # Over IPC (MessagePack) a NaN in metadata was stored and later sent to HTTP clients as `NaN`.
    err = _refusal(VALIDATORS["port.claim"], {"id": "app:api", "metadata": {"a": [1, {"b": value}]}})
    assert (err.code, err.field) == ("invalid_argument", "metadata")
    validate = compile_validator(NUMBERS)
    for raw, name in (({"any": value}, "any"), ({"any": [value]}, "any"), ({"meta": {"x": value}}, "meta")):
        err = _refusal(validate, raw)
        assert (err.code, err.field) == ("invalid_argument", name)


def test_the_real_catalogue_refuses_deep_metadata_on_claim():
    err = _refusal(VALIDATORS["port.claim"], {"id": "app:api", "metadata": {"a": _nested(900)}})
    assert err.field == "metadata"


# -- JSON and query text ---------------------------------------------------------------------

@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999", '{"a": [NaN]}', '{"a": -1e400}'])
def test_strict_json_refuses_what_json_does_not_allow(text: str):
    with pytest.raises(ValueError):
        loads_json(text)
    assert loads_json('{"a": [1, 2.5, -3e10, "x", null, true]}') == {"a": [1, 2.5, -3e10, "x", None, True]}


def test_query_json_nested_too_deep_is_an_argument_error_not_a_crash():
    deep = "[" * 5000 + "]" * 5000
    for name in ("meta", "any"):
        with pytest.raises(OpError) as info:
            coerce_text_args(NUMBERS, {name: deep})
        assert (info.value.code, info.value.field) == ("invalid_argument", name)


def test_query_nan_for_a_dict_argument_is_refused():
    with pytest.raises(OpError) as info:
        coerce_text_args(NUMBERS, {"meta": '{"x": NaN}'})
    assert info.value.field == "meta"


# -- the HTTP front door, with the real core link (no core behind it) -----------------------------

@pytest.fixture
def client(tmp_path) -> testing.TestClient:
    link = CoreClient(tmp_path / "core.sock", connect_wait_ms=0)
    return local_client(create_app(Config(home=tmp_path, token_path=APP_HOME / "auth.token"), core=link), headers=LOCAL)


def _post(client: testing.TestClient, path: str, raw: bytes) -> testing.Result:
    return client.simulate_post(path, body=raw)


@pytest.mark.parametrize("raw", [b'{"id": "app:api", "expires": NaN}', b'{"id": "app:api", "metadata": {"x": Infinity}}',
                                 b'{"id": "app:api", "port": 1e999}'])
def test_nan_and_infinity_in_a_body_are_400_invalid_json(client: testing.TestClient, raw: bytes):
    resp = _post(client, "/claim", raw)
    assert resp.status_code == 400, resp.text
    assert (resp.json["reason"], resp.json["field"], resp.json["success"]) == ("invalid_json", "body", False)


def test_a_body_nested_too_deeply_is_400_invalid_json(client: testing.TestClient):
    raw = b'{"id": "app:api", "metadata": {"a": ' + b"[" * 3000 + b"]" * 3000 + b"}}"
    resp = _post(client, "/claim", raw)
    assert resp.status_code == 400, resp.text
    assert (resp.json["reason"], resp.json["field"]) == ("invalid_json", "body")


@pytest.mark.parametrize("raw,field", [
    (b'{"id": "app:api", "port": 100000000000000000000000000}', "port"),
    (b'{"id": "app:api", "metadata": {"n": -100000000000000000000000000}}', "metadata"),
    (b'{"id": "app:\\udaca"}', "id"),
    (b'{"id": "app:api", "metadata": {"\\udc80": 1}}', "metadata"),
])
def test_a_value_a_frame_cannot_carry_is_400_naming_the_field(client: testing.TestClient, raw: bytes, field: str):
    resp = _post(client, "/claim", raw)
    assert resp.status_code == 400, resp.text
    assert (resp.json["reason"], resp.json["field"]) == ("invalid_argument", field)


def test_a_huge_integer_in_the_query_is_400_naming_the_field(client: testing.TestClient):
    resp = client.simulate_get("/services", query_string="limit=3637924850606175055511552")
    assert resp.status_code == 400, resp.text
    assert (resp.json["reason"], resp.json["field"]) == ("invalid_argument", "limit")


def test_unknown_body_keys_are_ignored_even_when_a_frame_could_not_carry_them(client: testing.TestClient):
    # DELETE /release {"None": [-64018368528466040586240], ...} was a 500: the junk key went to the core.
    raw = b'{"id": "app:api", "None": [-64018368528466040586240], "\\udaca": "\\udc80"}'
    resp = client.simulate_delete("/release", body=raw)
    assert resp.status_code == 503, resp.text  # it got as far as asking the (absent) core
    assert resp.json["code"] == "unavailable"


def test_unknown_body_keys_do_not_reach_the_core(tmp_path):
    seen: list[dict] = []

    class Core:
        async def call(self, action: str, args: dict, **_: object) -> dict:
            seen.append(dict(args))
            return {}

    client = local_client(create_app(Config(home=tmp_path, token_path=APP_HOME / "auth.token"), core=Core()), headers=LOCAL)
    resp = client.simulate_post("/claim", json={"id": "app:api", "junk": 1, "agentId": "a1", "action": "x"})
    assert resp.status_code == 200
    assert seen == [{"id": "app:api", "agentId": "a1"}]


# -- requests gunicorn refuses before the app sees them ---------------------------------------------

@pytest.mark.parametrize("status,code,field,expect", [
    (400, "invalid_argument", "request", 400), (414, "too_large", "url", 414),
    (431, "too_large", "headers", 431), (501, "invalid_argument", "Transfer-Encoding", 400),
])
def test_gunicorn_refusals_are_json_error_bodies(status: int, code: str, field: str, expect: int):
    raw = server.json_error_response(status, "Reason", "Request Line is too large (8192 > 4094)")
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *headers = head.decode("latin-1").split("\r\n")
    assert status_line.startswith(f"HTTP/1.1 {expect} ")
    assert "Content-Type: application/json" in headers
    assert f"Content-Length: {len(body)}" in headers
    parsed = json.loads(body)
    assert parsed == {"success": False, "error": parsed["error"], "code": code, "reason": code, "field": field}


def test_the_servers_own_refusals_are_written_as_json():
    """gunicorn's ASGI protocol answers a request it cannot parse through `_send_error_response`;
    the door's protocol writes our JSON body there (checked end to end in test_bad_input_fuzzed)."""
    written: list[bytes] = []
    stand_in = SimpleNamespace(_safe_write=written.append)
    server.DoorProtocol._send_error_response(stand_in, 414, "Request Line is too large (5025 > 4094)")  # type: ignore[arg-type]
    head, _, body = b"".join(written).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 ") and b"Content-Type: application/json" in head
    assert json.loads(body)["code"] == "too_large"


# -- the spec says what the validators accept --------------------------------------------------

def test_the_spec_gives_every_int_argument_the_validators_64_bit_range():
    spec = openapi.build_spec()
    for op in CATALOGUE.values():
        for arg in op.args:
            if arg.type == "int":
                schema = openapi.arg_schema(arg)
                assert INT_MIN <= schema["minimum"] <= schema["maximum"] <= INT_MAX, (op.name, arg.name)
    assert spec["paths"]["/activity"]["get"]["parameters"]


def test_the_spec_patterns_for_identities_match_the_validators():
    rng = random.Random(7)
    identity = re.compile(openapi.arg_schema(Arg("id", "identity"))["pattern"])
    pattern = re.compile(openapi.arg_schema(Arg("p", "idpattern"))["pattern"])
    for _ in range(20000):
        text = "".join(rng.choice("ab.-_*:/ ") for _ in range(rng.randint(0, 10)))
        for regex, check in ((identity, check_identity), (pattern, check_identity_pattern)):
            try:
                check(text)
                valid = True
            except OpError:
                valid = False
            assert valid == bool(regex.fullmatch(text)), (text, regex.pattern)


def test_the_spec_patterns_for_str_and_text_refuse_what_the_validators_refuse():
    from pdcore.ops.schema import _CONTROL_RE, _TEXT_CONTROL_RE

    for kind, refused in (("str", _CONTROL_RE), ("text", _TEXT_CONTROL_RE)):
        regex = re.compile(openapi.arg_schema(Arg("x", kind))["pattern"])
        for code in list(range(0, 0x100)) + [0x2028, 0xFEFF, 0x10FFFF]:
            text = f"a{chr(code)}b"
            assert bool(regex.fullmatch(text)) != bool(refused.search(text)), (kind, hex(code))


def test_the_spec_documents_the_refusals_the_http_server_answers_on_every_route():
    # GET /locks?owner=<5000 bytes> got 414 from gunicorn, a status the spec did not list.
    spec = openapi.build_spec()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert {"400", "414", "431"} <= set(operation["responses"]), (method, path)


def test_reply_fields_may_be_null_in_the_spec():
    # GET /salvage?project= answers "project": null (the 3.7 shape); the spec said string only.
    reply = openapi.build_spec()["paths"]["/salvage"]["get"]["responses"]["200"]
    props = reply["content"]["application/json"]["schema"]["properties"]
    assert props["project"]["type"] == ["string", "null"]
    assert props["success"] == {"type": "boolean", "const": True}
