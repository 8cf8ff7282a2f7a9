"""JSON encoders built once, for hot paths.

`json.JSONEncoder.encode` builds its C encoder anew on every call, about 1 µs of set-up that
dwarfs the work for the small objects of an activity record or an HTTP reply. `encoder()`
builds the C encoder once and returns a callable whose output equals
`json.JSONEncoder(...).encode` with the same options. Without the C accelerator (other
Python implementations) it returns that `encode` itself.

The one difference: no circular-reference check. Callers encode values decoded from JSON or
MessagePack and the daemon's own records, which cannot be circular, and whose nesting the
op schemas bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any


def encoder(default: Callable[[Any], Any] | None = None, ensure_ascii: bool = True,
            separators: tuple[str, str] = (", ", ": ")) -> Callable[[Any], str]:
    """A fast `encode(obj) -> str` equal to `json.JSONEncoder(...)`.encode with these options."""
    slow = json.JSONEncoder(default=default, ensure_ascii=ensure_ascii, separators=separators).encode
    if c_make_encoder is None:
        return slow
    item_sep, key_sep = separators
    make = c_make_encoder(None, default or _no_default, encode_basestring_ascii if ensure_ascii else encode_basestring,
                          None, key_sep, item_sep, False, False, True)
    join = "".join

    def encode(obj: Any) -> str:
        return join(make(obj, 0))

    return encode


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")
