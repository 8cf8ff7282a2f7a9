import pytest

from pdcore.errors import OpError
from pdcore.state import Park
from pdcore.state.waits import service_key


def test_a_claimed_identity_answers_at_once(harness):
    port = harness.state.ports.claim(harness.ctx(), id="wapp:api:main")["port"]
    out = harness.state.waits.wait(harness.ctx(), id="wapp:api:main", timeout=1000)
    assert (out["id"], out["port"], out["ready"]) == ("wapp:api:main", port, True)
    assert out["service"]["port"] == port


def test_an_unclaimed_identity_parks_on_its_service_key_until_the_timeout(harness):
    parked = harness.state.waits.wait(harness.ctx(), id="wapp:web", timeout=2500)
    assert isinstance(parked, Park)
    assert parked.keys == (service_key("wapp:web"),)
    assert parked.deadline == harness.clock.now + 2500
    assert isinstance(parked.on_timeout, OpError)
    assert (parked.on_timeout.code, parked.on_timeout.status, parked.on_timeout.field) == ("timeout", 408, "id")


def test_a_claim_wakes_the_wait_and_the_retry_answers(harness):
    ctx = harness.ctx()
    assert isinstance(harness.state.waits.wait(ctx, id="wapp:db"), Park)
    harness.state.pending_wakes.clear()
    port = harness.state.ports.claim(harness.ctx(), id="wapp:db")["port"]
    assert service_key("wapp:db") in harness.state.pending_wakes
    ctx.retry = True
    out = harness.state.waits.wait(ctx, id="wapp:db")
    assert out["port"] == port and out["ready"] is True


def test_a_claim_of_another_identity_does_not_wake(harness):
    harness.state.pending_wakes.clear()
    harness.state.ports.claim(harness.ctx(), id="wapp:other")
    assert service_key("wapp:db") not in harness.state.pending_wakes


def test_timeout_zero_is_a_check_that_refuses_with_timeout(harness):
    with pytest.raises(OpError) as info:
        harness.state.waits.wait(harness.ctx(), id="wapp:none", timeout=0)
    assert info.value.code == "timeout" and "wapp:none" in info.value.message


def test_default_timeout_and_cap_come_from_config(make_harness):
    h = make_harness(wait_default_ms=1234, wait_max_ms=5000)
    assert h.state.waits.wait(h.ctx(), id="x:y").deadline == h.clock.now + 1234
    with pytest.raises(OpError) as info:
        h.state.waits.wait(h.ctx(), id="x:y", timeout=5001)
    assert (info.value.code, info.value.field) == ("invalid_argument", "timeout")


def test_wait_many_answers_when_every_identity_is_claimed(harness):
    a = harness.state.ports.claim(harness.ctx(), id="many:a")["port"]
    b = harness.state.ports.claim(harness.ctx(), id="many:b")["port"]
    out = harness.state.waits.wait_many(harness.ctx(), ids=["many:a", "many:b"])
    assert out["ports"] == {"many:a": a, "many:b": b} and out["count"] == 2 and out["ready"] is True
    assert [s["id"] for s in out["services"]] == ["many:a", "many:b"]


def test_wait_many_parks_until_the_last_one_is_claimed(harness):
    ctx = harness.ctx()
    parked = harness.state.waits.wait_many(ctx, ids=["m2:a", "m2:b"], timeout=5000)
    assert isinstance(parked, Park) and set(parked.keys) == {service_key("m2:a"), service_key("m2:b")}
    harness.state.ports.claim(harness.ctx(), id="m2:a")
    ctx.retry = True
    assert isinstance(harness.state.waits.wait_many(ctx, ids=["m2:a", "m2:b"], timeout=5000), Park)
    harness.state.ports.claim(harness.ctx(), id="m2:b")
    assert harness.state.waits.wait_many(ctx, ids=["m2:a", "m2:b"], timeout=5000)["count"] == 2


def test_wait_many_timeout_names_what_is_still_missing_when_it_is_sent(harness):
    parked = harness.state.waits.wait_many(harness.ctx(), ids=["m3:a", "m3:b"], timeout=1000)
    harness.state.ports.claim(harness.ctx(), id="m3:a")
    body = parked.on_timeout.to_dict()
    assert body["code"] == "timeout" and body["missing"] == ["m3:b"] and body["ready"] == ["m3:a"]
    assert "1 of 2" in body["error"] and "m3:b" in body["error"]


def test_wait_many_accepts_the_37_services_name_and_dedupes(harness):
    harness.state.ports.claim(harness.ctx(), id="m4:a")
    out = harness.state.waits.wait_many(harness.ctx(), services=["m4:a", "m4:a"])
    assert out["ids"] == ["m4:a"]


@pytest.mark.parametrize("ids,code", [
    (None, "missing_field"),
    ([], "invalid_argument"),
    (["ok:id", "bad id"], "invalid_identity"),
    ([5], "invalid_identity"),
])
def test_wait_many_refuses_bad_ids_naming_the_field(harness, ids, code):
    with pytest.raises(OpError) as info:
        harness.state.waits.wait_many(harness.ctx(), ids=ids)
    assert info.value.code == code and info.value.field == "ids"


def test_wait_many_caps_the_number_of_ids(make_harness):
    h = make_harness(wait_max_ids=2)
    with pytest.raises(OpError) as info:
        h.state.waits.wait_many(h.ctx(), ids=["a:a", "a:b", "a:c"])
    assert info.value.code == "invalid_argument" and "wait_max_ids" in info.value.message
