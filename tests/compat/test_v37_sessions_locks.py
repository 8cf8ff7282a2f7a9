"""3.7 clients over daemon.sock: sessions, locks, error codes, limits and small fields (SPEC.md §4, §6)."""

from __future__ import annotations

import json
import time

import pytest

from pdcore.client import Client
from pdcore.errors import OpError
from tests.compat.conftest import sock_http


def test_post_sessions_answers_id_purpose_and_status_at_the_top(daemon, uid):
    status, body = sock_http(daemon, "POST", "/sessions", {"purpose": "fix the login", "agentId": f"s-{uid}"})
    assert status == 200 and body["success"] is True
    assert body["id"] == body["sessionId"] == body["session"]["id"]
    assert (body["purpose"], body["status"]) == ("fix the login", "active")


def test_lock_owner_comes_from_x_agent_id_then_agent_id_then_a_default(daemon, uid):
    status, body = sock_http(daemon, "POST", f"/locks/h-{uid}", {}, headers={"X-Agent-Id": f"hdr-{uid}"})
    assert status == 200 and body["owner"] == f"hdr-{uid}"
    status, body = sock_http(daemon, "POST", f"/locks/b-{uid}", {"agentId": f"body-{uid}"})
    assert status == 200 and body["owner"] == f"body-{uid}"
    status, body = sock_http(daemon, "POST", f"/locks/hb-{uid}", {"agentId": f"body-{uid}"},
                             headers={"X-Agent-Id": f"hdr-{uid}"})
    assert status == 200 and body["owner"] == f"hdr-{uid}"  # the header comes before agentId
    status, body = sock_http(daemon, "DELETE", f"/locks/hb-{uid}", {}, headers={"X-Agent-Id": f"hdr-{uid}"})
    assert status == 200 and body["released"] is True
    status, body = sock_http(daemon, "POST", f"/locks/d-{uid}", {})
    assert status == 200 and body["owner"] == "anonymous"
    status, body = sock_http(daemon, "DELETE", f"/locks/d-{uid}", {})  # the same default releases it
    assert status == 200 and body["released"] is True


def test_a_second_post_by_the_holder_is_409_lock_held_and_put_renews(daemon, uid):
    name = f"reent-{uid}"
    status, first = sock_http(daemon, "POST", f"/locks/{name}", {"owner": "me", "ttl": 60_000})
    assert status == 200
    status, body = sock_http(daemon, "POST", f"/locks/{name}", {"owner": "me", "ttl": 60_000})
    assert status == 409 and body["code"] == "LOCK_HELD" and body["reason"] == "lock_held"
    assert body["holder"] == "me" and body["expiresAt"] == first["expiresAt"] and body["success"] is False
    status, body = sock_http(daemon, "PUT", f"/locks/{name}", {"owner": "me", "ttl": 120_000})
    assert status == 200 and body["expiresAt"] > first["expiresAt"] and body["fence"] == first["fence"]
    # the SDK's explicit renew flag (what `pd lock` typed twice uses) renews in place
    with Client(daemon.config, transport="http") as sdk:
        again = sdk.call("lock.acquire", name=name, owner="me", ttl=60_000, renew=True)
    assert again["renewed"] is True and again["fence"] == first["fence"]


def test_put_on_an_unknown_or_expired_lock_is_lock_not_found(daemon, uid):
    status, body = sock_http(daemon, "PUT", f"/locks/never-{uid}", {"owner": "me"})
    assert status == 400 and body["code"] == "LOCK_NOT_FOUND" and body["reason"] == "not_found"
    name = f"short-{uid}"
    assert sock_http(daemon, "POST", f"/locks/{name}", {"owner": "me", "ttl": 1})[0] == 200
    time.sleep(0.05)
    status, body = sock_http(daemon, "PUT", f"/locks/{name}", {"owner": "me"})
    assert status == 400 and body["code"] == "LOCK_NOT_FOUND" and body["reason"] == "expired"


