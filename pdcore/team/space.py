"""What a team space holds on the NATS server: its KV buckets and streams, declared once.

The core's link and `pd team join` both create or open exactly these (the same call whether
they exist or not), with the space's replica count. A new shared primitive declares its bucket
or stream here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nats.js import api

MARKER_TTL_S = 60  # how long the server keeps the marker it writes when a key's TTL runs out


@dataclass(frozen=True)
class BucketSpec:
    """KV bucket `pd-<space>-<short>` (stream KV_pd-<space>-<short>)."""

    short: str
    history: int = 1
    markers: bool = True  # the server writes a marker when a key's TTL runs out, so watches see expiry


@dataclass(frozen=True)
class StreamSpec:
    """Stream `pd-<space>-<short>` over subjects `pd.<space>.<short>.>` (for tuples, channels)."""

    short: str
    config: dict[str, Any] = field(default_factory=dict)  # more api.StreamConfig fields


HOSTS = BucketSpec("hosts", markers=False)  # host id -> its heartbeat; each key expires after the host timeout
LOCKS = BucketSpec("locks")  # lock key -> its holder; the revision is the fence (pdcore/team/locks.py)
BUCKETS: tuple[BucketSpec, ...] = (HOSTS, LOCKS)
STREAMS: tuple[StreamSpec, ...] = ()


def bucket_name(space: str, short: str) -> str:
    return f"pd-{space}-{short}"


def stream_name(space: str, short: str) -> str:
    return f"pd-{space}-{short}"


async def open_space(js: Any, space: str, replicas: int) -> dict[str, Any]:
    """Create or open every bucket and stream of the space; the buckets (nats KeyValue) by short name."""
    buckets = {}
    for spec in BUCKETS:
        buckets[spec.short] = await js.create_key_value(
            bucket=bucket_name(space, spec.short), history=spec.history, replicas=replicas,
            limit_marker_ttl=MARKER_TTL_S if spec.markers else None)
    for sspec in STREAMS:
        await js.add_stream(api.StreamConfig(
            name=stream_name(space, sspec.short), subjects=[f"pd.{space}.{sspec.short}.>"], num_replicas=replicas,
            allow_msg_ttl=True, **sspec.config))
    return buckets
