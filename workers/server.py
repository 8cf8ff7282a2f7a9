"""The HTTP process: gunicorn's ASGI worker (uvloop) serving `workers.app` on daemon.sock and TCP.

    PORT_DADDY_HOME=... python -m workers.server

is what the supervisor runs. gunicorn is the process manager: the master imports the app before
forking (preload), so a worker that dies, even by `kill -9`, is replaced in milliseconds without
re-importing; SIGTERM stops gracefully (workers end their event streams and finish in-flight
requests for `http_graceful_timeout_s`). Each of the `http_workers` workers runs one event loop
(`DoorWorker`, gunicorn's `ASGIWorker` with our connection protocol) serving the Falcon ASGI
app; gunicorn's C HTTP parser (`gunicorn_h1c`, the `fast` extra) is used when it is installed.
Binds `unix:<config.sock>` (created 0600 through the umask) and `127.0.0.1:<tcp_port>` unless
`no_tcp`. Errors go to `daemon.log`; the access log is off unless `http_access_log`.

`DoorProtocol` is gunicorn's HTTP/1.1 connection protocol plus what the door needs of the
connection itself:
- who: on daemon.sock, the peer's uid from the kernel (SO_PEERCRED) once per connection, handed
  to the gate in the ASGI scope (`guard.UNIX_PEER_UID`), and a future done when the client's
  connection closes (`guard.CLIENT_GONE`), which ends its event stream at once;
- JSON refusals: a request gunicorn cannot parse (a request line over 4094 bytes, a header with
  a NUL, an unknown transfer coding, ...) never reaches the app; gunicorn answers it itself,
  through `_send_error_response`, which here writes the app's JSON error body;
- slow clients: gunicorn bounds the idle time between keep-alive requests (`http_keepalive_s`,
  which also covers the headers of the next request) and each wait for a body chunk
  (`http_timeout_s`), but not the first request's headers nor a whole body; so a connection's
  first request must bring its headers within `http_header_timeout_s` (else 408 and close) and
  every request its body within `http_body_timeout_s` of its headers (else the connection is
  closed); a connection costs a few KB and no thread while it waits;
- `http_max_connections` per worker: past it a new connection gets 503 naming the setting.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import logging
import os
import signal
import socket
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers.gasgi import ASGIWorker

from pdcore.config import Config, load_config_or_exit
from pdcore.paths import peer_credentials, watch_supervisor
from workers.guard import CLIENT_GONE, UNIX_PEER_UID

SOCKET_UMASK = 0o177  # the Unix socket (and gunicorn's temp files) come out 0600
# Each worker touches a heartbeat file once a second; in memory (tmpfs) rather than on a disk.
HEARTBEAT_DIR = "/dev/shm"


# gunicorn's status for a request it refused -> (our status, code, field at fault, why).
# Its 501 for an unknown Transfer-Encoding is the client's input, so it is a 400 here.
GUNICORN_ERRORS: dict[int, tuple[int, str, str | None, str]] = {
    400: (400, "invalid_argument", "request", "a request line or header the server cannot parse"),
    403: (403, "forbidden", "request", "a request the server refuses before routing it"),
    408: (408, "timeout", "request", "the request did not arrive in time"),
    414: (414, "too_large", "url", "the request line (path and query) is longer than the server reads"),
    417: (417, "invalid_argument", "Expect", "an Expect header other than 100-continue"),
    431: (431, "too_large", "headers", "the request headers are too large"),
    501: (400, "invalid_argument", "Transfer-Encoding", "a Transfer-Encoding the server does not know"),
    503: (503, "unavailable", None, "the server cannot take the connection now"),
}


def json_error_response(status_int: int, reason: str, mesg: str, extra_headers: Any = (),
                        **extra: Any) -> bytes:
    """The raw HTTP reply for a request the server refused before the app saw it: our JSON body."""
    from workers.app import error_body

    known = GUNICORN_ERRORS.get(status_int)
    status, code, field = known[:3] if known else (status_int, "internal", None)
    if known is None and status_int >= 500:
        message = "internal error while reading the request; details are in daemon.log"
    elif status_int in (408, 503):
        message = mesg
    else:
        message = f"the request could not be read: {mesg or reason}"
    body = json.dumps(error_body(code, message, field, **extra)).encode()
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = reason
    more = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
    if status == 503:
        more += "Retry-After: 1\r\n"
    head = (f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{more}\r\n")
    return head.encode("latin-1") + body


class DoorProtocol(ASGIProtocol):
    """gunicorn's HTTP/1.1 protocol with the door's connection facts, JSON refusals and bounds."""

    def __init__(self, worker: DoorWorker) -> None:
        super().__init__(worker)
        self.gone: asyncio.Future = worker.loop.create_future()
        self.unix = False
        self.peer_uid: int | None = None
        self.refused = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        door = self.worker
        if door.nr_conns >= door.max_connections:
            self.refused = True  # never counted, so connection_lost must not uncount it
            transport.write(json_error_response(  # type: ignore[attr-defined]
                503, "Service Unavailable",
                f"this HTTP worker already holds {door.nr_conns} connections (http_max_connections="
                f"{door.max_connections}); retry shortly", limit="http_max_connections"))
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            self.unix = True
            try:
                self.peer_uid = peer_credentials(sock)[1]
            except OSError:
                self.peer_uid = None  # admit refuses an unknown peer
        super().connection_made(transport)
        self._arm(door.header_timeout_s, self._headers_late)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self._disarm()
        if not self.gone.done():
            self.gone.set_result(None)
        super().connection_lost(exc)

    # -- the request's deadlines --
    def _arm(self, seconds: float, then: Any) -> None:
        self._disarm()
        if seconds > 0:
            self._deadline = self.worker.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_headers_complete(self) -> Any:
        self._disarm()
        result = super()._on_headers_complete()
        request = self._current_request
        if request is not None and (request.content_length or request.chunked):
            self._arm(self.worker.body_timeout_s, self._body_late)
        return result

    def _on_message_complete(self) -> None:
        self._disarm()
        super()._on_message_complete()

    def _headers_late(self) -> None:
        self._deadline = None
        if self._closed or self._current_request is not None:
            return
        self._send_error_response(408, f"the request's headers did not arrive within "
                                       f"{self.worker.header_timeout_s:g} s (http_header_timeout_s)")
        self._close_transport()
        self._request_ready.set()  # wake the connection's loop so it ends

    def _body_late(self) -> None:
        self._deadline = None
        self.log.info("event=http.body_timeout after=%gs", self.worker.body_timeout_s)
        self._close_transport()  # the app reading the body sees the client gone

    # -- refusals as JSON --
    def _send_error_response(self, status: int, message: str, extra_headers: Any = ()) -> None:
        self._safe_write(json_error_response(status, "", message, extra_headers))

    def _build_http_scope(self, request: Any, sockname: Any, peername: Any) -> dict:
        scope = super()._build_http_scope(request, sockname, peername)
        if self.unix:
            scope[UNIX_PEER_UID] = self.peer_uid
        scope[CLIENT_GONE] = self.gone
        return scope


class DoorWorker(ASGIWorker):
    """gunicorn's ASGI worker serving `DoorProtocol` connections, one event loop per process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        door = self.app.config  # the HttpServer's Config
        self.max_connections = max(1, door.http_max_connections)
        self.header_timeout_s = float(door.http_header_timeout_s)
        self.body_timeout_s = float(door.http_body_timeout_s)

    async def _serve(self) -> None:
        """Listen on every bound socket with our protocol, beat the heartbeat, stop when told."""
        self._stop_asked = asyncio.Event()
        for sock in self.sockets:
            server = await self.loop.create_server(lambda: DoorProtocol(self), sock=sock.sock, start_serving=True)
            self.servers.append(server)
        try:
            while self.alive:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
                try:  # a beat a second, but a stop signal ends the wait at once (not up to 1 s later)
                    await asyncio.wait_for(self._stop_asked.wait(), 1.0)
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            pass
        await self._shutdown()

    def handle_exit_signal(self) -> None:
        super().handle_exit_signal()
        self._wake()

    def handle_quit_signal(self) -> None:
        super().handle_quit_signal()
        self._wake()

    def _wake(self) -> None:
        stop_asked = getattr(self, "_stop_asked", None)
        if stop_asked is not None:  # signal handlers run on the worker's loop: setting it is safe
            stop_asked.set()

    async def _shutdown(self) -> None:
        from workers.sse import stop_streams

        for server in self.servers:
            server.close()  # no new connections while the streams end and requests finish
        stop_streams()
        await super()._shutdown()


