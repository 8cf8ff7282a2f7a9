"""Configuration, built once from defaults, `<home>/config.yaml`, the environment and flags.

Every number in SPEC.md is a key here. Any key can be set in `config.yaml` or through the
environment as `PORT_DADDY_<KEY>` (upper case); the path variables of ARCHITECTURE.md
(`PORT_DADDY_HOME`, `_SOCK`, `_IPC`, `_PORT_FILE`, `_PORT`, `_NO_TCP`) are honoured too.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HOME = "~/.port-daddy"


@dataclass
class Config:
    home: Path = Path(DEFAULT_HOME).expanduser()
    sock: Path | None = None  # HTTP over a Unix socket
    ipc: Path | None = None  # public binary IPC
    core_sock: Path | None = None  # internal IPC for HTTP workers
    pid_file: Path | None = None
    port_file: Path | None = None
    db_path: Path | None = None
    key_path: Path | None = None
    token_path: Path | None = None  # auth.token, the secret TCP callers present (docs/security.md)
    log_path: Path | None = None
    shm_path: Path | None = None  # state.shm, the service table in shared memory
    tcp_port: int = 9876
    no_tcp: bool = False
    # ports
    port_range_start: int = 3100
    port_range_end: int = 9999
    reserved_ports: list[int] = field(default_factory=lambda: [8000, 8080, 9876, 9877])
    probe_bound_ports: bool = True  # skip ports some process outside Port Daddy has bound
    # shared memory (state.shm)
    shm_enabled: bool = True
    shm_slots: int = 131072  # hash slots of 256 bytes; a sparse file, only used pages cost memory
    # IPC
    ipc_max_connections: int = 256  # public IPC connections (daemon.ipc) in all
    ipc_max_connections_per_peer: int = 64  # public IPC connections one process (its pid) may hold
    ipc_reserved_connections: int = 16  # last slots of ipc_max_connections kept for processes holding none (at most half)
    ipc_rate_limit: int = 500  # frames/s per public connection; 0 disables
    ipc_max_message: int = 4 * 1024 * 1024  # reassembled message limit, bytes
    ipc_pending_bytes_max: int = 64 * 1024 * 1024  # bytes of unfinished multi-frame messages, all connections together
    ipc_max_elements: int = 100_000  # values in one decoded message (list entries; a map entry counts two)
    ipc_frames_per_turn: int = 64  # frames served from one connection before the others get their turn
    park_max_per_connection: int = 1000  # calls one IPC connection may have waiting (lock wait, tuple in, poll)
    park_max: int = 20_000  # calls waiting across the daemon (HTTP workers' included); beyond: too_many_parked
    ipc_strikes: int = 3
    ipc_write_high_water: int = 1024 * 1024
    # HTTP
    http_workers: int = 2  # gunicorn ASGI worker processes, one event loop and one core connection each
    http_max_body: int = 1024 * 1024
    http_drain_max: int = 8 * 1024 * 1024  # a 413'd body up to this size is read and dropped, so keep-alive survives
    http_timeout_s: int = 120  # a worker silent this long is restarted; also bounds each wait for a body chunk
    http_graceful_timeout_s: int = 10  # how long a stopping worker finishes in-flight requests
    http_keepalive_s: int = 5  # an idle keep-alive connection is closed after this long (and its next request's headers must come within it)
    http_header_timeout_s: float = 10.0  # a new connection's request headers must arrive within this long, else 408 and close
    http_body_timeout_s: float = 30.0  # a request's body must arrive within this long after its headers, else close
    http_max_connections: int = 4096  # open HTTP connections per worker; past it a new one gets 503 and is closed
    http_max_streams: int = 2000  # open event streams (SSE) per worker, each with a core connection; past it 429
    http_max_parked: int = 2000  # parked calls (lock waits, long-polls, blocking takes) per worker; past it 429
    http_access_log: bool = False  # access lines go to log_path when on
    http_core_connect_wait_ms: int = 2000  # a worker retries core.sock this long (core restarting) before 503
    sse_keepalive_s: int = 15  # comment line sent on an idle event stream
    dashboard_ticket_ttl_ms: int = 60_000  # a `pd dashboard` link works once, within this long
    dashboard_tickets_max: int = 64  # unused dashboard links kept; the oldest is dropped beyond this
    # durability
    db_synchronous: str = "NORMAL"  # NORMAL survives kill -9 in WAL mode; FULL also power loss
    db_start_check_max_ms: int = 10_000  # state.db's quick_check at start stops (as passed) after this long; 0 skips it
    log_max_bytes: int = 10 * 1024 * 1024  # daemon.log beyond this is renamed daemon.log.1 at start (one kept)
    # agents and reaper
    agent_stale_ms: int = 10 * 60 * 1000
    agent_dead_ms: int = 20 * 60 * 1000
    reaper_interval_ms: int = 5000
    heartbeat_flush_ms: int = 5000  # last heartbeats are written to the db in batches this often
    agent_restart_grace_ms: int = 60_000  # after a restart, heartbeat-late agents get this long to reconnect
    agent_dead_retention_ms: int = 24 * 3600 * 1000  # dead agents stay listed this long
    # sessions and notes
    note_max_bytes: int = 64 * 1024
    salvage_note_count: int = 10
    session_max_files: int = 1000  # file claims per session
    notes_list_max: int = 1000  # largest `limit` of a notes list; above it the call is refused (400)
    # locks
    lock_ttl_default_ms: int = 300_000
    lock_ttl_max_ms: int = 24 * 3600 * 1000
    # messaging
    channel_ring_size: int = 1000
    channel_ring_age_ms: int = 3600 * 1000
    subscriber_queue_max: int = 1024 * 1024  # bytes buffered for a slow subscriber before drops
    subscribe_patterns_per_connection: int = 10_000  # channel patterns one connection may subscribe to
    subscribe_patterns_max: int = 100_000  # pattern subscriptions across all connections
    subscribe_scanned_patterns_per_connection: int = 32  # of those, patterns the index cannot decide (two runs of *, ?, [..])
    subscribe_scanned_patterns_max: int = 256  # scanned patterns across all connections (each is checked on publish)
    # pheromones
    pheromone_half_life_ms: int = 10 * 60 * 1000
    # activity log
    activity_max: int = 10_000
    # webhooks
    webhook_allow_hosts: list[str] = field(default_factory=list)
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 4
    # -- locks, pub/sub, inbox, integration signals, webhooks (issue 4; docs/locks.md, docs/messaging.md)
    lock_wait_max_ms: int = 3600 * 1000  # longest `wait` a lock acquire may park for
    message_max_bytes: int = 256 * 1024  # one published message (its JSON size)
    channel_ring_total_bytes: int = 64 * 1024 * 1024  # all rings together; oldest messages go first
    channel_poll_max_ms: int = 60_000  # longest long-poll `timeout`
    inbox_max_per_agent: int = 1000  # oldest direct messages are dropped beyond this
    integration_max: int = 10_000  # integration signals kept
    webhook_max: int = 100  # registered webhooks
    webhook_retry_base_ms: int = 1000  # first retry delay; doubles per attempt
    webhook_retry_max_ms: int = 60_000
    webhook_delivery_log_max: int = 200  # deliveries kept per webhook
    webhook_pending_max: int = 10_000  # deliveries in flight or waiting to retry; beyond: dropped
    # arbiter
    arbiter_strict: bool = False
    # -- tuple space, pheromones, harbors, arbiter (issue 5; docs/tuples.md, pheromones.md, harbors.md,
    #    arbiter.md; pheromone_half_life_ms and arbiter_strict are above)
    tuple_max_bytes: int = 4096  # one tuple, MessagePack-packed
    tuple_read_limit_default: int = 100  # tuples returned by rd without `limit`
    tuple_scan_limit_default: int = 200  # tuples returned by scan without `limit`
    tuple_limit_max: int = 10_000  # largest `limit` of rd/in/scan/poll
    tuple_wait_max_ms: int = 600_000  # longest `wait` a rd/in/poll may park for
    take_record_ttl_ms: int = 3_600_000  # how long a take's result is kept under its requestId for a repeat
    take_records_max: int = 100_000  # take results kept under request ids; beyond: the oldest are dropped
    pheromone_half_life_overrides: dict[str, int] = field(default_factory=dict)  # "key" or "table.key" -> half-life ms
    pheromone_floor: float = 0.01  # values below read as 0 and are collected
    pheromone_gc_interval_ms: int = 60_000  # housekeeping pass dropping faded pheromones
    pheromone_max: int = 100_000  # live pheromones; beyond it the faintest are dropped
    pheromone_claim_heat: float = 0.3  # file heat one active session claim contributes
    harbor_max_members: int = 1000  # agents in one harbor
    arbiter_sweep_interval_ms: int = 30_000  # periodic check of heartbeats, locks of dead owners, notes
    arbiter_violations_max: int = 10_000  # oldest recorded violations are dropped beyond this
    # -- fleet and spawn (docs/fleet.md). The core keeps the records; the fleet runner (`python -m fleet`
    #    or a foreground `pd fleet up`) reads the rest of this block.
    spawn_history_max: int = 1000  # agent runs kept (GET /spawn); the oldest finished ones go first
    spawn_max_active: int = 64  # ad-hoc spawns waiting or running at once; beyond: spawn_limit (429)
    fleet_runner_stale_ms: int = 30_000  # a runner silent this long no longer holds its fleets
    fleet_report_interval_ms: int = 5000  # how often a runner reports its fleets' status to the core
    fleet_heartbeat_interval_ms: int = 30_000  # heartbeats the runner sends on each running agent's behalf
    fleet_run_timeout_ms: int = 30 * 60 * 1000  # an agent run's timeout when its `timeout` is not set
    fleet_respawn_backoff_ms: int = 1000  # first respawn delay after a crash; doubles per respawn
    fleet_respawn_backoff_max_ms: int = 60_000
    fleet_kill_grace_ms: int = 5000  # SIGTERM, then SIGKILL after this long (timeout, kill, fleet down)
    fleet_max_concurrent_default: int = 4  # a fleet's limits.max_concurrent_spawns when not set
    fleet_queue_max: int = 100  # triggered runs waiting for a free slot; beyond: skipped
    fleet_log_max_bytes: int = 10 * 1024 * 1024  # an agent's log file is rotated (one .1 kept) beyond this
    # -- projects: wait-for-service, briefing, changelog, pd up/down (docs/projects.md). The up_* keys are
    #    read by the `pd up` / `pd down` CLI, which runs the processes; the core never does.
    wait_default_ms: int = 30_000  # GET /wait/:id and POST /wait without `timeout`
    wait_max_ms: int = 300_000  # longest `timeout` a wait may park for (3.7: 5 minutes)
    note_verify_wait_ms: int = 25_000  # a note.verify call waits this long for its scan, then `timeout` (below clients' 30 s)
    wait_max_ids: int = 100  # identities one POST /wait may wait for
    changelog_max: int = 100_000  # changelog entries kept; the oldest go first
    briefing_limit_default: int = 20  # notes, activity and changelog entries in a briefing
    up_health_timeout_ms: int = 30_000  # a service's health wait when .portdaddyrc gives no healthTimeout
    up_stop_grace_ms: int = 5000  # pd down: SIGTERM, then SIGKILL after this long
    # supervisor
    restart_backoff_max_s: float = 10.0
    # -- team mode (docs/team.md): the `team:` section of config.yaml (`team.space` is `team_space` here)
    team_servers: list[str] = field(default_factory=list)  # NATS URLs (nats:// or tls://); empty: local mode
    team_space: str = ""  # the space's name: its streams and buckets are named after it
    team_creds: Path | None = None  # a NATS credentials file (JWT + seed); or team_user/team_password
    team_user: str = ""
    team_password: str = ""
    team_tls_ca: Path | None = None  # the CA that signed the servers' TLS certificates
    team_replicas: int = 1  # copies JetStream keeps of each stream/bucket: 1, or 3 on a 3-node cluster
    team_host_id: str = ""  # this host in the team; empty: made from the hostname once, kept in <home>/team.host
    team_key_file: Path | None = None  # the team key that seals shared notes (never sent through NATS)
    team_connect_timeout_ms: int = 2000  # one connection attempt to a NATS server
    team_op_timeout_ms: int = 5000  # a team op not acknowledged by JetStream in this long fails (team_unavailable)
    team_reconnect_wait_ms: int = 500  # pause between reconnection attempts (the link retries forever)
    team_heartbeat_ms: int = 2000  # how often this host writes its heartbeat into the hosts bucket
    team_host_timeout_ms: int = 15_000  # a host from which no new heartbeat arrived for this long (our clock) is gone
    team_bound_lock_ttl_ms: int = 30_000  # server TTL of a connection-bound team lock, refreshed while bound
    team_notes_max_bytes: int = 256 * 1024 * 1024  # the team's notes stream; when full new notes are refused (team_full), none is dropped
    team_inbox_max_bytes: int = 64 * 1024 * 1024  # direct messages to other hosts not yet delivered; when full a send is refused (team_full)

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()
        defaults = {
            "sock": "daemon.sock",
            "ipc": "daemon.ipc",
            "core_sock": "core.sock",
            "pid_file": "daemon.pid",
            "port_file": "daemon.port",
            "db_path": "state.db",
            "key_path": "master.key",
            "token_path": "auth.token",
            "log_path": "daemon.log",
            "shm_path": "state.shm",
        }
        for attr, name in defaults.items():
            value = getattr(self, attr)
            setattr(self, attr, Path(value).expanduser() if value else self.home / name)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.tcp_port}"

    def public(self) -> dict[str, Any]:
        """The configuration as JSON-safe values (for GET /config)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


