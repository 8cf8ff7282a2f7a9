import pytest

from pdcore.errors import OpError
from pdcore.state import Park
from pdcore.state.locks import lock_key


class Conn:
    def __init__(self, id: int) -> None:
        self.id = id


def acquire(h, name="res", owner="a", **kw):
    return h.state.locks.acquire(h.ctx(conn=kw.pop("conn", None)), name=name, owner=owner, **kw)


def test_acquire_returns_owner_expiry_and_fence(harness):
    out = acquire(harness, ttl=1000)
    assert out["owner"] == "a"
    assert out["expiresAt"] == harness.clock.now + 1000
    assert out["fence"] >= 1 and out["connectionBound"] is False


def test_held_lock_is_refused_with_holder_and_expiry(harness):
    acquire(harness, owner="a", ttl=5000)
    with pytest.raises(OpError) as err:
        acquire(harness, owner="b")
    assert err.value.code == "lock_held" and err.value.status == 409
    assert err.value.extra["holder"] == "a"
    assert err.value.extra["expiresAt"] == harness.clock.now + 5000


def test_fence_strictly_increases_each_time_the_lock_changes_hands(harness):
    fences = []
    for i in range(5):
        fences.append(acquire(harness, owner=f"o{i}")["fence"])
        harness.state.locks.release(harness.ctx(), name="res", owner=f"o{i}")
    assert fences == sorted(set(fences))


def test_the_holder_asking_again_is_refused_unless_it_renews(harness):
    first = acquire(harness, owner="a", ttl=1000)
    with pytest.raises(OpError) as err:
        acquire(harness, owner="a", ttl=1000)  # not re-entrant (3.7)
    assert err.value.code == "lock_held" and err.value.extra["holder"] == "a"
    assert err.value.extra["fence"] == first["fence"]


def test_same_owner_renews_without_a_new_fence(harness):
    first = acquire(harness, owner="a", ttl=1000)
    harness.advance(500)
    again = acquire(harness, owner="a", ttl=1000, renew=True)
    assert again["fence"] == first["fence"] and again["renewed"] is True
    assert again["expiresAt"] == harness.clock.now + 1000


def test_fence_never_goes_backwards_across_restart(harness):
    top = 0
    for i in range(3):
        top = acquire(harness, name=f"n{i}", owner="a")["fence"]
    harness.state.locks.release(harness.ctx(), name="n2", owner="a")
    harness.reopen()
    assert acquire(harness, name="n2", owner="b")["fence"] > top


def test_fence_increases_even_for_ephemeral_locks_across_restart(harness):
    top = acquire(harness, owner="a", conn=Conn(1))["fence"]
    harness.reopen()
    assert acquire(harness, owner="b")["fence"] > top


def test_zero_or_negative_ttl_means_default_and_large_ttl_is_capped(make_harness):
    h = make_harness(lock_ttl_default_ms=1000, lock_ttl_max_ms=5000)
    for ttl in (0, -5):
        out = acquire(h, name=f"t{ttl}", ttl=ttl)
        assert out["expiresAt"] == h.clock.now + 1000
    assert acquire(h, name="big", ttl=10**9)["expiresAt"] == h.clock.now + 5000


def test_lock_expires_on_the_timer_and_wakes_waiters(harness):
    acquire(harness, ttl=1000)
    harness.state.pending_wakes.clear()
    harness.advance(1000)
    assert harness.state.locks.get(harness.ctx(), name="res")["held"] is False
    assert lock_key("res") in harness.state.pending_wakes


def test_expired_lock_is_free_even_before_its_timer_fires(harness):
    acquire(harness, ttl=1000)
    harness.clock.advance(1001)  # time moves, timers not run yet
    assert acquire(harness, owner="b")["owner"] == "b"


def test_only_owner_releases_unless_force(harness):
    acquire(harness, owner="a")
    with pytest.raises(OpError) as err:
        harness.state.locks.release(harness.ctx(), name="res", owner="b")
    assert err.value.code == "not_owner"
    out = harness.state.locks.release(harness.ctx(), name="res", owner="b", force=True)
    assert out["released"] is True


def test_release_without_owner_is_refused_unless_force(harness):
    acquire(harness, owner="a")
    with pytest.raises(OpError) as err:
        harness.state.locks.release(harness.ctx(), name="res")  # the default owner is not the holder
    assert err.value.code == "not_owner"


def test_without_owner_or_agent_the_default_owner_takes_and_releases(harness):
    taken = harness.state.locks.acquire(harness.ctx(), name="anon")
    assert taken["owner"] == "anonymous"
    assert harness.state.locks.release(harness.ctx(), name="anon")["released"] is True


def test_release_of_free_lock_says_not_released(harness):
    assert harness.state.locks.release(harness.ctx(), name="nothing", owner="a")["released"] is False


def test_release_with_stale_fence_is_refused(harness):
    fence = acquire(harness, owner="a")["fence"]
    with pytest.raises(OpError):
        harness.state.locks.release(harness.ctx(), name="res", owner="a", fence=fence - 1)
    assert harness.state.locks.release(harness.ctx(), name="res", owner="a", fence=fence)["released"]


def test_owner_defaults_to_agent_id(harness):
    out = harness.state.locks.acquire(harness.ctx(agent_id="agent-7"), name="res")
    assert out["owner"] == "agent-7"


def test_extend_pushes_expiry_and_fails_once_expired(harness):
    acquire(harness, ttl=1000)
    harness.advance(800)
    out = harness.state.locks.extend(harness.ctx(), name="res", owner="a", ttl=1000)
    assert out["expiresAt"] == harness.clock.now + 1000
    harness.advance(900)
    assert harness.state.locks.get(harness.ctx(), name="res")["held"] is True
    harness.advance(200)
    with pytest.raises(OpError) as err:
        harness.state.locks.extend(harness.ctx(), name="res", owner="a", ttl=1000)
    assert err.value.code == "expired"


