"""Falcon (ASGI) resources built from the op catalogue: one responder per `Route` of every `Op`.

A responder translates and forwards, it does not decide: it merges the request's query
parameters, JSON body and path parameters (in that order, later wins), turns text into
typed values by the op's schema, sends ONE frame to the core and writes the reply as JSON
(`{"success": true, **result}` with `Route.status`). Validation of the values themselves is
the core's (one place per decision).

A responder is a coroutine: the core call is awaited on the worker's one pipelined core
connection (workers.corelink), so a call that parks in the core (`may_wait`) holds nothing but
a place in `http_max_parked` (workers.limits).

This is every request's path, so a responder does only the work its request needs: no
query parsing without a query string, no path typing without path fields, the body read
straight from the server's input (bounded by Content-Length), and the reply encoded by one
JSON encoder made once (`dumps`) rather than through Falcon's media handler lookup.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import falcon
from falcon.asgi import Request, Response

from pdcore.errors import OpError
from pdcore.fastjson import encoder
from pdcore.ops.schema import Op, Route, coerce_text_args, loads_json
from workers.corelink import reply_timeout
from workers.guard import refuse_unauthenticated, unescape_param
from workers.limits import Limits

PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(:[^{}]+)?\}$")  # {name} or {name:converter}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_METHODS = frozenset({"GET", "HEAD"})
PASSTHROUGH_QUERY = ("agentId",)  # accepted on any route: names the calling agent to the core

# op name -> renderer(req, resp, result) returning True when it wrote the response itself.
Renderer = Callable[[Request, Response, dict], bool]


def jsonable(value: Any) -> Any:
    """JSON fallback for values MessagePack can carry but JSON cannot."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


# One encoder for every JSON reply, built once (json.dumps builds one per call).
dumps: Callable[[Any], str] = encoder(default=jsonable, ensure_ascii=False)


class Core(Protocol):
    """What a responder needs from the core link (workers.corelink.CoreClient or a fake)."""

    async def call(self, action: str, args: dict[str, Any], *, idempotent: bool = False,
                   timeout_s: float | None = None) -> dict: ...


def router_template(path: str) -> tuple[str, dict[str, str]]:
    """Name path fields by position so routes from different ops never conflict in Falcon.

    `/agents/{id}/inbox/{messageId}` -> (`/agents/{p2}/inbox/{p4}`, {"p2": "id", "p4": "messageId"}).
    Falcon refuses two differently named fields at the same level (`/agents/{id}` beside
    `/agents/{agentId}/inbox`); the catalogue's names are restored per responder.
    """
    names: dict[str, str] = {}
    segments = path.split("/")
    for i, segment in enumerate(segments):
        match = PARAM_RE.match(segment)
        if match:
            names[f"p{i}"] = match.group(1)
            segments[i] = f"{{p{i}{match.group(2) or ''}}}"
        elif "{" in segment or "}" in segment:
            raise ValueError(f"route {path!r}: only whole-segment fields like {{name}} are supported")
    return "/".join(segments), names