def test_error_codes_are_3_7_words_with_ours_in_reason(daemon, uid):
    status, body = sock_http(daemon, "POST", "/claim", {"id": "bad identity!"})
    assert status == 400 and (body["code"], body["reason"]) == ("IDENTITY_INVALID", "invalid_identity")
    status, body = sock_http(daemon, "POST", "/sessions", {})
    assert status == 400 and (body["code"], body["reason"]) == ("VALIDATION_ERROR", "missing_field")
    assert body["field"] == "purpose"
    status, body = sock_http(daemon, "GET", f"/sessions/none-{uid}")
    assert status == 404 and (body["code"], body["reason"]) == ("SESSION_NOT_FOUND", "not_found")
    status, body = sock_http(daemon, "POST", f"/sessions/none-{uid}/notes", {"content": "x"})
    assert status == 404 and body["code"] == "SESSION_NOT_FOUND"
    # a route 3.7 did not have keeps our word in `code` too
    status, body = sock_http(daemon, "POST", "/tuples", {"tuple": "not a list"})
    assert status == 400 and body["code"] == body["reason"] == "invalid_argument"
    # our SDK over HTTP reads our word
    with Client(daemon.config, transport="http") as sdk, pytest.raises(OpError) as err:
        sdk.call("session.get", id=f"none-{uid}")
    assert err.value.code == "not_found"


def test_a_9000_character_purpose_is_accepted_and_a_bound_remains(daemon, uid):
    purpose = "p" * 9000
    status, body = sock_http(daemon, "POST", "/sugar/begin", {"purpose": purpose, "agentId": f"long-{uid}"})
    assert status == 200 and body["purpose"] == purpose
    status, body = sock_http(daemon, "POST", "/sessions", {"purpose": "p" * 100_000})
    assert status in (400, 413) and body["field"] == "purpose"


def test_version_has_3_7_fields_and_no_pid(daemon):
    status, body = sock_http(daemon, "GET", "/version")
    assert status == 200
    assert body["service"] == "port-daddy" and body["api"] == "semantic"
    assert isinstance(body["startedAt"], int) and isinstance(body["uptime"], int) and body["codeHash"]
    assert "pid" not in body


def test_claim_has_status_and_begin_follows_3_7_phase_and_note_type(daemon, uid):
    status, body = sock_http(daemon, "POST", "/claim", {"id": f"app-{uid}:api"})
    assert status == 200 and body["status"] == "assigned" and body["existing"] is False
    status, body = sock_http(daemon, "POST", "/claim", {"id": f"app-{uid}:api"})
    assert body["status"] == "assigned" and body["existing"] is True
    status, began = sock_http(daemon, "POST", "/sugar/begin", {"purpose": "phase", "agentId": f"ph-{uid}"})
    session = sock_http(daemon, "GET", f"/sessions/{began['sessionId']}")[1]["session"]
    assert session["phase"] == "in_progress"
    status, note = sock_http(daemon, "POST", f"/sessions/{began['sessionId']}/notes", {"content": "hello"})
    assert status == 200 and note["type"] == "note"


def test_heartbeat_of_an_unknown_agent_answers_with_the_registration(daemon, uid):
    status, body = sock_http(daemon, "POST", f"/agents/hb-{uid}/heartbeat", {})
    assert status == 200 and body["success"] is True
    assert body["agentId"] == f"hb-{uid}" and body["registered"] is True
    assert isinstance(body["message"], str) and "salvageHint" in body and body["deadAgentsInProject"] == 0


def test_the_cli_renews_its_own_lock_and_reads_our_codes_over_http(daemon, uid):
    name = f"cli-{uid}"
    first = daemon.pd("lock", name, "--owner", "me", "-q")
    again = daemon.pd("lock", name, "--owner", "me", "-j")
    assert first.returncode == 0 and again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["renewed"] is True
    other = daemon.pd("lock", name, "--owner", "them")
    assert other.returncode == 1 and "held by me" in other.stderr
