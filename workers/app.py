"""`create_app(config)`: the Falcon ASGI app (`falcon.asgi`) of the HTTP side.

Each gunicorn worker runs it on one event loop (workers/server.py); every responder is a
coroutine and the core is reached through the worker's one pipelined connection
(`workers.corelink.CoreClient`).

Routes come from the op catalogue (`workers.routes`); the HTTP side adds the event stream
(`workers.sse`), `/openapi.json` (`workers.openapi`), Prometheus metrics (`workers.metrics`),
the dashboard at `/` and the landing of its one-time links (`/auth/dashboard`). Every request
passes the gate first (`workers.guard`: Host, who is calling, Origin, size). Errors are turned
into the JSON error body in one place, here: an `OpError`
keeps its code and status, Falcon's own errors (no route, wrong method) get a code too, and
anything unexpected is logged and answered 500 `internal` without taking the worker down.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
import falcon.media
from falcon.asgi import Request, Response

from pdcore.auth import AUTH_REALM, cookie_name
from pdcore.config import Config
from pdcore.errors import OpError
from pdcore.ops import CATALOGUE
from pdcore.shm import ShmFirst
from workers.corelink import CoreClient
from workers.guard import TICKET_PATH, Gate
from workers.limits import Limits
from workers.metrics import metrics_renderer
from workers.openapi import SSE_PATH, build_spec
from workers.routes import Core, OpResource, build_resources, dumps, router_template
from workers.sse import ChannelEvents, StreamSource

log = logging.getLogger("pd.http")

DASHBOARD_HTML = Path(__file__).with_name("dashboard.html")
RENDERERS = {"daemon.metrics": metrics_renderer}
_CODE_BY_FALCON_STATUS = {
    400: "invalid_argument", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "timeout", 413: "too_large", 429: "rate_limited", 503: "unavailable",
}


def error_body(code: str, message: str, field: str | None = None, code37: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """The one JSON shape of every failure: `reason` is always our word; `code` is 3.7's on a 3.7 route."""
    body: dict[str, Any] = {"success": False, "error": message, "code": code37 or code, "reason": code,
                            "field": field}
    body.update({k: v for k, v in extra.items() if k not in body and k != "action"})
    return body


def _send_error(resp: Response, status: int, body: dict[str, Any]) -> None:
    resp.status = status
    resp.stream = None
    resp.content_type = falcon.MEDIA_JSON
    resp.media = body
    if status in (429, 503):
        resp.set_header("Retry-After", str(body.get("retryAfter", 1)))
    elif status == 401:
        resp.set_header("WWW-Authenticate", f"Bearer {AUTH_REALM}")


async def handle_op_error(req: Request, resp: Response, ex: OpError, params: dict) -> None:
    code37, status37 = getattr(ex, "code37", None) or (None, None)
    _send_error(resp, status37 or ex.status, error_body(ex.code, ex.message, ex.field, code37, **ex.extra))


async def handle_http_error(req: Request, resp: Response, ex: falcon.HTTPError, params: dict) -> None:
    status = ex.status_code
    code = _CODE_BY_FALCON_STATUS.get(status, "internal" if status >= 500 else "invalid_argument")
    if status == 404:
        message = f"no route for {req.method} {req.path}; GET /openapi.json lists every route"
    elif status == 405:
        message = f"{req.method} is not allowed on {req.path}; allowed: {(ex.headers or {}).get('Allow', '-')}"
    else:
        message = ex.description or ex.title or f"HTTP {status}"
    for name, value in (ex.headers or {}).items():
        resp.set_header(name, value)
    _send_error(resp, status, error_body(code, message))


async def handle_unexpected(req: Request, resp: Response, ex: Exception, params: dict) -> None:
    if isinstance(ex, falcon.HTTPError):  # raised by Falcon itself after routing
        await handle_http_error(req, resp, ex, params)
        return
    log.exception("event=internal_error method=%s path=%s error=%s", req.method, req.path, type(ex).__name__)
    _send_error(resp, 500, error_body(
        "internal", f"internal error ({type(ex).__name__}) while serving {req.method} {req.path}; "
        "details are in daemon.log"))


class OpenApiDocument:
    """`GET /openapi.json`, built once from the catalogue."""

    def __init__(self) -> None:
        self.spec = build_spec()

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.media = self.spec