_ENV_PATHS = {
    "PORT_DADDY_SOCK": "sock",
    "PORT_DADDY_IPC": "ipc",
    "PORT_DADDY_PORT_FILE": "port_file",
    "PORT_DADDY_PORT": "tcp_port",
    "PORT_DADDY_NO_TCP": "no_tcp",
}

EXIT_CONFIG = 78  # a process that exits so has a problem a restart cannot fix (bad setting, key, state)

# What a setting may hold, besides its type (from the Config annotations). A number is >= 0 unless
# listed here; for a list or a mapping the bound applies to each element.
_PORT = (1, 65535)
_RANGES: dict[str, tuple[int, int]] = {
    "tcp_port": _PORT, "port_range_start": _PORT, "port_range_end": _PORT, "reserved_ports": _PORT,
}
# Numbers where 0 makes no sense (a size, an interval, a divisor, a count of workers): > 0.
_POSITIVE = frozenset({
    "shm_slots", "ipc_max_connections", "ipc_max_message", "ipc_strikes", "ipc_write_high_water",
    "http_workers", "http_max_body", "http_header_timeout_s", "http_body_timeout_s",
    "http_max_connections", "http_max_streams", "http_max_parked", "sse_keepalive_s", "agent_stale_ms", "agent_dead_ms",
    "reaper_interval_ms", "heartbeat_flush_ms", "note_max_bytes", "notes_list_max", "lock_ttl_default_ms",
    "lock_ttl_max_ms", "channel_ring_age_ms", "subscriber_queue_max",
    "pheromone_half_life_ms", "webhook_timeout_s", "webhook_max_attempts", "message_max_bytes",
    "channel_poll_max_ms", "webhook_retry_base_ms", "webhook_retry_max_ms", "tuple_max_bytes",
    "tuple_read_limit_default", "tuple_scan_limit_default", "tuple_limit_max", "pheromone_half_life_overrides",
    "pheromone_floor", "pheromone_gc_interval_ms", "harbor_max_members", "arbiter_sweep_interval_ms",
    "fleet_runner_stale_ms", "fleet_report_interval_ms", "fleet_heartbeat_interval_ms", "fleet_run_timeout_ms",
    "fleet_respawn_backoff_ms", "fleet_respawn_backoff_max_ms", "fleet_max_concurrent_default",
    "wait_default_ms", "wait_max_ms", "note_verify_wait_ms", "wait_max_ids", "briefing_limit_default",
    "up_health_timeout_ms", "restart_backoff_max_s", "take_record_ttl_ms", "take_records_max",
    "park_max_per_connection", "park_max",
    "team_connect_timeout_ms", "team_op_timeout_ms", "team_reconnect_wait_ms", "team_heartbeat_ms",
    "team_host_timeout_ms", "team_bound_lock_ttl_ms", "team_notes_max_bytes", "team_inbox_max_bytes",
})
_CHOICES: dict[str, tuple[str, ...]] = {"db_synchronous": ("OFF", "NORMAL", "FULL", "EXTRA")}
# Pairs whose first value must stay below the second (`<`) or not above it (`<=`).
_ORDERED = (
    ("port_range_start", "<", "port_range_end"),
    ("lock_ttl_default_ms", "<=", "lock_ttl_max_ms"),
    ("webhook_retry_base_ms", "<=", "webhook_retry_max_ms"),
    ("fleet_respawn_backoff_ms", "<=", "fleet_respawn_backoff_max_ms"),
    ("wait_default_ms", "<=", "wait_max_ms"),
    ("team_heartbeat_ms", "<", "team_host_timeout_ms"),
)
TEAM_SECTION = "team"  # config.yaml's `team:` mapping; its keys are the team_* settings without the prefix
_TEAM_NAME_RE = r"[A-Za-z0-9_-]{1,64}"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A setting that cannot be used. The message is one line: where it was set (file or variable),
    the key, the bad value and what is allowed."""


@functools.cache
def _types() -> dict[str, Any]:
    """The type of each setting, from the Config annotations (the one source of the type checks)."""
    return typing.get_type_hints(Config)


def _number_rule(name: str, whole: bool) -> str:
    kind = "a whole number" if whole else "a number"
    if name in _RANGES:
        low, high = _RANGES[name]
        return f"{kind} from {low} to {high}"
    return f"{kind} above 0" if name in _POSITIVE else f"{kind}, 0 or more"


def _in_bounds(name: str, value: float) -> bool:
    if name in _RANGES:
        low, high = _RANGES[name]
        return low <= value <= high
    return value > 0 if name in _POSITIVE else value >= 0


def _scalar(name: str, kind: Any, raw: Any, from_text: bool) -> Any:
    """`raw` as a value of type `kind` for setting `name`; raises ValueError(what is allowed)."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if from_text and isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError("true or false" + (" (1/0, yes/no, on/off)" if from_text else ""))
    if kind is int or kind is float:
        whole = kind is int
        value: Any = None
        if from_text and isinstance(raw, str):
            try:
                value = int(raw.strip()) if whole else float(raw.strip())
            except ValueError:
                value = None
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = raw if whole else float(raw)
        elif isinstance(raw, float) and not whole:
            value = raw
        if value is None or value != value or value in (float("inf"), float("-inf")) or not _in_bounds(name, value):
            raise ValueError(_number_rule(name, whole))
        return value
    if kind is str:
        if not isinstance(raw, str):
            raise ValueError("text")
        if name in _CHOICES:
            if raw.strip().upper() not in _CHOICES[name]:
                raise ValueError("one of " + ", ".join(_CHOICES[name]))
            return raw.strip().upper()
        return raw
    if kind is Path:
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError("a file path")
        return Path(raw)
    return raw


