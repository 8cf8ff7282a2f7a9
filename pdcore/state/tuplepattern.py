"""The tuple and pattern grammar of the tuple space (SPEC.md §8), as pure functions.

A tuple is a non-empty JSON array. A pattern is a JSON array whose elements are:

- an exact value (deep equality; numbers compare by value, `true` is not `1`),
- `"*"` or `null`: anything,
- `">N"`, `"<N"`, `">=N"`, `"<=N"`: a number compared with N (a non-number never matches),
- a string holding `*`: a segment pattern over `:`-separated text, where a segment is literal or
  ends in one `*` (prefix of that segment); a trailing `*` segment also matches deeper text, so
  `"prefix:*"` is "starts with `prefix:`" and `"myapp:*:main"` needs the same segment count.

A pattern shorter than a tuple matches its leading fields; a longer one never matches.
`compile_pattern` validates once and returns a `Pattern` whose `match(fields)` is cheap; the
fleet and any subscriber can import it, so the grammar is decided in one place only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import msgpack

from pdcore.errors import OpError

MAX_FIELDS = 16
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_MAX_DEPTH = 32

ANY = object()  # the index key of a pattern whose first element is not a concrete value


def canon(value: Any) -> Any:
    """A hashable key equal for two values exactly when they are deep-equal by the grammar.

    Strings are their own key (the common case); other kinds are tagged so that `true`, `1`
    and `"1"` stay apart while `1` and `1.0` meet.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ("z",)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, list):
        return ("l", *(canon(v) for v in value))
    if isinstance(value, dict):
        return ("d", *sorted((k, canon(v)) for k, v in value.items()))
    return ("?", repr(value))


def deep_equal(a: Any, b: Any) -> bool:
    """JSON deep equality: numbers by value, booleans only equal booleans, order matters in arrays."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(deep_equal(v, b[k]) for k, v in a.items())
    return type(a) is type(b) and a == b


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(position: int, message: str) -> OpError:
    return OpError("invalid_pattern", f"{message} at position {position}", "pattern", position=position)


def _comparison(text: str, position: int) -> Callable[[Any], bool]:
    op = text[:2] if text[:2] in (">=", "<=") else text[:1]
    rest = text[len(op):].strip()
    if not _NUMBER_RE.match(rest):
        raise _bad(position, f"pattern element {text!r} compares with {rest!r}, which is not a number "
                             f"(write >N, <N, >=N or <=N with N a number, e.g. \">0.7\")")
    n = float(rest)
    if op == ">":
        return lambda v: _is_number(v) and v > n
    if op == "<":
        return lambda v: _is_number(v) and v < n
    if op == ">=":
        return lambda v: _is_number(v) and v >= n
    return lambda v: _is_number(v) and v <= n


def _segments(text: str, position: int) -> Callable[[Any], bool]:
    segs = text.split(":")
    for seg in segs:
        if "*" in seg[:-1]:
            raise _bad(position, f"pattern element {text!r} has a '*' inside a segment; '*' may only end a "
                                 f"segment (\"prefix:*\", \"myapp:*:main\", \"my*\")")
    starred = [i for i, s in enumerate(segs) if s.endswith("*")]
    if starred == [len(segs) - 1]:
        prefix = text[:-1]  # only the last segment is open: a plain prefix test
        return lambda v: isinstance(v, str) and v.startswith(prefix)
    last = len(segs) - 1

    def match(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        parts = v.split(":")
        for i, p in enumerate(segs):
            if i >= len(parts):
                return False
            if p.endswith("*"):
                if not parts[i].startswith(p[:-1]):
                    return False
                if i == last:
                    return True
            elif p != parts[i]:
                return False
        return len(parts) == len(segs)

    return match


def _element(value: Any, position: int) -> Callable[[Any], bool] | None:
    """The test for one pattern element, or None for a wildcard."""
    if value is None or value == "*":
        return None
    if isinstance(value, str):
        if value[:1] in (">", "<"):
            return _comparison(value, position)
        if "*" in value:
            return _segments(value, position)
        return lambda v, s=value: v == s  # only a str equals a str
    if isinstance(value, bool):
        return lambda v, b=value: v is b
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(position, "pattern element must be a finite number")
        return lambda v, n=value: _is_number(v) and v == n
    if isinstance(value, (list, dict)):
        _check_json(value, "pattern", 0)
        return lambda v, x=value: deep_equal(x, v)
    raise _bad(position, f"pattern element of type {type(value).__name__} is not a JSON value")


class Pattern:
    """A validated pattern: `match(fields)`, its arity, its index key (first element or ANY), and
    its exact-valued elements as (position, canon(value)), by which waiters are found."""

    __slots__ = ("source", "arity", "head", "tests", "exact")

    def __init__(self, source: list, tests: list[tuple[int, Callable[[Any], bool]]], head: Any,
                 exact: tuple[tuple[int, Any], ...] = ()) -> None:
        self.source = source
        self.arity = len(source)
        self.head = head
        self.tests = tests
        self.exact = exact

    def match(self, fields: list) -> bool:
        if len(fields) < self.arity:
            return False
        for i, test in self.tests:
            if not test(fields[i]):
                return False
        return True

    def __repr__(self) -> str:
        return f"Pattern({self.source!r})"


def parse_pattern_text(text: str) -> Any:
    """Decode a pattern given as JSON text; a decode error names its character position."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise OpError("invalid_pattern", f"pattern is not valid JSON ({exc.msg}) at position {exc.pos}",
                      "pattern", position=exc.pos) from None


