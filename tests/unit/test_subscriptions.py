"""The subscription index (pdcore/subscriptions.py): the same answers as fnmatch, caps, no leaks."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdcore.errors import OpError
from pdcore.ops.schema import is_pattern
from pdcore.subscriptions import PatternIndex, Subscriptions, is_single_star, literal_prefix, literal_suffix

# A small alphabet so generated names and patterns collide often; it holds every character
# fnmatch treats specially (`*`, `?`, `[`, `]`, `!`, `-`) besides the `:` of channel names.
NAME_CHARS = "ab:-]"
PATTERN_CHARS = "ab:*?[]!-"
names = st.text(NAME_CHARS, min_size=1, max_size=8)
patterns = st.text(PATTERN_CHARS, min_size=1, max_size=8)


def brute_force(channel: str, subscribed: dict[str, set]) -> set:
    """What the core did before the index: exact names by equality, patterns by fnmatchcase."""
    found: set = set()
    for name, owners in subscribed.items():
        if (fnmatch.fnmatchcase(channel, name) if is_pattern(name) else name == channel):
            found |= owners
    return found


def roomy() -> Subscriptions:
    return Subscriptions(per_owner_max=10**6, total_max=10**6, scanned_per_owner_max=10**6, scanned_total_max=10**6)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), patterns | names), max_size=30), st.lists(names, min_size=1, max_size=10))
def test_index_finds_exactly_what_fnmatch_finds(subscriptions: list[tuple[int, str]], channels: list[str]) -> None:
    subs = roomy()
    expected: dict[str, set] = {}
    for owner, name in subscriptions:
        subs.subscribe(owner, [name])
        expected.setdefault(name, set()).add(owner)
    for channel in channels:
        assert subs.subscribers(channel) == brute_force(channel, expected), channel


@settings(max_examples=300, deadline=None)
@given(st.lists(patterns, max_size=20), st.lists(st.integers(0, 19), max_size=20), names)
def test_index_after_removals_matches_the_patterns_left(added: list[str], removed: list[int], channel: str) -> None:
    index = PatternIndex()
    for pattern in added:
        index.add(pattern, "c")
    left = set(added)
    for i in removed:
        if i < len(added):
            index.discard(added[i], "c")
            left.discard(added[i])
    assert set(index.matching_patterns(channel)) == {p for p in left if fnmatch.fnmatchcase(channel, p)}


@given(patterns, names)
def test_a_match_starts_with_the_literal_prefix_and_ends_with_the_literal_suffix(pattern: str, channel: str) -> None:
    if fnmatch.fnmatchcase(channel, pattern):
        assert channel.startswith(literal_prefix(pattern))
        assert channel.endswith(literal_suffix(pattern))
        assert len(channel) >= len(literal_prefix(pattern)) + len(literal_suffix(pattern))


def test_documented_patterns_keep_their_meaning() -> None:
    subs = roomy()
    subs.subscribe("app", ["myapp:*"])
    subs.subscribe("main", ["myapp:*:main"])
    subs.subscribe("q", ["build:?"])
    subs.subscribe("all", ["*"])
    subs.subscribe("exact", ["myapp:events"])
    assert subs.subscribers("myapp:events") == {"app", "all", "exact"}
    assert subs.subscribers("myapp:a:b") == {"app", "all"}
    assert subs.subscribers("myapp:a:b:main") == {"app", "main", "all"}  # `*` runs across `:`
    assert subs.subscribers("myapp") == {"all"}
    assert subs.subscribers("build:1") == {"q", "all"}
    assert subs.subscribers("build:12") == {"all"}


def test_shapes_are_classified() -> None:
    assert is_single_star("myapp:*") and is_single_star("*:events") and is_single_star("a**b")
    assert not is_single_star("a*b*c") and not is_single_star("a?*") and not is_single_star("[ab]*")
    assert literal_prefix("myapp:*:main") == "myapp:" and literal_suffix("myapp:*:main") == ":main"
    assert literal_suffix("a*]b") == "]b"  # without `[`, `]` is a plain character
    assert literal_suffix("*[ab]c") == "c"


def test_a_publish_visits_only_the_patterns_it_can_match() -> None:
    index = PatternIndex()
    for i in range(10_000):
        index.add(f"bench:{i}:*", i)
        index.add(f"*:tail{i}", -i - 1)
    visited = []
    real = index._anchors.get

    def counting_get(key: str):
        visited.append(key)
        return real(key)

    index._anchors = type("Spy", (dict,), {"get": staticmethod(counting_get)})(index._anchors)
    assert index.matching("perf:channel") == set()
    assert len(visited) <= 8  # one probe per distinct prefix length, not one per pattern
    assert index.matching("bench:42:x") == {42}
    assert index.matching("x:tail7") == {-8}


def test_unsubscribe_and_drop_leave_nothing_behind() -> None:
    subs = roomy()
    subs.subscribe("a", ["x:*", "*:y", "a*b*c", "exact", "[ab]*"])
    subs.subscribe("b", ["x:*", "exact"])
    subs.unsubscribe("a", ["x:*", "exact", "not-held"])
    assert subs.subscribers("x:1") == {"b"}
    subs.drop("a")
    subs.drop("b")
    assert subs.exact == {} and subs.by_owner == {} and subs._counts == {}
    assert subs.patterns.members == {} and subs.patterns._anchors == {}
    assert subs.patterns._prefix_lengths.sorted == [] and subs.pattern_count == 0 and subs.scanned_count == 0


def test_a_subscribe_past_the_connection_cap_is_refused_whole() -> None:
    subs = Subscriptions(per_owner_max=3, total_max=100, scanned_per_owner_max=1, scanned_total_max=100)
    subs.subscribe("c", ["a:*", "b:*", "plain"])
    with pytest.raises(OpError) as refused:
        subs.subscribe("c", ["c:*", "d:*", "other"])
    err = refused.value
    assert err.code == "too_many_patterns" and err.status == 429
    assert err.extra == {"setting": "subscribe_patterns_per_connection", "limit": 3}
    assert "subscribe_patterns_per_connection=3" in err.message
    assert subs.count("c") == 3 and subs.subscribers("other") == set()  # nothing of it applied
    subs.subscribe("c", ["c:*", "more", "exact-names-are-not-patterns"])  # the one that fits
    subs.subscribe("c", ["a:*"])  # held already: not counted twice


def test_scanned_patterns_have_their_own_caps() -> None:
    subs = Subscriptions(per_owner_max=100, total_max=100, scanned_per_owner_max=2, scanned_total_max=3)
    subs.subscribe("c", ["a*b*", "x?"])
    with pytest.raises(OpError) as refused:
        subs.subscribe("c", ["[ab]*"])
    assert refused.value.extra["setting"] == "subscribe_scanned_patterns_per_connection"
    subs.subscribe("c", ["single:*"])  # single-star patterns are not scanned
    subs.subscribe("d", ["*a*"])
    with pytest.raises(OpError) as refused:
        subs.subscribe("e", ["*b*"])
    assert refused.value.extra == {"setting": "subscribe_scanned_patterns_max", "limit": 3}
    subs.unsubscribe("c", ["x?"])
    subs.subscribe("e", ["*b*"])  # freed by the unsubscribe


def test_the_daemon_cap_counts_every_connection() -> None:
    subs = Subscriptions(per_owner_max=10, total_max=4, scanned_per_owner_max=10, scanned_total_max=10)
    subs.subscribe(1, ["a:*", "b:*"])
    subs.subscribe(2, ["a:*", "c:*"])
    with pytest.raises(OpError) as refused:
        subs.subscribe(3, ["d:*"])
    assert refused.value.extra == {"setting": "subscribe_patterns_max", "limit": 4}
    subs.drop(1)
    subs.subscribe(3, ["d:*", "e:*"])
