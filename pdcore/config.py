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

import yaml

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
    tcp_port: int = 9876
    no_tcp: bool = False
    # ports
    port_range_start: int = 3100
    port_range_end: int = 9999
    reserved_ports: list[int] = field(default_factory=lambda: [8000, 8080, 9876, 9877])
    probe_bound_ports: bool = True  # skip ports some process outside Port Daddy has bound
    # IPC
    ipc_max_connections: int = 256
    ipc_rate_limit: int = 500  # frames/s per public connection; 0 disables
    ipc_max_message: int = 4 * 1024 * 1024  # reassembled message limit, bytes
    ipc_strikes: int = 3
    ipc_write_high_water: int = 1024 * 1024
    # HTTP
    http_workers: int = 2
    http_threads: int = 8
    http_max_body: int = 1024 * 1024
    http_timeout_s: int = 120
    # durability
    db_synchronous: str = "NORMAL"  # NORMAL survives kill -9 in WAL mode; FULL also power loss
    # agents and reaper
    agent_stale_ms: int = 10 * 60 * 1000
    agent_dead_ms: int = 20 * 60 * 1000
    reaper_interval_ms: int = 5000
    # sessions and notes
    note_max_bytes: int = 64 * 1024
    salvage_note_count: int = 10
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
    # arbiter
    arbiter_strict: bool = False
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
