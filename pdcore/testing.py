"""Shared by the test fixtures and the bench scripts: a throwaway home for a real daemon.

`isolated_home(settings)` makes a new 0700 temporary home, a free loopback port and the
environment a daemon (or `pd`) needs to live there and nowhere else; `config_for(env, home)`
builds the Config those processes will see. Nothing here touches ~/.port-daddy.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from pdcore.auth import ensure_token
from pdcore.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def isolated_home(settings: dict[str, Any], prefix: str = "pd-") -> tuple[Path, int, dict[str, str]]:
    """A new home (0700), a free port, and an environment naming them, with `PORT_DADDY_<KEY>` settings."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(home, 0o700)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORT_DADDY_")}
    env.update({
        "PORT_DADDY_HOME": str(home),
        "PORT_DADDY_PORT": str(port),
        "PORT_DADDY_NO_AUTOSTART": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    })
    for key, value in settings.items():
        if isinstance(value, bool):
            value = "1" if value else "0"
        env[f"PORT_DADDY_{key.upper()}"] = str(value)
    return home, port, env


def config_for(env: dict[str, str], home: Path) -> Config:
    """The Config a process started with `env` builds (this process's environment is not touched:
    other threads may be reading it)."""
    return load_config(home, environ=env)


def local_client(app: Any, headers: dict[str, str] | None = None) -> Any:
    """falcon's TestClient for an in-process HTTP app, whose requests name a loopback Host
    (the ASGI test scope adds its own Host header, `falconframework.org`, unless told one)."""
    from falcon import testing

    class LocalClient(testing.TestClient):
        def simulate_request(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("host", "localhost")
            return super().simulate_request(*args, **kwargs)

    return LocalClient(app, headers=headers)


@functools.cache
def token_home() -> tuple[Path, dict[str, str]]:
    """A home folder holding a token (one per process, removed at exit), and the headers of a
    local TCP caller presenting it: for HTTP app tests that run in-process."""
    home = Path(tempfile.mkdtemp(prefix="pd-app-"))
    os.chmod(home, 0o700)
    atexit.register(shutil.rmtree, home, True)
    token = ensure_token(home / "auth.token")
    return home, {"Host": "localhost:9876", "Authorization": f"Bearer {token}"}
