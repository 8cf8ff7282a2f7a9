"""The HTTP process: gunicorn (gthread workers) serving `workers.app` on daemon.sock and TCP.

    PORT_DADDY_HOME=... python -m workers.server

is what the supervisor runs. The gunicorn master imports the app before forking (preload),
so a worker that dies, even by `kill -9`, is replaced in milliseconds without re-importing.
Binds `unix:<config.sock>` (created 0600 through the umask) and `127.0.0.1:<tcp_port>`
unless `no_tcp`. Errors go to `daemon.log`; the access log is off unless `http_access_log`.
SIGTERM stops gracefully: workers finish in-flight requests for `http_graceful_timeout_s`.

A request gunicorn cannot parse (a request line over 4094 bytes, a header with a NUL, an
unknown transfer coding, ...) never reaches the app: gunicorn answers it itself, with an
HTML page. `write_json_error` replaces that page with the app's JSON error body, so every
reply of the daemon is JSON (gunicorn has no hook for it: `install_json_errors` swaps its
`util.write_error` in this process only).
"""

from __future__ import annotations

import argparse
import http
import json
import logging
import os
import signal
import time
from typing import Any

import gunicorn.util
from gunicorn.app.base import BaseApplication

from pdcore.config import Config, load_config_or_exit
from pdcore.paths import watch_supervisor

SOCKET_UMASK = 0o177  # the Unix socket (and gunicorn's temp files) come out 0600
# Each worker touches a heartbeat file on every turn of its loop (several times per
# request under load); in memory (tmpfs) that costs far less than on a disk.
HEARTBEAT_DIR = "/dev/shm"


# gunicorn's status for a request it could not parse -> (our status, code, field at fault, why).
# Its 501 for an unknown Transfer-Encoding is the client's input, so it is a 400 here.
GUNICORN_ERRORS: dict[int, tuple[int, str, str | None, str]] = {
    400: (400, "invalid_argument", "request", "a request line or header the server cannot parse"),
    403: (403, "forbidden", "request", "a request the server refuses before routing it"),
    414: (414, "too_large", "url", "the request line (path and query) is longer than the server reads"),
    417: (417, "invalid_argument", "Expect", "an Expect header other than 100-continue"),
    431: (431, "too_large", "headers", "the request headers are too large"),
    501: (400, "invalid_argument", "Transfer-Encoding", "a Transfer-Encoding the server does not know"),
}


def json_error_response(status_int: int, reason: str, mesg: str) -> bytes:
    """The raw HTTP reply for a request gunicorn refused before the app saw it: our JSON body."""
    from workers.app import error_body

    known = GUNICORN_ERRORS.get(status_int)
    status, code, field = known[:3] if known else (status_int, "internal", None)
    if known is None and status_int >= 500:
        message = "internal error while reading the request; details are in daemon.log"
    else:
        message = f"the request could not be read: {mesg or reason}"
    body = json.dumps(error_body(code, message, field)).encode()
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = reason
    head = (f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for `gunicorn.util.write_error` that writes `json_error_response`."""
    gunicorn.util.write_nonblock(sock, json_error_response(status_int, reason, mesg))


def install_json_errors() -> None:
    """Make gunicorn's own refusals (unparsable requests) JSON, in this process."""
    gunicorn.util.write_error = write_json_error


def _when_ready(server: Any) -> None:
    """In the master, once it listens: stop gracefully (as on SIGTERM) if the supervisor dies."""
    watch_supervisor(lambda: os.kill(os.getpid(), signal.SIGTERM), "http")


def _post_worker_init(worker: Any) -> None:
    from workers.sse import watch_worker

    watch_worker(lambda: bool(worker.alive))
    throttle_heartbeat(worker)


def throttle_heartbeat(worker: Any) -> None:
    """Beat the worker's heartbeat at most every `timeout / 4` seconds (at most 1 s).

    gthread calls `notify()` on every turn of its loop, several times per request under load,
    and each is an `os.utime` on the heartbeat file: a tenth of a busy worker's CPU. gunicorn's
    master needs one beat per `timeout` seconds to know the worker is not stuck."""
    beat = worker.notify
    interval = max(0.05, min(1.0, worker.timeout / 4))
    last = -interval

    def notify() -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= interval:
            last = now
            beat()

    worker.notify = notify


def gunicorn_settings(config: Config) -> dict[str, Any]:
    """The gunicorn settings for this config (kept apart so a test can read them)."""
    binds = [f"unix:{config.sock}"]
    if not config.no_tcp:
        binds.append(f"127.0.0.1:{config.tcp_port}")
    return {
        "bind": binds,
        "worker_class": "gthread",
        "workers": max(1, config.http_workers),
        "threads": max(1, config.http_threads),
        "timeout": config.http_timeout_s,
        "graceful_timeout": config.http_graceful_timeout_s,
        "keepalive": config.http_keepalive_s,
        "preload_app": True,
        "umask": SOCKET_UMASK,
        "accesslog": str(config.log_path) if config.http_access_log else None,
        "errorlog": str(config.log_path),
        "loglevel": "info",
        "proc_name": "pd-http",
        "control_socket_disable": True,
        "post_worker_init": _post_worker_init,
        "when_ready": _when_ready,
        "worker_tmp_dir": HEARTBEAT_DIR if os.path.isdir(HEARTBEAT_DIR) and os.access(HEARTBEAT_DIR, os.W_OK) else None,
    }


class HttpServer(BaseApplication):
    """gunicorn configured from our Config instead of its command line."""

    def __init__(self, config: Config) -> None:
        self.config = config
        super().__init__()

    def load_config(self) -> None:
        install_json_errors()  # the master, before it forks the workers
        for key, value in gunicorn_settings(self.config).items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from workers.app import create_app

        _log_to(self.config)
        return create_app(self.config)


def _log_to(config: Config) -> None:
    """Send the app's own log lines (logger `pd.http`) to daemon.log, beside gunicorn's."""
    logger = logging.getLogger("pd.http")
    if not any(getattr(h, "baseFilename", None) == str(config.log_path) for h in logger.handlers):
        handler = logging.FileHandler(config.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s pid=%(process)d level=%(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.server", description="Port Daddy HTTP side")
    parser.add_argument("--home", help="home folder (default: PORT_DADDY_HOME or ~/.port-daddy)")
    opts = parser.parse_args(argv)
    config = load_config_or_exit(opts.home)
    HttpServer(config).run()


if __name__ == "__main__":
    main()