def compile_pattern(raw: Any) -> Pattern:
    """Validate a pattern (a list, or JSON text of one) and compile it; refuse with the position."""
    if raw is None:
        raw = []
    if isinstance(raw, str):
        raw = parse_pattern_text(raw)
    if not isinstance(raw, list):
        raise OpError("invalid_pattern", "pattern must be a JSON array such as [\"task\", \"*\", \">0.7\"] at position 0",
                      "pattern", position=0)
    if len(raw) > MAX_FIELDS:
        raise _bad(MAX_FIELDS, f"pattern has {len(raw)} elements but a tuple has at most {MAX_FIELDS}")
    tests = []
    exact = []
    for i, value in enumerate(raw):
        test = _element(value, i)
        if test is not None:
            tests.append((i, test))
            if not (isinstance(value, str) and (value[:1] in (">", "<") or "*" in value)):
                exact.append((i, canon(value)))
    head = exact[0][1] if exact and exact[0][0] == 0 else ANY
    return Pattern(raw, tests, head, tuple(exact))


def _check_json(value: Any, field: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise OpError("invalid_argument", f"{field} is nested more than {_MAX_DEPTH} levels deep", field)
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OpError("invalid_argument", f"{field} holds {value}, which JSON cannot carry; use finite numbers", field)
        return
    if isinstance(value, list):
        for v in value:
            _check_json(v, field, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise OpError("invalid_argument", f"{field} has an object key that is not a string", field)
            _check_json(v, field, depth + 1)
        return
    raise OpError("invalid_argument", f"{field} holds a {type(value).__name__}, which is not a JSON value", field)


def check_fields(fields: Any, max_bytes: int, field: str = "fields") -> list:
    """Validate a tuple: a non-empty array of at most 16 JSON values, at most `max_bytes` packed."""
    if not isinstance(fields, list) or not fields:
        raise OpError("invalid_argument", f"{field} must be a non-empty JSON array such as [\"task\", \"build\", 1]", field)
    if len(fields) > MAX_FIELDS:
        raise OpError("invalid_argument", f"{field} has {len(fields)} values; a tuple holds at most {MAX_FIELDS}", field)
    _check_json(fields, field, 0)
    size = len(msgpack.packb(fields, use_bin_type=True))
    if size > max_bytes:
        raise OpError("too_large", f"{field} packs to {size} bytes; a tuple is at most {max_bytes} bytes", field)
    return fields
