"""Bad input a fuzzer (schemathesis, against GET /openapi.json) sent to a real daemon: each
request here used to get a 500, an HTML page or a non-JSON body, and now gets a 4xx JSON error
naming the field. Afterwards the daemon still answers and the refused values left no trace.
"""

from __future__ import annotations

import json
import socket
import uuid

import pytest


def uid(prefix: str = "fz") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _assert_refused(status: int, body: dict, field: str, code: str = "invalid_argument") -> None:
    assert 400 <= status < 500, (status, body)
    assert body.get("success") is False, body
    assert (body.get("reason"), body.get("field")) == (code, field), body
    assert isinstance(body.get("error"), str) and body["error"]


@pytest.mark.parametrize("path,field", [
    ("/activity?before=18697662088541977821839360", "before"),   # too big for a frame: was 500 OverflowError
    ("/activity?before=9223372036854775809", "before"),          # fits a frame, not SQLite: was 500 in the core
    ("/agents?limit=3637924850606175055511552", "limit"),
    ("/changelog?before=9223372036854775808", "before"),
    ("/msg/fz-chan?after=20703491131230052352", "after"),
    ("/notes?after=9223372036854775900", "after"),
    ("/arbiter/violations?since=6481123634648071206804281218213871616", "since"),
])
def test_huge_integers_in_the_query_are_400_naming_the_field(daemon, path: str, field: str):
    status, body = daemon.http("GET", path)
    _assert_refused(status, body, field)


def test_a_huge_integer_in_the_body_is_400_and_claims_nothing(daemon):
    ident = f"{uid()}:api"
    status, body = daemon.http("POST", "/claim", f'{{"id": "{ident}", "port": 1{"0" * 30}}}'.encode())
    _assert_refused(status, body, "port")
    assert daemon.http("GET", f"/services/{ident}")[0] == 404


def test_unknown_body_keys_holding_huge_integers_are_ignored(daemon):
    ident = f"{uid()}:api"
    raw = f'{{"id": "{ident}", "None": [-64018368528466040586240], "": {{"x": 1{"0" * 40}}}}}'.encode()
    status, body = daemon.http("POST", "/claim", raw)
    assert status == 200 and body["id"] == ident, body
    assert daemon.http("DELETE", "/release", {"id": ident})[0] == 200


def test_a_lone_surrogate_in_a_string_is_400_naming_the_field(daemon):
    status, body = daemon.http("POST", "/claim", b'{"id": "fz:\\udaca"}')
    _assert_refused(status, body, "id")


@pytest.mark.parametrize("raw", [
    b'{"id": "fz:nan", "expires": NaN}',
    b'{"id": "fz:nan", "metadata": {"x": NaN}}',
    b'{"id": "fz:nan", "metadata": {"x": -Infinity}}',
    b'{"id": "fz:nan", "metadata": {"x": 1e999}}',
])
def test_nan_and_infinity_are_400_invalid_json_and_are_never_stored(daemon, raw: bytes):
    status, body = daemon.http("POST", "/claim", raw)
    _assert_refused(status, body, "body", "invalid_json")
    assert daemon.http("GET", "/services/fz:nan")[0] == 404  # stored, it came back as `NaN`: not JSON


def test_deeply_nested_values_are_refused_and_the_listing_stays_readable(daemon):
    ident = f"{uid()}:deep"
    for levels in (200, 980, 5000):
        raw = f'{{"id": "{ident}", "metadata": {{"a": {"[" * levels}{"]" * levels}}}}}'.encode()
        status, body = daemon.http("POST", "/claim", raw)
        field, code = ("body", "invalid_json") if levels == 5000 else ("metadata", "invalid_argument")
        _assert_refused(status, body, field, code)
    assert daemon.http("GET", f"/services/{ident}")[0] == 404


def _raw_request(daemon, request: bytes) -> tuple[int, dict, str]:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    content_type = next((h.split(":", 1)[1].strip() for h in lines[1:] if h.lower().startswith("content-type:")), "")
    return int(lines[0].split()[1]), json.loads(payload), content_type


@pytest.mark.parametrize("request_bytes,status,field", [
    (b"GET /services?x=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414, "url"),
    (b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\x00b\r\n\r\n", 400, "request"),
    (b"POST /claim HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: foo\r\n\r\n", 400, "Transfer-Encoding"),
])
def test_requests_gunicorn_refuses_get_the_json_error_body(daemon, request_bytes: bytes, status: int, field: str):
    got_status, body, content_type = _raw_request(daemon, request_bytes)
    assert got_status == status
    assert content_type == "application/json"
    assert body["success"] is False and body["field"] == field and body["code"]
    assert daemon.http("GET", "/health")[0] == 200  # the worker that refused it keeps serving
