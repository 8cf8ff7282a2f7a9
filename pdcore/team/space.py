"""What a team space holds on the NATS server: its KV buckets and streams, declared once.

The core's link and `pd team join` both create or open exactly these (the same call whether
they exist or not), with the space's replica count. A new shared primitive declares its bucket
or stream here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats.js.errors
from nats.js import api

from pdcore.config import Config

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
    settings: Callable[[Config], dict[str, Any]] | None = None  # more fields taken from the settings


def _channel_limits(config: Config) -> dict[str, Any]:
    """The channels stream is bounded like the local history rings (the same settings)."""
    return {"max_msgs_per_subject": config.channel_ring_size, "max_age": config.channel_ring_age_ms / 1000,
            "max_bytes": config.channel_ring_total_bytes, "discard": api.DiscardPolicy.OLD}


def _notes_limits(config: Config) -> dict[str, Any]:
    """The notes stream is the team's copy of hash chains whose authority is each owner's SQLite: a byte cap
    that refuses new notes when full (discard NEW), never one that drops old notes from under a chain.
    Notes of ended sessions leave when their session record expires (pdcore/team/members.py)."""
    return {"max_bytes": config.team_notes_max_bytes, "discard": api.DiscardPolicy.NEW}


def _inbox_limits(config: Config) -> dict[str, Any]:
    """The inbox stream holds messages until their host has stored them (then that host purges them):
    per agent at most `inbox_max_per_agent` (oldest first, as the local inbox keeps them), none older
    than `agent_dead_retention_ms` (a host away that long has its agents declared dead and forgotten),
    and `team_inbox_max_bytes` in all, refusing new sends when full (discard NEW)."""
    return {"max_msgs_per_subject": config.inbox_max_per_agent, "max_age": config.agent_dead_retention_ms / 1000,
            "max_bytes": config.team_inbox_max_bytes, "discard": api.DiscardPolicy.NEW}


HOSTS = BucketSpec("hosts", markers=False)  # host id -> its heartbeat; each key expires after the host timeout
LOCKS = BucketSpec("locks")  # lock key -> its holder; the revision is the fence (pdcore/team/locks.py)
# tuples: one subject per tuple, pd.<space>.tuples.<harbor>.<id>; a take replaces the tuple by its
# tombstone (compare-and-set on the subject's last sequence), so one message per subject (pdcore/team/tuples.py)
TUPLES = StreamSpec("tuples", config={"max_msgs_per_subject": 1})
# channels: pd.<space>.channels.<channel>; each message's stream sequence is its id (pdcore/team/channels.py)
CHANNELS = StreamSpec("channels", settings=_channel_limits)
# agents, sessions, notes, file claims, salvage, inbox, services (pdcore/team/members.py and neighbours)
AGENTS = BucketSpec("agents")  # agent id (base64url) -> its registration, heartbeat, host and death
SESSIONS = BucketSpec("sessions")  # session id -> the session, its file claims and the head of its shared notes
CLAIMS = BucketSpec("claims")  # project (base64url) -> every file claim of the project; compare-and-set judges
SALVAGE = BucketSpec("salvage")  # session id of a dead agent's session -> its salvage entry; CAS picks one claimer
SERVICES = BucketSpec("services", markers=False)  # host id -> the services (identity, port) it serves
NOTES = StreamSpec("notes", settings=_notes_limits)  # pd.<space>.notes.<session id>: sealed, hash-chained notes
# pd.<space>.inbox.<host id>.<agent id, base64url>: direct messages for the agents of that host
INBOX = StreamSpec("inbox", settings=_inbox_limits)

BUCKETS: tuple[BucketSpec, ...] = (HOSTS, LOCKS, AGENTS, SESSIONS, CLAIMS, SALVAGE, SERVICES)
STREAMS: tuple[StreamSpec, ...] = (TUPLES, CHANNELS, NOTES, INBOX)
_STREAM_IN_USE = 10058  # JetStream: "stream name already in use with a different configuration"


def bucket_name(space: str, short: str) -> str:
    return f"pd-{space}-{short}"


def stream_name(space: str, short: str) -> str:
    return f"pd-{space}-{short}"


async def open_space(js: Any, config: Config) -> dict[str, Any]:
    """Create or open every bucket and stream of the space; the buckets (nats KeyValue) by short name.

    A stream whose settings-made limits changed since it was created is updated to the new ones."""
    space, replicas = config.team_space, config.team_replicas
    buckets = {}
    for spec in BUCKETS:
        buckets[spec.short] = await js.create_key_value(
            bucket=bucket_name(space, spec.short), history=spec.history, replicas=replicas,
            limit_marker_ttl=MARKER_TTL_S if spec.markers else None)
    for sspec in STREAMS:
        more = sspec.settings(config) if sspec.settings is not None else {}
        stream_config = api.StreamConfig(
            name=stream_name(space, sspec.short), subjects=[f"pd.{space}.{sspec.short}.>"], num_replicas=replicas,
            allow_msg_ttl=True, **sspec.config, **more)
        try:
            await js.add_stream(stream_config)
        except nats.js.errors.BadRequestError as err:
            if err.err_code != _STREAM_IN_USE:
                raise
            await js.update_stream(stream_config)
    return buckets
