"""Do two file claims overlap? Paths and globs, compared both ways.

A claim is a path or a glob relative to the project (`src/auth/*.ts`, `src/**`, `docs`). A
claim whose last segment looks like a folder (no glob, no dot: `src`, `docs/api`) covers
everything inside it, so `src` overlaps `src/a.py`; write `name.d/**` for a folder with a
dot in its name. Segments are
compared one by one: `**` spans any number of segments; inside a segment `*` and `?` are
wildcards and a `[...]` class counts as one character (conservatively: any character).
Two globs overlap when some path matches both, which is decided exactly for `*` and `?`.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache

from pdcore.errors import OpError

_GLOB_CHARS = frozenset("*?[")


def is_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def normalize(path: str, field: str = "files") -> str:
    """A claim in canonical form: forward slashes, no `./`, no empty segments, no `..`."""
    if not isinstance(path, str):
        raise OpError("invalid_argument", f"{field} must be paths or globs (strings)", field)
    text = path.strip().replace("\\", "/")
    if not text:
        raise OpError("invalid_argument", f"{field} must not contain an empty path", field)
    if len(text) > 1024:
        raise OpError("invalid_argument", f"{field}: a path is longer than 1024 characters", field)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise OpError("invalid_argument", f"{field} must not contain NUL or control characters", field)
    absolute = text.startswith("/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OpError("invalid_argument", f"{field}: {path!r} leaves the project ('..'); use a path inside it", field)
    if not parts:
        raise OpError("invalid_argument", f"{field}: {path!r} names no file; use ** to claim the whole project", field)
    return ("/" if absolute else "") + "/".join(parts)


def overlaps(a: str, b: str) -> bool:
    """True when some file is covered by both claims (normalized paths or globs)."""
    if a == b:
        return True
    return _overlap(a, b) if a <= b else _overlap(b, a)


@lru_cache(maxsize=65536)
def _overlap(a: str, b: str) -> bool:
    return _segments_overlap(tuple(a.split("/")), tuple(b.split("/")))


def _segments_overlap(left: tuple[str, ...], right: tuple[str, ...]) -> bool:
    memo: dict[tuple[int, int], bool] = {}
    n, m = len(left), len(right)

    def go(i: int, j: int) -> bool:
        if i == n:
            return j == m or _covers_below(left, right[j:])
        if j == m:
            return _covers_below(right, left[i:])
        key = (i, j)
        hit = memo.get(key)
        if hit is not None:
            return hit
        a, b = left[i], right[j]
        if a == "**":
            result = go(i + 1, j) or go(i, j + 1)
        elif b == "**":
            result = go(i, j + 1) or go(i + 1, j)
        else:
            result = segment_overlaps(a, b) and go(i + 1, j + 1)
        memo[key] = result
        return result

    return go(0, 0)


def _covers_below(ended: tuple[str, ...], rest: tuple[str, ...]) -> bool:
    """One claim is used up while the other goes deeper: overlap if the rest can be empty
    (only `**` left) or the used-up claim names a folder, which covers everything inside."""
    if all(seg == "**" for seg in rest):
        return True
    last = ended[-1]
    return not is_glob(last) and "." not in last


def _tokens(seg: str) -> list[str]:
    """Split a segment into single-character tokens; `*` stays `*`, `?` and classes become `?`."""
    out: list[str] = []
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "[":
            end = seg.find("]", i + 2)
            if end != -1:
                out.append("?")
                i = end + 1
                continue
        if c == "*" and out and out[-1] == "*":
            i += 1
            continue
        out.append(c if c != "?" else "?")
        i += 1
    return out


def segment_overlaps(a: str, b: str) -> bool:
    """True when one path segment matches both segment patterns."""
    if a == b:
        return True
    ga, gb = is_glob(a), is_glob(b)
    if not ga and not gb:
        return False
    if not ga:
        return fnmatchcase(a, b)
    if not gb:
        return fnmatchcase(b, a)
    ta, tb = _tokens(a), _tokens(b)
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        if i == len(ta) and j == len(tb):
            return True
        key = (i, j)
        hit = memo.get(key)
        if hit is not None:
            return hit
        x = ta[i] if i < len(ta) else None
        y = tb[j] if j < len(tb) else None
        if x == "*":
            result = go(i + 1, j) or (y is not None and go(i, j + 1))
        elif y == "*":
            result = go(i, j + 1) or (x is not None and go(i + 1, j))
        elif x is None or y is None:
            result = False
        else:
            result = (x == "?" or y == "?" or x == y) and go(i + 1, j + 1)
        memo[key] = result
        return result

    return go(0, 0)
