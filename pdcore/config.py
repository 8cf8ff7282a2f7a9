"""Configuration, built once from defaults, `<home>/config.yaml`, the environment and flags.

Every number in SPEC.md is a key here. Any key can be set in `config.yaml` or through the
environment as `PORT_DADDY_<KEY>` (upper case); the path variables of ARCHITECTURE.md
(`PORT_DADDY_HOME`, `_SOCK`, `_IPC`, `_PORT_FILE`, `_PORT`, `_NO_TCP`) are honoured too.
"""

from __future__ import annotations

import dataclasses
import os
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
    ipc_strikes: int = 3
    ipc_write_high_water: int = 1024 * 1024
    # HTTP
    http_workers: int = 2
    http_threads: int = 8
    http_max_body: int = 1024 * 1024
    http_timeout_s: int = 120
    http_graceful_timeout_s: int = 10  # how long a stopping worker finishes in-flight requests
    http_keepalive_s: int = 5
    http_access_log: bool = False  # access lines go to log_path when on
    http_core_connect_wait_ms: int = 2000  # a worker retries core.sock this long (core restarting) before 503
    http_max_waiting: int = 0  # per worker: SSE streams + parked ops holding a thread; 0 = http_threads - 2
    sse_keepalive_s: int = 15  # comment line sent on an idle event stream
    # durability
    db_synchronous: str = "NORMAL"  # NORMAL survives kill -9 in WAL mode; FULL also power loss
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
    notes_list_max: int = 1000  # notes returned by one list call
    # locks
    lock_ttl_default_ms: int = 300_000
    lock_ttl_max_ms: int = 24 * 3600 * 1000
    # messaging
    channel_ring_size: int = 1000
    channel_ring_age_ms: int = 3600 * 1000
    sse_max_per_client: int = 16
    subscriber_queue_max: int = 1024 * 1024  # bytes buffered for a slow subscriber before drops
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
    pheromone_half_life_overrides: dict = field(default_factory=dict)  # "key" or "table.key" -> half-life ms
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


def _convert(name: str, raw: Any) -> Any:
    fields = {f.name: f for f in dataclasses.fields(Config)}
    f = fields[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if isinstance(raw, str):
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            return [int(x) if x.strip().isdigit() else x.strip() for x in raw.split(",") if x.strip()]
    return raw


def load_config(home: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Build the Config: defaults < config.yaml < environment < explicit overrides."""
    env = os.environ
    home_path = Path(home or env.get("PORT_DADDY_HOME") or DEFAULT_HOME).expanduser()
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(Config)} - {"home"}
    cfg_file = home_path / "config.yaml"
    if cfg_file.is_file():
        import yaml  # only when there is a config file: keeps `pd` start-up lean

        data = yaml.safe_load(cfg_file.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{cfg_file}: expected a mapping of settings")
        for key, value in data.items():
            if key not in names:
                raise ValueError(f"{cfg_file}: unknown setting {key!r}")
            values[key] = value
    for name in names:
        raw = env.get(f"PORT_DADDY_{name.upper()}")
        if raw is not None:
            values[name] = _convert(name, raw)
    for var, name in _ENV_PATHS.items():
        if env.get(var):
            values[name] = _convert(name, env[var])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(home=home_path, **values)


HOME_HEADER = "X-Port-Daddy-Home"


def home_tag(home: Path | str) -> str:
    """A short tag of a home folder (a hash of its resolved path) that the HTTP side sends with
    every reply, so a client that reaches a daemon over TCP can tell it serves another home."""
    import hashlib

    return hashlib.sha256(str(Path(home).expanduser().resolve()).encode()).hexdigest()[:16]
