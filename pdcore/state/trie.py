"""The identity trie: services indexed by `project:stack:context` segments.

Exact lookups walk at most three nodes; a wildcard `find` visits only the subtrees its
pattern can match, never the whole table. A segment `*` matches one segment; a segment ending
in `*` matches segments with that prefix; a trailing `*` segment also matches deeper
identities (`myapp:*` finds `myapp:api` and `myapp:api:main`), as `LIKE 'myapp:%'` did.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class _Node:
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.value: Any = None


class IdentityTrie:
    def __init__(self) -> None:
        self._root = _Node()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def get(self, identity: str) -> Any:
        node = self._root
        for seg in identity.split(":"):
            node = node.children.get(seg)
            if node is None:
                return None
        return node.value

    def set(self, identity: str, value: Any) -> None:
        node = self._root
        for seg in identity.split(":"):
            nxt = node.children.get(seg)
            if nxt is None:
                nxt = node.children[seg] = _Node()
            node = nxt
        if node.value is None:
            self._size += 1
        node.value = value

    def delete(self, identity: str) -> Any:
        path = [self._root]
        segs = identity.split(":")
        for seg in segs:
            node = path[-1].children.get(seg)
            if node is None:
                return None
            path.append(node)
        value = path[-1].value
        if value is None:
            return None
        path[-1].value = None
        self._size -= 1
        for i in range(len(segs), 0, -1):  # prune empty branches
            node = path[i]
            if node.value is None and not node.children:
                del path[i - 1].children[segs[i - 1]]
            else:
                break
        return value

    def find(self, pattern: str) -> Iterator[Any]:
        """Yield values whose identity matches `pattern` (see module doc)."""
        if "*" not in pattern:
            value = self.get(pattern)
            if value is not None:
                yield value
            return
        yield from self._walk(self._root, pattern.split(":"), 0)

    def _walk(self, node: _Node, segs: list[str], i: int) -> Iterator[Any]:
        if i == len(segs):
            if node.value is not None:
                yield node.value
            return
        seg = segs[i]
        last = i == len(segs) - 1
        if seg.endswith("*"):
            prefix = seg[:-1]
            for key, child in node.children.items():
                if key.startswith(prefix):
                    if last:
                        yield from self._all(child)
                    else:
                        yield from self._walk(child, segs, i + 1)
        else:
            child = node.children.get(seg)
            if child is not None:
                yield from self._walk(child, segs, i + 1)

    def _all(self, node: _Node) -> Iterator[Any]:
        if node.value is not None:
            yield node.value
        for child in node.children.values():
            yield from self._all(child)

    def values(self) -> Iterator[Any]:
        yield from self._all(self._root)


def matches(pattern: str, identity: str) -> bool:
    """Does `identity` match `pattern` by the same rules as `IdentityTrie.find`?"""
    if "*" not in pattern:
        return pattern == identity
    psegs, isegs = pattern.split(":"), identity.split(":")
    for i, p in enumerate(psegs):
        if i >= len(isegs):
            return False
        last = i == len(psegs) - 1
        if p.endswith("*"):
            if not isegs[i].startswith(p[:-1]):
                return False
            if last:
                return True
        elif p != isegs[i]:
            return False
    return len(psegs) == len(isegs)