def _when_ready(server: Any) -> None:
    """In the master, once it listens: stop gracefully (as on SIGTERM) if the supervisor dies."""
    watch_supervisor(lambda: os.kill(os.getpid(), signal.SIGTERM), "http")


def gunicorn_settings(config: Config) -> dict[str, Any]:
    """The gunicorn settings for this config (kept apart so a test can read them)."""
    binds = [f"unix:{config.sock}"]
    if not config.no_tcp:
        binds.append(f"127.0.0.1:{config.tcp_port}")
    return {
        "bind": binds,
        "worker_class": "workers.server.DoorWorker",
        "workers": max(1, config.http_workers),
        "worker_connections": max(1, config.http_max_connections),
        "asgi_loop": "auto",  # uvloop (a dependency) when it imports, else asyncio's own
        "asgi_lifespan": "off",  # the app has nothing to start: the core link connects on first use
        "http_parser": "auto",  # gunicorn_h1c (C) when installed, else gunicorn's Python parser
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
        "when_ready": _when_ready,
        "worker_tmp_dir": HEARTBEAT_DIR if os.path.isdir(HEARTBEAT_DIR) and os.access(HEARTBEAT_DIR, os.W_OK) else None,
    }


class HttpServer(BaseApplication):
    """gunicorn configured from our Config instead of its command line."""

    def __init__(self, config: Config) -> None:
        self.config = config
        super().__init__()

    def load_config(self) -> None:
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