async def read_json_object(req: Request, max_body: int) -> dict:
    """The request body as a JSON object ({} when empty); 400 `invalid_json` otherwise."""
    length = req.content_length
    if length:
        data = await req.stream.read(min(length, max_body + 1))
    elif "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
        data = await req.stream.read(max_body + 1)
    else:
        return {}
    if len(data) > max_body:
        raise OpError("too_large", f"request body is over the {max_body}-byte limit (http_max_body)", "body")
    if not data.strip():
        return {}
    try:
        obj = loads_json(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OpError("invalid_json", f"request body is not valid JSON: {exc}", "body") from None
    except RecursionError:
        raise OpError("invalid_json", "request body is nested too deeply to read", "body") from None
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")
        raise OpError("invalid_json", f"request body must be a JSON object ({{...}}), not {kind}", "body")
    return obj


def query_args(op: Op, req: Request) -> dict[str, Any]:
    """Query parameters named by the op (typed by its schema); blank values mean absent."""
    if not req.query_string:
        return {}
    params = {k: v for k, v in req.params.items() if v not in ("", [])}
    args = coerce_text_args(op, params)
    for key in PASSTHROUGH_QUERY:
        if key in params and key not in args:
            value = params[key]
            args[key] = value[-1] if isinstance(value, list) else value
    return args


@dataclass
class Endpoint:
    """One (op, route) pair: the responder Falcon calls for that method on that path."""

    op: Op
    route: Route
    fields: dict[str, str]  # router field name -> the op's argument name
    core: Core
    limits: Limits
    max_body: int
    renderer: Renderer | None = None

    def __post_init__(self) -> None:
        self.arg_names = frozenset(a.name for a in self.op.args)
        self.body_keys = self.arg_names | frozenset(PASSTHROUGH_QUERY)
        self.takes_owner = self.op.actor == "owner"  # the ops whose owner names the caller (locks)
        self.method = self.route.method.upper()
        self.has_body = self.method in BODY_METHODS
        self.idempotent = self.method in READ_METHODS
        self.may_park = self.op.parks
        self.runs_commands = self.op.runs_commands
        self.what = f"{self.route.method} {self.route.path}"

    async def arguments(self, req: Request, params: dict[str, Any]) -> dict[str, Any]:
        args = query_args(self.op, req)
        header_agent = req.get_header("X-Agent-ID")
        if header_agent:  # 3.7 clients name the calling agent in a header
            args.setdefault("agentId", header_agent)
        if self.has_body:
            body = await read_json_object(req, self.max_body)
            if body:
                # Only the op's arguments (and agentId) travel to the core: unknown keys are
                # ignored anyway, and one the frame cannot carry must not fail the request.
                known = self.body_keys
                body = {k: v for k, v in body.items() if k in known}
                if args:
                    args.update(body)
                else:
                    args = body
        if header_agent and self.takes_owner and "owner" not in args:
            args["owner"] = header_agent  # 3.7: a lock's owner is owner, then X-Agent-Id, then agentId
        if params:
            path = {self.fields.get(k, k): unescape_param(v) if isinstance(v, str) else v for k, v in params.items()}
            typed = coerce_text_args(self.op, path)
            args.update({k: typed.get(k, v) for k, v in path.items()})
        return args

    def may_wait(self, args: dict[str, Any]) -> bool:
        """True when this call may park in the core: an op that parks, asked to wait.

        `wait` is opt-in (lock acquire, tuple take: no wait, no parking); an op without a
        `wait` argument (long-poll, whose `timeout` has a default) always may.
        """
        if not self.op.parks:
            return False
        if "wait" in self.arg_names and "timeout" not in self.arg_names:
            wait = args.get("wait")
            return isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0
        return True

    async def __call__(self, req: Request, resp: Response, **params: Any) -> None:
        try:
            await self.serve(req, resp, params)
        except OpError as ex:
            ex.code37 = self.route.code37(ex.code)  # app.handle_op_error writes 3.7's code, ours in `reason`
            raise

    async def serve(self, req: Request, resp: Response, params: dict[str, Any]) -> None:
        if self.runs_commands:
            refuse_unauthenticated(req.context.get("caller", ""), self.what)
        args = await self.arguments(req, params)
        if self.may_park and self.may_wait(args):
            timeout_s = reply_timeout(args, parks=True)
            with self.limits.parked.held(self.what):
                result = await self.core.call(self.op.name, args, idempotent=self.idempotent, timeout_s=timeout_s)
        else:
            result = await self.core.call(self.op.name, args, idempotent=self.idempotent)
        if self.renderer is not None and self.renderer(req, resp, result):
            return
        resp.status = self.route.status
        body: dict[str, Any] = {"success": True}
        body.update(result)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps(body).encode()


class OpResource:
    """All methods of one router template; `on_<method>` attributes are Endpoints."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.methods: dict[str, Endpoint] = {}

    def add(self, endpoint: Endpoint) -> None:
        method = endpoint.route.method.upper()
        if method in self.methods:
            other = self.methods[method].op.name
            raise ValueError(f"{method} {endpoint.route.path} is routed to both {other} and {endpoint.op.name}")
        self.methods[method] = endpoint
        setattr(self, f"on_{method.lower()}", endpoint)


def build_resources(ops: Iterable[Op], core: Core, limits: Limits, max_body: int,
                    renderers: dict[str, Renderer], skip: set[tuple[str, str]]) -> dict[str, OpResource]:
    """Resources keyed by router template, for every route of every op except `skip`."""
    resources: dict[str, OpResource] = {}
    for op in ops:
        for route in op.routes:
            template, fields = router_template(route.path)
            if (route.method.upper(), template) in skip:
                continue
            resource = resources.setdefault(template, OpResource(template))
            resource.add(Endpoint(op, route, fields, core, limits, max_body, renderers.get(op.name)))
    return resources