def test_extend_by_someone_else_is_refused(harness):
    acquire(harness, owner="a")
    with pytest.raises(OpError) as err:
        harness.state.locks.extend(harness.ctx(), name="res", owner="b", ttl=1000)
    assert err.value.code == "not_owner"


def test_extend_of_unknown_lock_is_not_found(harness):
    with pytest.raises(OpError) as err:
        harness.state.locks.extend(harness.ctx(), name="nope", owner="a")
    assert err.value.code == "not_found"


def test_wait_parks_on_the_lock_key_until_released(harness):
    acquire(harness, owner="a")
    parked = acquire(harness, owner="b", wait=2000)
    assert isinstance(parked, Park)
    assert parked.keys == (lock_key("res"),)
    assert parked.deadline == harness.clock.now + 2000
    assert isinstance(parked.on_timeout, OpError) and parked.on_timeout.code == "lock_held"
    harness.state.locks.release(harness.ctx(), name="res", owner="a")
    assert lock_key("res") in harness.state.pending_wakes
    ctx = harness.ctx()
    ctx.retry = True
    out = harness.state.locks.acquire(ctx, name="res", owner="b", wait=2000)
    assert out["owner"] == "b"


def test_retry_while_still_held_parks_again(harness):
    acquire(harness, owner="a")
    ctx = harness.ctx()
    ctx.retry = True
    assert isinstance(harness.state.locks.acquire(ctx, name="res", owner="b", wait=1000), Park)


def test_ipc_lock_without_ttl_is_connection_bound_and_freed_on_close(harness):
    out = acquire(harness, owner="a", conn=Conn(7))
    assert out["connectionBound"] is True and out["expiresAt"] is None
    acquire(harness, name="other", owner="a", conn=Conn(8))
    harness.state.pending_wakes.clear()
    harness.state.connection_closed(7)
    assert harness.state.locks.get(harness.ctx(), name="res")["held"] is False
    assert harness.state.locks.get(harness.ctx(), name="other")["held"] is True
    assert lock_key("res") in harness.state.pending_wakes


def test_ipc_lock_with_ttl_is_durable_and_not_connection_bound(harness):
    out = acquire(harness, owner="a", conn=Conn(7), ttl=10_000)
    assert out["connectionBound"] is False
    harness.state.connection_closed(7)
    assert harness.state.locks.get(harness.ctx(), name="res")["held"] is True


def test_durable_locks_survive_restart_and_connection_bound_ones_do_not(harness):
    acquire(harness, name="durable", owner="a", ttl=60_000)
    acquire(harness, name="ephemeral", owner="a", conn=Conn(3))
    harness.reopen()
    assert harness.state.locks.get(harness.ctx(), name="durable")["held"] is True
    assert harness.state.locks.get(harness.ctx(), name="ephemeral")["held"] is False
    harness.advance(60_000)
    assert harness.state.locks.get(harness.ctx(), name="durable")["held"] is False


def test_lock_expired_while_down_is_free_after_restart(harness):
    acquire(harness, owner="a", ttl=1000)
    harness.store.commit()
    harness.clock.advance(5000)
    harness.reopen()
    assert harness.state.locks.list(harness.ctx())["count"] == 0


def test_dead_agent_locks_are_released(harness):
    harness.state.locks.acquire(harness.ctx(agent_id="dead-1"), name="x")
    harness.state.locks.acquire(harness.ctx(agent_id="alive"), name="y", owner="someone")
    harness.state.notify("on_agent_dead", harness.ctx(), "dead-1", None)
    assert harness.state.locks.get(harness.ctx(), name="x")["held"] is False
    assert harness.state.locks.get(harness.ctx(), name="y")["held"] is True


def test_list_filters_by_owner_newest_first(harness):
    acquire(harness, name="one", owner="a")
    harness.advance(10)
    acquire(harness, name="two", owner="a")
    acquire(harness, name="three", owner="b")
    names = [lk["name"] for lk in harness.state.locks.list(harness.ctx(), owner="a")["locks"]]
    assert names == ["two", "one"]


def test_acquire_and_release_are_recorded_in_activity(harness):
    acquire(harness, owner="a")
    harness.state.locks.release(harness.ctx(), name="res", owner="a")
    types = [a["type"] for a in harness.state.activity.list(harness.ctx())["activities"]]
    assert types[:2] == ["lock.release", "lock.acquire"]


def test_wait_beyond_the_cap_is_refused(make_harness):
    h = make_harness(lock_wait_max_ms=1000)
    with pytest.raises(OpError) as err:
        acquire(h, wait=5000)
    assert err.value.code == "invalid_argument" and err.value.field == "wait"


def test_agent_with_max_locks_cannot_hold_more(harness):
    harness.state.agents.register(harness.ctx(), id="greedy", maxLocks=2)
    ctx = harness.ctx(agent_id="greedy")
    harness.state.locks.acquire(ctx, name="l1")
    harness.state.locks.acquire(ctx, name="l2")
    assert harness.state.locks.acquire(ctx, name="l2", renew=True)["renewed"] is True  # renewing is not a new lock
    with pytest.raises(OpError) as err:
        harness.state.locks.acquire(ctx, name="l3")
    assert err.value.code == "lock_limit" and err.value.status == 429
    assert err.value.extra == {"current": 2, "max": 2}
    harness.state.locks.release(ctx, name="l1")
    assert harness.state.locks.acquire(ctx, name="l3")["owner"] == "greedy"
