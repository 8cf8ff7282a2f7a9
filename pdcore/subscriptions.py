"""Who hears a published channel: exact names in a dict, patterns in an index, both capped.

A pattern is shell-style (`fnmatch.fnmatchcase`; `*` runs across `:`). Matching a publish
against every pattern one by one made each publish cost as much as the number of patterns, so
patterns are indexed by their *literal prefix* (the text before the first `*`, `?` or `[`)
and, under it, by their *literal suffix* (the text after the last `*`, `?` or character class).
A channel can only match a pattern whose prefix it starts with and whose suffix it ends with,
so a publish looks up its own prefixes and suffixes of the lengths in use (at most one probe
per distinct length) instead of visiting each pattern.

A pattern with a single run of `*` and nothing else special (`myapp:*`, `*:events`,
`myapp:*:main`) is decided by those two lookups alone: its (prefix, suffix) pair identifies it.
Any other pattern (two runs of `*`, `?`, `[...]`) is *scanned*: found the same way, then checked
with its compiled regular expression. Scanned patterns with an empty prefix and suffix are
candidates for every publish, so they have their own, smaller caps.

Caps (all settings): patterns per connection, pattern subscriptions across the daemon, and
the same two for scanned patterns. A SUBSCRIBE past any of them is refused whole.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from pdcore.errors import OpError
from pdcore.ops.schema import is_pattern

_META = "*?["
Matcher = Callable[[str], Any]


def literal_prefix(pattern: str) -> str:
    """The text every match starts with: `pattern` up to its first `*`, `?` or `[`."""
    cut = len(pattern)
    for char in _META:
        at = pattern.find(char)
        if at != -1 and at < cut:
            cut = at
    return pattern[:cut]


def literal_suffix(pattern: str) -> str:
    """The text every match ends with: `pattern` after its last `*`, `?` or `[` (or `]`, if a `[` may open a class).

    Without `[` a `]` is a plain character; with one, past the last `]` no class can be open.
    """
    specials = "*?[]" if "[" in pattern else "*?"
    last = max(pattern.rfind(char) for char in specials)
    return pattern[last + 1:] if last != -1 else ""  # no wildcard: the prefix is the whole of it


def is_single_star(pattern: str) -> bool:
    """True for `prefix*suffix` (one run of `*`, no `?` or `[`): decided by prefix and suffix alone."""
    if "?" in pattern or "[" in pattern:
        return False
    first, last = pattern.find("*"), pattern.rfind("*")
    return first != -1 and pattern[first:last + 1].strip("*") == ""


class _Lengths:
    """The distinct lengths of a set of keys, sorted, with how many keys have each."""

    __slots__ = ("sorted", "counts")

    def __init__(self) -> None:
        self.sorted: list[int] = []
        self.counts: dict[int, int] = {}

    def add(self, length: int) -> None:
        count = self.counts.get(length, 0)
        if not count:
            bisect.insort(self.sorted, length)
        self.counts[length] = count + 1

    def remove(self, length: int) -> None:
        count = self.counts[length] - 1
        if count:
            self.counts[length] = count
        else:
            del self.counts[length]
            del self.sorted[bisect.bisect_left(self.sorted, length)]


class _Anchor:
    """The patterns sharing one literal prefix, by literal suffix: suffix -> {pattern: matcher}."""

    __slots__ = ("by_suffix", "suffix_lengths")

    def __init__(self) -> None:
        self.by_suffix: dict[str, dict[str, Matcher | None]] = {}
        self.suffix_lengths = _Lengths()


class PatternIndex:
    """Patterns -> subscribers; `matching(channel)` visits only patterns the channel can match."""

    def __init__(self) -> None:
        self.members: dict[str, set[Hashable]] = {}
        self._anchors: dict[str, _Anchor] = {}
        self._prefix_lengths = _Lengths()

    def __len__(self) -> int:
        return len(self.members)

    def add(self, pattern: str, subscriber: Hashable) -> None:
        members = self.members.get(pattern)
        if members is None:
            members = self.members[pattern] = set()
            self._place(pattern)
        members.add(subscriber)

    def discard(self, pattern: str, subscriber: Hashable) -> None:
        members = self.members.get(pattern)
        if members is None:
            return
        members.discard(subscriber)
        if not members:
            del self.members[pattern]
            self._unplace(pattern)

    def _place(self, pattern: str) -> None:
        prefix, suffix = literal_prefix(pattern), literal_suffix(pattern)
        anchor = self._anchors.get(prefix)
        if anchor is None:
            anchor = self._anchors[prefix] = _Anchor()
            self._prefix_lengths.add(len(prefix))
        bucket = anchor.by_suffix.get(suffix)
        if bucket is None:
            bucket = anchor.by_suffix[suffix] = {}
            anchor.suffix_lengths.add(len(suffix))
        bucket[pattern] = None if is_single_star(pattern) else re.compile(fnmatch.translate(pattern)).match

    def _unplace(self, pattern: str) -> None:
        prefix, suffix = literal_prefix(pattern), literal_suffix(pattern)
        anchor = self._anchors[prefix]
        bucket = anchor.by_suffix[suffix]
        del bucket[pattern]
        if not bucket:
            del anchor.by_suffix[suffix]
            anchor.suffix_lengths.remove(len(suffix))
            if not anchor.by_suffix:
                del self._anchors[prefix]
                self._prefix_lengths.remove(len(prefix))

    def matching_patterns(self, channel: str) -> Iterable[str]:
        """Every indexed pattern that `channel` matches (as `fnmatch.fnmatchcase` would say)."""
        size = len(channel)
        anchors = self._anchors
        for plen in self._prefix_lengths.sorted:
            if plen > size:
                break
            anchor = anchors.get(channel[:plen])
            if anchor is None:
                continue
            by_suffix = anchor.by_suffix
            for slen in anchor.suffix_lengths.sorted:
                if plen + slen > size:
                    break
                bucket = by_suffix.get(channel[size - slen:] if slen else "")
                if bucket is None:
                    continue
                for pattern, match in bucket.items():
                    if match is None or match(channel) is not None:
                        yield pattern

    def matching(self, channel: str) -> set[Hashable]:
        """The subscribers of every pattern `channel` matches."""
        found: set[Hashable] = set()
        members = self.members
        for pattern in self.matching_patterns(channel):
            found |= members[pattern]
        return found


class Subscriptions:
    """Every subscriber's channels and patterns, with the caps that keep publishing cheap."""

    def __init__(self, per_owner_max: int, total_max: int, scanned_per_owner_max: int, scanned_total_max: int) -> None:
        self.per_owner_max = per_owner_max
        self.total_max = total_max
        self.scanned_per_owner_max = scanned_per_owner_max
        self.scanned_total_max = scanned_total_max
        self.exact: dict[str, set[Hashable]] = {}
        self.patterns = PatternIndex()
        self.by_owner: dict[Hashable, set[str]] = {}
        self._counts: dict[Hashable, list[int]] = {}  # owner -> [patterns, scanned patterns]
        self.pattern_count = 0  # (owner, pattern) pairs across the daemon
        self.scanned_count = 0

    @classmethod
    def from_config(cls, config: Any) -> Subscriptions:
        return cls(config.subscribe_patterns_per_connection, config.subscribe_patterns_max,
                   config.subscribe_scanned_patterns_per_connection, config.subscribe_scanned_patterns_max)

    def count(self, owner: Hashable) -> int:
        """How many channels and patterns `owner` is subscribed to."""
        return len(self.by_owner.get(owner, ()))

    def subscribe(self, owner: Hashable, names: Iterable[str]) -> None:
        """Subscribe `owner` to every name, or (past a cap) to none of them: OpError `too_many_patterns`."""
        held = self.by_owner.get(owner, set())
        new = [name for name in dict.fromkeys(names) if name not in held]
        added = [name for name in new if is_pattern(name)]
        added_scanned = sum(1 for name in added if not is_single_star(name))
        counts = self._counts.get(owner, [0, 0])
        for have, total, adding, per_owner, overall, setting, total_setting, what in (
                (counts[0], self.pattern_count, len(added), self.per_owner_max, self.total_max,
                 "subscribe_patterns_per_connection", "subscribe_patterns_max", "patterns"),
                (counts[1], self.scanned_count, added_scanned, self.scanned_per_owner_max, self.scanned_total_max,
                 "subscribe_scanned_patterns_per_connection", "subscribe_scanned_patterns_max",
                 "scanned patterns (more than one run of *, or ? or [...])")):
            if adding and have + adding > per_owner:
                raise OpError("too_many_patterns",
                              f"a connection may hold at most {per_owner} {what} ({setting}={per_owner}); it holds "
                              f"{have} and asked for {adding} more; nothing was subscribed",
                              "channels", setting=setting, limit=per_owner)
            if adding and total + adding > overall:
                raise OpError("too_many_patterns",
                              f"the daemon holds at most {overall} {what} across all connections "
                              f"({total_setting}={overall}); {total} are held; nothing was subscribed",
                              "channels", setting=total_setting, limit=overall)
        if not new:
            return
        self.by_owner.setdefault(owner, held)
        for name in new:
            held.add(name)
            if is_pattern(name):
                self.patterns.add(name, owner)
            else:
                self.exact.setdefault(name, set()).add(owner)
        if added:
            self._counts[owner] = [counts[0] + len(added), counts[1] + added_scanned]
            self.pattern_count += len(added)
            self.scanned_count += added_scanned

    def unsubscribe(self, owner: Hashable, names: Iterable[str]) -> None:
        held = self.by_owner.get(owner)
        if held is None:
            return
        for name in names:
            if name not in held:
                continue
            held.discard(name)
            if is_pattern(name):
                self.patterns.discard(name, owner)
                scanned = 0 if is_single_star(name) else 1
                counts = self._counts[owner]
                counts[0] -= 1
                counts[1] -= scanned
                self.pattern_count -= 1
                self.scanned_count -= scanned
            else:
                members = self.exact[name]
                members.discard(owner)
                if not members:
                    del self.exact[name]
        if not held:
            del self.by_owner[owner]
            self._counts.pop(owner, None)

    def drop(self, owner: Hashable) -> None:
        """Forget everything `owner` subscribed to (its connection closed)."""
        held = self.by_owner.get(owner)
        if held is not None:
            self.unsubscribe(owner, list(held))

    def subscribers(self, channel: str) -> set[Hashable]:
        """Everyone to deliver a message published on `channel` to."""
        found = self.patterns.matching(channel) if self.patterns.members else set()
        exact = self.exact.get(channel)
        if exact:
            found |= exact
        return found