class Dashboard:
    """`GET /`: one static page that reads the JSON routes and the event stream."""

    def __init__(self, html: str) -> None:
        self.html = html

    async def on_get(self, req: Request, resp: Response) -> None:
        resp.content_type = "text/html; charset=utf-8"
        resp.set_header("Content-Security-Policy",
                        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
        resp.set_header("X-Frame-Options", "DENY")
        resp.text = self.html


class DashboardLink:
    """`GET /auth/dashboard?ticket=...`: a `pd dashboard` link. The core uses the ticket up (once,
    within its validity); the browser then gets the dashboard cookie and goes to `/`."""

    def __init__(self, core: Core, gate: Gate, tcp_port: int) -> None:
        self.core = core
        self.gate = gate
        self.cookie = cookie_name(tcp_port)

    async def on_get(self, req: Request, resp: Response) -> None:
        ticket = req.get_param("ticket") or ""
        if not ticket:
            raise OpError("unauthorized", "this link has no ticket; run `pd dashboard` for a new link", "ticket")
        await self.core.call("daemon.dashboard_redeem", {"ticket": ticket[:200]})
        value = self.gate.keys.current_cookie()
        if value is None:
            raise OpError("unavailable", f"the dashboard cannot be opened: {self.gate.keys.problem}")
        resp.set_cookie(self.cookie, value, path="/", secure=False, http_only=True, same_site="Strict")
        resp.set_header("Cache-Control", "no-store")
        resp.set_header("Referrer-Policy", "no-referrer")  # the ticket stays out of later requests
        resp.status = 303
        resp.location = "/"
        resp.content_type = falcon.MEDIA_JSON
        resp.media = {"success": True, "redirect": "/"}


def _mount(app: falcon.asgi.App, resources: dict[str, Any], template: str, method: str, responder: Any) -> None:
    """Serve `method` on `template` with `responder`, beside any catalogue methods there."""
    resource = resources.get(template)
    if resource is None:
        resource = resources[template] = OpResource(template)
    setattr(resource, f"on_{method.lower()}", responder)


class ShmFirstCore:
    """The core link, but `port.get` is answered from state.shm when it can be (no round trip)."""

    def __init__(self, core: CoreClient, shm: ShmFirst) -> None:
        self.core = core
        self.shm = shm

    async def call(self, action: str, args: dict, **kw: Any) -> dict:
        result = self.shm.try_call(action, args)
        return result if result is not None else await self.core.call(action, args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


def create_app(config: Config, core: Core | None = None) -> falcon.asgi.App:
    """The ASGI app. `core` is the link to the core (a `CoreClient` unless a test injects one)."""
    if core is None:
        core = CoreClient(config.core_sock or config.home / "core.sock", config.http_core_connect_wait_ms)
        if config.shm_enabled:
            core = ShmFirstCore(core, ShmFirst(config.shm_path))
    limits = Limits(config.http_max_streams, config.http_max_parked)

    gate = Gate(config.http_max_body, config.token_path, config.tcp_port, str(config.home), config.http_drain_max)
    app = falcon.asgi.App(middleware=[gate], cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.auto_parse_form_urlencoded = False
    json_handler = falcon.media.JSONHandler(dumps=dumps)  # the responders' encoder (non-ASCII kept, bytes as base64)
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler

    sse_template, sse_fields = router_template(SSE_PATH)
    special = {("GET", sse_template), ("GET", "/"), ("GET", "/openapi.json"), ("GET", TICKET_PATH)}
    resources: dict[str, Any] = dict(build_resources(
        CATALOGUE.values(), core, limits, config.http_max_body, RENDERERS, skip=special))
    stream_source: StreamSource = core  # type: ignore[assignment]
    events = ChannelEvents(stream_source, limits, config.sse_keepalive_s, next(iter(sse_fields)))
    _mount(app, resources, sse_template, "GET", events.on_get)
    _mount(app, resources, sse_template, "HEAD", events.on_head)  # headers only: no stream is opened
    _mount(app, resources, "/openapi.json", "GET", OpenApiDocument().on_get)
    _mount(app, resources, "/", "GET", Dashboard(DASHBOARD_HTML.read_text()).on_get)
    _mount(app, resources, TICKET_PATH, "GET", DashboardLink(core, gate, config.tcp_port).on_get)
    for template in sorted(resources):
        resource = resources[template]
        if hasattr(resource, "on_get") and not hasattr(resource, "on_head"):
            # HEAD is GET without the body: Falcon sends a HEAD's status and headers (with the
            # GET's Content-Length) and drops the body; it only needs a responder to route to.
            resource.on_head = resource.on_get
        app.add_route(template, resource)

    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(OpError, handle_op_error)
    return app