def _convert(name: str, raw: Any, from_text: bool) -> Any:
    """A value of setting `name` from YAML (`from_text=False`) or the environment; ValueError says what is allowed."""
    kind = _types()[name]
    args = typing.get_args(kind)
    if type(None) in args:  # Optional: a path setting, None = its default file in the home
        if raw is None:
            return None
        kind = next(a for a in args if a is not type(None))
    origin = typing.get_origin(kind) or kind
    if origin is list:
        (item,) = typing.get_args(kind) or (str,)
        if from_text and isinstance(raw, str):
            raw = [x.strip() for x in raw.split(",") if x.strip()]
        if not isinstance(raw, list):
            raise ValueError(f"a list of {_describe(name, item)}" + (", comma separated" if from_text else ""))
        try:
            return [_scalar(name, item, x, from_text) for x in raw]
        except ValueError:
            raise ValueError(f"a list of {_describe(name, item)}" + (", comma separated" if from_text else "")) \
                from None
    if origin is dict:
        key_kind, item = typing.get_args(kind) or (str, Any)
        what = f"a mapping of names to {_describe(name, item)}" + (" (a JSON object)" if from_text else "")
        if from_text and isinstance(raw, str):
            import json  # only for a mapping given in the environment

            try:
                raw = json.loads(raw)
            except ValueError:
                raise ValueError(what) from None
        if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
            raise ValueError(what)
        try:
            return {k: _scalar(name, item, v, False) for k, v in raw.items()}
        except ValueError:
            raise ValueError(what) from None
    return _scalar(name, origin, raw, from_text)


def _describe(name: str, kind: Any) -> str:
    if kind is int or kind is float:
        return _number_rule(name, kind is int).replace("a whole number", "whole numbers").replace(
            "a number", "numbers")
    return {bool: "true/false values", str: "texts", Path: "file paths"}.get(kind, "values")


def _read_file(cfg_file: Path, names: set[str]) -> dict[str, Any]:
    """The settings of config.yaml; ConfigError names the file, and the line or key at fault."""
    import yaml  # only when there is a config file: keeps `pd` start-up lean

    try:
        data = yaml.safe_load(cfg_file.read_text())
    except OSError as exc:
        raise ConfigError(f"{cfg_file}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{cfg_file}: is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{cfg_file}{where}: not valid YAML ({problem}); write one `key: value` per line") \
            from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{cfg_file}: holds {type(data).__name__ if not isinstance(data, list) else 'a list'}; "
                          "it must be a mapping of settings, one `key: value` per line")
    data = _flatten_team(cfg_file, data)
    for key in data:
        if key not in names:
            import difflib  # only for a typo

            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{cfg_file}: unknown setting {key!r}{hint}; the settings are listed in "
                              "docs/operations.md")
    return data


def _flatten_team(cfg_file: Path, data: dict) -> dict:
    """The `team:` mapping of config.yaml as team_* settings (`team: {space: x}` is `team_space: x`)."""
    section = data.get(TEAM_SECTION)
    if section is None:
        return data
    if not isinstance(section, dict):
        raise ConfigError(f"{cfg_file}: team must be a mapping of team settings (servers, space, ...); "
                          "see docs/team.md")
    flat = {k: v for k, v in data.items() if k != TEAM_SECTION}
    team_names = {f.name[len("team_"):] for f in dataclasses.fields(Config) if f.name.startswith("team_")}
    for key, value in section.items():
        if key not in team_names:
            import difflib

            close = difflib.get_close_matches(str(key), sorted(team_names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{cfg_file}: unknown team setting {key!r}{hint}; the team settings are listed in "
                              "docs/operations.md")
        if key == "servers" and isinstance(value, str):
            value = [value]
        flat[f"team_{key}"] = value
    return flat


def _check_team(config: Config, origin: dict[str, str]) -> None:
    """The team settings must make sense together: servers with a space, one way to log in, 1 or 3 replicas."""
    import re

    def where(name: str) -> str:
        return f"{origin[name]}: " if name in origin else ""

    for url in config.team_servers:
        if not re.fullmatch(r"(nats|tls)://[^\s/]+", url):
            raise ConfigError(f"{where('team_servers')}team.servers holds {url!r}; each must be a URL like "
                              "nats://HOST:4222 (or tls://HOST:4222)")
    if config.team_replicas not in (1, 3):
        raise ConfigError(f"{where('team_replicas')}team.replicas is {config.team_replicas}; it must be 1 or 3")
    for name in ("team_space", "team_host_id"):
        value = getattr(config, name)
        if value and not re.fullmatch(_TEAM_NAME_RE, value):
            raise ConfigError(f"{where(name)}team.{name[5:]} is {value!r}; it must be 1-64 characters from "
                              "A-Z a-z 0-9 _ -")
    if config.team_servers and not config.team_space:
        raise ConfigError(f"{where('team_servers')}team.servers is set but team.space is not; name the space "
                          "(pd team join URL --space NAME)")
    if config.team_creds and (config.team_user or config.team_password):
        raise ConfigError(f"{where('team_creds')}team.creds and team.user/password are both set; give one way "
                          "to log in")
    if config.team_password and not config.team_user:
        raise ConfigError(f"{where('team_password')}team.password is set without team.user")


def _bad(where: str, name: str, raw: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{where}{name} is {raw!r}; it must be {allowed}")


def setting_from_text(name: str, raw: str, var: str) -> Any:
    """The value of setting `name` given as text in the environment variable `var`; a bad one
    raises ConfigError naming the variable, the setting, the value and what is allowed."""
    try:
        return _convert(name, raw, from_text=True)
    except ValueError as exc:
        raise ConfigError(f"{var} is {raw!r} (setting {name}); it must be {exc}") from None


def load_config(home: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
                **overrides: Any) -> Config:
    """Build the Config: defaults < config.yaml < environment < explicit overrides.

    `environ` is the environment to read (default: this process's), so a caller can build the
    Config another process would get without touching its own. Every value given is checked
    against its setting's type and bounds; the first bad one raises ConfigError, one line naming
    the file or the environment variable, the key, the value and what is allowed.
    """
    env = os.environ if environ is None else environ
    home_path = Path(home or env.get("PORT_DADDY_HOME") or DEFAULT_HOME).expanduser()
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}  # setting -> where its value came from, for the messages
    names = {f.name for f in dataclasses.fields(Config)} - {"home"}
    cfg_file = home_path / "config.yaml"
    if cfg_file.is_file():
        for key, raw in _read_file(cfg_file, names).items():
            try:
                values[key] = _convert(key, raw, from_text=False)
            except ValueError as exc:
                raise _bad(f"{cfg_file}: ", key, raw, str(exc)) from None
            origin[key] = str(cfg_file)
    given = [(f"PORT_DADDY_{name.upper()}", name) for name in sorted(names)] + list(_ENV_PATHS.items())
    for var, name in given:
        raw = env.get(var)
        if not raw:  # unset, or set to nothing: the file's value or the default
            continue
        values[name] = setting_from_text(name, raw, var)
        origin[name] = var
    for name, raw in overrides.items():
        if raw is None:
            continue
        if name not in names:
            raise ConfigError(f"unknown setting {name!r}")
        try:
            values[name] = _convert(name, raw, from_text=isinstance(raw, str))
        except ValueError as exc:
            raise _bad("", name, raw, str(exc)) from None
        origin[name] = name
    config = Config(home=home_path, **values)
    for low, op, high in _ORDERED:
        a, b = getattr(config, low), getattr(config, high)
        if a < b or (op == "<=" and a == b):
            continue
        where = " and ".join(dict.fromkeys(origin[n] for n in (low, high) if n in origin)) or "the defaults"
        raise ConfigError(f"{where}: {low} is {a} and {high} is {b}; {low} must be "
                          f"{'below' if op == '<' else 'at most'} {high}")
    _check_team(config, origin)
    return config


def load_config_or_exit(home: str | os.PathLike | None = None) -> Config:
    """`load_config()` for a daemon process: a bad setting is one line on stderr and exit EXIT_CONFIG."""
    try:
        return load_config(home)
    except ConfigError as exc:
        print(f"port-daddy: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


HOME_HEADER = "X-Port-Daddy-Home"


def home_tag(home: Path | str) -> str:
    """A short tag of a home folder (a hash of its resolved path) that the HTTP side sends with
    every reply, so a client that reaches a daemon over TCP can tell it serves another home."""
    import hashlib

    return hashlib.sha256(str(Path(home).expanduser().resolve()).encode()).hexdigest()[:16]
