"""Webhooks (SPEC.md §7): POST a signed JSON body to a URL when an event happens.

The core never waits on the network: an event queues a delivery (a durable row), a timer
starts each attempt, and the HTTP POST itself runs through `root.offload` on a worker thread;
its outcome comes back to the core, which records it and, on failure, schedules the next
attempt with exponential backoff. Targets that are, or resolve to, loopback, private,
link-local, multicast or cloud-metadata addresses are refused (SSRF) unless their host is in
`webhook_allow_hosts`; the check runs after DNS resolution and the connection is pinned to the
address that was checked, so a name cannot be re-pointed between the check and the POST.
The delivery log is bounded per webhook.

Secrets are sealed at rest (AES-256-GCM under `master.key`, `pdcore.crypto`, bound to the
webhook id): only the sealed form reaches SQL; the Webhook keeps the plaintext in memory to sign.
Rows written in plaintext by an older daemon are sealed when loaded. A secret that does not open
(another key, a tampered row) is logged and the hook kept, but each of its deliveries fails at
once with the reason in its deliveries list: never sent unsigned, and fixed by setting a new
secret (`webhook.update`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import re
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pdcore.crypto import NoteCipher
from pdcore.errors import OpError
from pdcore.state.base import Ctx, Park, Primitive

SIGNATURE_HEADER = "X-PortDaddy-Signature"
RESPONSE_BODY_MAX = 1000

# A sealed secret is stored as a BLOB: SEAL_VERSION + nonce + ciphertext-with-tag. Plaintext
# secrets (older daemons) were only ever bound as str, so SQLite holds them as TEXT: the storage
# class tells the two apart with no marker a plaintext secret could collide with, and no new
# column or migration to keep in step. The version byte leaves room for another sealing later.
SEAL_VERSION = b"\x01"
_SECRET_AD = b"pd-webhook-secret-v1\x00"
SECRET_UNREADABLE = ("the webhook secret stored in state.db cannot be opened with this master key (another key, "
                     "or a tampered row); the delivery was not sent unsigned: set a new secret with webhook update")

log = logging.getLogger("pd.webhooks")

# Events Port Daddy emits (activity types, plus message.publish and webhook.test). Webhooks may
# also name any other dotted event, `<category>.*`, or `*`.
KNOWN_EVENTS = (
    "service.claim", "service.release", "service.endpoint",
    "agent.register", "agent.unregister", "agent.stale", "agent.dead",
    "session.start", "session.end", "salvage.queue", "salvage.claim",
    "lock.acquire", "lock.release",
    "message.publish", "inbox.send",
    "integration.ready", "integration.needs",
    "daemon.start", "daemon.stop", "webhook.test",
)
_EVENT_RE = re.compile(r"^(\*|[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*(\.\*)?)$")
_METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, DigitalOcean, ...
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
}
_LOCAL_NAMES = ("localhost", "metadata", "metadata.google.internal")


class TargetRefused(Exception):
    """The webhook's URL is, or resolves to, an address webhooks must not reach (SSRF)."""


class SecretUnreadable(Exception):
    """The hook has a secret that cannot be opened, so its deliveries cannot be signed."""


def seal_secret(cipher: NoteCipher, webhook_id: str, secret: str) -> bytes:
    """The stored form of a webhook secret: opens only under this key and for this webhook id."""
    return SEAL_VERSION + cipher.seal(_SECRET_AD + webhook_id.encode(), secret)


def open_secret(cipher: NoteCipher, webhook_id: str, sealed: bytes) -> str | None:
    """The secret stored by `seal_secret` for this webhook id, or None when it does not open."""
    if not sealed.startswith(SEAL_VERSION):
        return None
    return cipher.unseal(_SECRET_AD + webhook_id.encode(), sealed[len(SEAL_VERSION):])


def address_refusal(address: str) -> str | None:
    """Why an IP address is not a fit webhook target, or None when it is a public address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


def numeric_ipv4(host: str) -> str | None:
    """The dotted form of a numeric IPv4 host the resolver reads without DNS, else None.

    `127.1`, `2130706433`, `0x7f000001` and `0177.0.0.1` are all 127.0.0.1 to getaddrinfo
    (inet_aton's classic forms: 1-4 parts, decimal, octal or hex), so registration must judge
    them as that address, not as a name left for delivery.
    """
    if not host or not all(c in "0123456789abcdefx." for c in host):
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def host_refusal(host: str) -> str | None:
    """The check possible without DNS (at registration): IP literals (any numeric IPv4 form) and local names."""
    host = host.lower().rstrip(".")
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return "a local name"
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        dotted = numeric_ipv4(host)
        if dotted is None:
            return None
        why = address_refusal(dotted)
        return f"which is {dotted}, {why}" if why else None
    return address_refusal(host.strip("[]"))


def sign(body: bytes, secret: str) -> str:
    """The signature header value: `sha256=` + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could lead anywhere (past the SSRF check): treat it as the answer."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _pinned(conn_class: type, address: str) -> Callable[..., http.client.HTTPConnection]:
    def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        conn = conn_class(host, **kwargs)
        conn._create_connection = lambda addr, timeout=None, source=None: socket.create_connection(  # type: ignore[attr-defined]
            (address, addr[1]), timeout, source)
        return conn
    return make


class _PinnedHTTP(urllib.request.HTTPHandler):
    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_pinned(http.client.HTTPConnection, self.address), req)


class _PinnedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_pinned(http.client.HTTPSConnection, self.address), req, context=self._context)


def post_webhook(url: str, body: bytes, headers: dict[str, str], timeout: float,
                 allow_hosts: frozenset[str]) -> tuple[int, str]:
    """POST `body` to `url` (blocking: run it off the core's thread); return (status, response text).

    Resolves the host, refuses non-public addresses unless the host is allowed, then connects
    to the address it checked. No proxies, no redirects.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise OSError(f"{host} did not resolve")
    allowed = host.lower() in allow_hosts
    if not allowed:
        for address in addresses:
            if address in allow_hosts:
                continue
            why = address_refusal(address)
            if why:
                raise TargetRefused(f"{host} resolves to {address}, {why}; webhooks may not target it "
                                    "(add the host to webhook_allow_hosts to allow it)")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                         _PinnedHTTP(addresses[0]), _PinnedHTTPS(addresses[0]))
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status, resp.read(RESPONSE_BODY_MAX).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        text = exc.read(RESPONSE_BODY_MAX).decode("utf-8", "replace") if exc.fp else ""
        exc.close()
        return exc.code, text


Transport = Callable[[str, bytes, dict, float, frozenset], tuple[int, str]]


class Webhook:
    """A registered webhook. `secret` is the plaintext (memory only), `sealed` its stored form."""

    __slots__ = ("id", "url", "secret", "sealed", "events", "filter_pattern", "active", "metadata",
                 "created_at", "updated_at", "last_triggered", "success_count", "failure_count")

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    @property
    def secret_error(self) -> str | None:
        """Why the stored secret cannot sign (it did not open), or None."""
        return SECRET_UNREADABLE if self.sealed is not None and self.secret is None else None

    def matches(self, event: str, target: str | None) -> bool:
        if not self.active:
            return False
        if not any(e == "*" or e == event or (e.endswith(".*") and event.startswith(e[:-1])) for e in self.events):
            return False
        return not (self.filter_pattern and target is not None and not fnmatch.fnmatchcase(target, self.filter_pattern))

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "url": self.url,
            "hasSecret": self.sealed is not None,
            "secretError": self.secret_error,
            "events": list(self.events),
            "filterPattern": self.filter_pattern,
            "active": bool(self.active),
            "metadata": self.metadata,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "lastTriggered": self.last_triggered,
            "successCount": self.success_count,
            "failureCount": self.failure_count,
        }


class Pending:
    """A delivery not yet finished: what to send and how many times it was tried."""

    __slots__ = ("id", "webhook_id", "event", "body", "attempts", "timer", "in_flight")

    def __init__(self, id: str, webhook_id: str, event: str, body: bytes, attempts: int = 0) -> None:
        self.id = id
        self.webhook_id = webhook_id
        self.event = event
        self.body = body
        self.attempts = attempts
        self.timer: Any = None
        self.in_flight = False


class Webhooks(Primitive):
    name = "webhooks"
    load_order = 60

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.hooks: dict[str, Webhook] = {}
        self.pending: dict[str, Pending] = {}
        self.tests: dict[str, dict] = {}
        self.dropped = 0
        self.transport: Transport = post_webhook  # tests replace it
        self._logged: dict[str, int] = {}
        self._exact: set[str] = set()
        self._prefixes: tuple[str, ...] = ()
        self._any = False

    # -- loading ---------------------------------------------------------------------------
    def load(self, now: int) -> None:
        legacy: list[Webhook] = []
        for r in self.store.read(
                "SELECT id, url, secret, events, filter_pattern, active, metadata, created_at, updated_at, "
                "last_triggered, success_count, failure_count FROM webhooks"):
            hook = self.hooks[r[0]] = Webhook(
                id=r[0], url=r[1], events=json.loads(r[3]), filter_pattern=r[4], active=bool(r[5]),
                metadata=json.loads(r[6]) if r[6] else None, created_at=r[7], updated_at=r[8], last_triggered=r[9],
                success_count=r[10], failure_count=r[11])
            if isinstance(r[2], str):  # plaintext, written before secrets were sealed
                self._set_secret(hook, r[2] or None)
                legacy.append(hook)
            elif r[2] is not None:
                self._open_stored(hook, r[2])
        if legacy:
            self._seal_legacy(legacy)
        self._reindex()
        for did, wid, event, payload, attempts, next_at in self.store.read(
                "SELECT id, webhook_id, event, payload, attempts, next_attempt_at FROM webhook_deliveries "
                "WHERE status IN ('pending', 'retrying') ORDER BY seq"):
            if wid not in self.hooks or event == "webhook.test":
                self.store.write("UPDATE webhook_deliveries SET status = 'cancelled', next_attempt_at = NULL "
                                 "WHERE id = ?", (did,))
                continue
            p = self.pending[did] = Pending(did, wid, event, payload.encode(), attempts)
            p.timer = self.root.timers.add(max(now, next_at or now), self._attempt, did)

    def counts(self) -> dict[str, int]:
        return {"webhooks": len(self.hooks), "webhook_pending": len(self.pending)}

    def _reindex(self) -> None:
        events = [e for h in self.hooks.values() if h.active for e in h.events]
        self._any = "*" in events
        self._exact = {e for e in events if not e.endswith("*")}
        self._prefixes = tuple(e[:-1] for e in events if e.endswith(".*"))

    def wants(self, event: str) -> bool:
        """Cheap: does any active webhook subscribe to `event`? (called on hot paths)"""
        return self._any or event in self._exact or (bool(self._prefixes) and event.startswith(self._prefixes))

    # -- validation ------------------------------------------------------------------------
    def _check_url(self, url: str) -> str:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise OpError("invalid_argument", "url must be an http:// or https:// URL", "url") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OpError("invalid_argument", "url must be an http:// or https:// URL with a host", "url")
        if parts.username or parts.password:
            raise OpError("invalid_argument", "url must not carry credentials; use secret to sign deliveries", "url")
        host = parts.hostname.lower()
        if host not in self._allow_hosts():
            why = host_refusal(host)
            if why:
                raise OpError("webhook_target_refused",
                              f"url points at {host}, {why}; webhooks may not target it (add the host to "
                              "webhook_allow_hosts to allow it)", "url")
        return url

    def _allow_hosts(self) -> frozenset[str]:
        return frozenset(str(h).lower() for h in self.config.webhook_allow_hosts)

    @staticmethod
    def _check_events(events: list | None) -> list[str]:
        if events is None:
            return ["*"]
        if not events:
            raise OpError("invalid_argument", "events must name at least one event, or be left out for all", "events")
        for e in events:
            if not isinstance(e, str) or not _EVENT_RE.match(e):
                raise OpError("invalid_argument", f"events: {e!r} is not an event name like lock.acquire, lock.* "
                                                  "or * (see GET /webhooks/events)", "events")
        return sorted(set(events))

    def _cipher(self) -> NoteCipher:
        cipher = self.root.notes.cipher  # loaded first (notes.load_order < ours), from master.key
        if cipher is None:
            raise RuntimeError("webhook secrets need the master key: notes must load before webhooks")
        return cipher

    def _set_secret(self, hook: Webhook, secret: str | None) -> None:
        """Give the hook a new secret (None: none), sealed for storage; `_save_hook` stores it."""
        hook.secret = secret
        hook.sealed = seal_secret(self._cipher(), hook.id, secret) if secret else None

    def _open_stored(self, hook: Webhook, sealed: Any) -> None:
        """Open a stored secret; if it does not open, keep it as stored and mark the hook unable to sign."""
        hook.sealed = sealed
        hook.secret = open_secret(self._cipher(), hook.id, sealed)
        if hook.secret is None:
            log.error("event=webhook.secret_unreadable id=%s url=%s", hook.id, hook.url)

    def _seal_legacy(self, hooks: list[Webhook]) -> None:
        """Replace plaintext secrets in the database with their sealed form, once, in the load transaction.

        secure_delete makes SQLite zero the freed plaintext cells instead of leaving them in the page.
        """
        db = self.store.db
        before = db.execute("PRAGMA secure_delete").fetchone()[0]
        db.execute("PRAGMA secure_delete = ON")
        try:
            for hook in hooks:
                self.store.write("UPDATE webhooks SET secret = ? WHERE id = ?", (hook.sealed, hook.id))
        finally:
            db.execute(f"PRAGMA secure_delete = {int(before)}")
        log.info("event=webhook.secrets_sealed count=%d", len(hooks))

    def _hook(self, id: str) -> Webhook:
        hook = self.hooks.get(id)
        if hook is None:
            raise OpError("not_found", f"no webhook {id}", "id")
        return hook

    def _save_hook(self, hook: Webhook) -> None:
        self.store.write(
            "INSERT INTO webhooks (id, url, secret, events, filter_pattern, active, metadata, created_at, updated_at, "
            "last_triggered, success_count, failure_count) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET url=excluded.url, secret=excluded.secret, events=excluded.events, "
            "filter_pattern=excluded.filter_pattern, active=excluded.active, metadata=excluded.metadata, "
            "updated_at=excluded.updated_at",
            (hook.id, hook.url, hook.sealed, json.dumps(hook.events), hook.filter_pattern, int(hook.active),
             json.dumps(hook.metadata) if hook.metadata else None, hook.created_at, hook.updated_at,
             hook.last_triggered, hook.success_count, hook.failure_count),
        )

    # -- operations ------------------------------------------------------------------------
    def register(self, ctx: Ctx, url: str, events: list | None = None, secret: str | None = None,
                 filterPattern: str | None = None, metadata: dict | None = None) -> dict:
        self._check_url(url)
        events = self._check_events(events)
        if len(self.hooks) >= self.config.webhook_max:
            raise OpError("webhook_limit", f"{self.config.webhook_max} webhooks are registered already "
                                           "(webhook_max); delete one first", "url")
        hook = Webhook(id=uuid.uuid4().hex, url=url, events=events,
                       filter_pattern=filterPattern, active=True, metadata=metadata, created_at=ctx.now,
                       updated_at=ctx.now, last_triggered=None, success_count=0, failure_count=0)
        self._set_secret(hook, secret or None)
        self.hooks[hook.id] = hook
        self._save_hook(hook)
        self._reindex()
        self.root.activity.record(ctx, "webhook.register", hook.id, url=url)
        return {"id": hook.id, "url": url, "events": events, "webhook": hook.to_dict(), "message": "webhook registered"}

    def list(self, ctx: Ctx, active: bool | None = None) -> dict:
        hooks = sorted(self.hooks.values(), key=lambda h: h.created_at, reverse=True)
        if active is not None:
            hooks = [h for h in hooks if h.active == active]
        return {"webhooks": [h.to_dict() for h in hooks], "count": len(hooks)}

    def get(self, ctx: Ctx, id: str) -> dict:
        return {"webhook": self._hook(id).to_dict()}

    def update(self, ctx: Ctx, id: str, url: str | None = None, events: list | None = None, secret: str | None = None,
               filterPattern: str | None = None, active: bool | None = None, metadata: dict | None = None) -> dict:
        hook = self._hook(id)
        if url is not None:
            self._check_url(url)
        if events is not None:
            events = self._check_events(events)
        if url is not None:
            hook.url = url
        if events is not None:
            hook.events = events
        if secret is not None:
            self._set_secret(hook, secret or None)  # "" removes the secret
        if filterPattern is not None:
            hook.filter_pattern = filterPattern or None
        if active is not None:
            hook.active = active
        if metadata is not None:
            hook.metadata = metadata
        hook.updated_at = ctx.now
        self._save_hook(hook)
        self._reindex()
        return {"webhook": hook.to_dict(), "message": "webhook updated"}

    def delete(self, ctx: Ctx, id: str) -> dict:
        self._hook(id)
        del self.hooks[id]
        for p in [p for p in self.pending.values() if p.webhook_id == id]:
            if p.timer is not None:
                p.timer.cancel()
            del self.pending[p.id]
        self.tests.pop(id, None)
        self._logged.pop(id, None)
        self.store.write("DELETE FROM webhooks WHERE id = ?", (id,))
        self.store.write("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (id,))
        self._reindex()
        self.root.activity.record(ctx, "webhook.delete", id)
        return {"id": id, "deleted": True}

    def deliveries(self, ctx: Ctx, id: str, limit: int = 50, status: str | None = None) -> dict:
        self._hook(id)
        sql = ("SELECT id, event, status, attempts, last_attempt, next_attempt_at, response_status, response_body, "
               "error, created_at FROM webhook_deliveries WHERE webhook_id = ?")
        params: list[Any] = [id]
        if status:
            sql += " AND status = ?"
            params.append(status)
        rows = self.store.read(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit))
        out = [{"id": r[0], "event": r[1], "status": r[2], "attempts": r[3], "lastAttempt": r[4], "nextAttemptAt": r[5],
                "responseStatus": r[6], "responseBody": r[7], "error": r[8], "createdAt": r[9]} for r in rows]
        return {"deliveries": out, "count": len(out)}

    def events(self, ctx: Ctx) -> dict:
        return {"events": list(KNOWN_EVENTS), "wildcards": ["*", "<category>.*"]}

    def test(self, ctx: Ctx, id: str) -> dict | Park:
        """Send a `webhook.test` delivery now and answer with its outcome (parks until it is known)."""
        hook = self._hook(id)
        run = self.tests.get(id)
        if not ctx.retry and (run is None or run["done"]):
            run = self.tests[id] = {"done": False, "result": None}
            body = self._body("webhook.test", ctx.now, {"message": "This is a test delivery from Port Daddy",
                                                        "webhookId": id}, None)
            pending = Pending(uuid.uuid4().hex, id, "webhook.test", body)
            self._log(ctx.now, pending)
            self._send(hook, pending, test_run=run)
        if run is not None and run["done"]:
            return run["result"]
        wait = int(self.config.webhook_timeout_s * 1000) * 2 + 1000
        return Park(keys=(("webhook.test", id),), deadline=ctx.now + wait,
                    on_timeout={"delivered": False, "status": None, "error": "the test delivery did not finish in time"})

    # -- events and deliveries -------------------------------------------------------------
    def on_event(self, ctx: Ctx, type: str, payload: dict | None = None, target: str | None = None) -> int:
        """Queue a delivery of event `type` to every webhook subscribed to it; return how many.

        Called for every activity record (`on_activity`) and by primitives for events that are
        not activity records (message.publish).
        """
        if not self.wants(type):
            return 0
        hooks = [h for h in self.hooks.values() if h.matches(type, target)]
        for hook in hooks:
            if len(self.pending) >= self.config.webhook_pending_max:
                self.dropped += 1
                continue
            pending = Pending(uuid.uuid4().hex, hook.id, type, self._body(type, ctx.now, payload or {}, target))
            self._log(ctx.now, pending)
            self.pending[pending.id] = pending
            pending.timer = self.root.timers.add(ctx.now, self._attempt, pending.id)
        return len(hooks)

    def on_activity(self, ctx: Ctx, type: str, target: str | None, details: dict | None) -> None:
        """Every activity record is an event webhooks may subscribe to (hook called by Activity.record)."""
        if self.wants(type) and not type.startswith("webhook."):  # managing webhooks is not an event for them
            self.on_event(ctx, type, {"agentId": ctx.agent_id, **(details or {})}, target=target)

    @staticmethod
    def _body(event: str, now: int, data: dict, target: str | None) -> bytes:
        body = {"event": event, "timestamp": now, "target": target, "data": data}
        return json.dumps(body, separators=(",", ":"), default=str).encode()

    def _log(self, now: int, p: Pending) -> None:
        self.store.write(
            "INSERT INTO webhook_deliveries (id, webhook_id, event, payload, status, attempts, next_attempt_at, "
            "created_at) VALUES (?,?,?,?,'pending',0,?,?)",
            (p.id, p.webhook_id, p.event, p.body.decode(), now, now),
        )
        logged = self._logged.get(p.webhook_id, 0) + 1
        keep = self.config.webhook_delivery_log_max
        if logged >= max(10, keep // 10):
            logged = 0
            self.store.write(
                "DELETE FROM webhook_deliveries WHERE webhook_id = ? AND status NOT IN ('pending', 'retrying') AND "
                "seq <= (SELECT seq FROM webhook_deliveries WHERE webhook_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (p.webhook_id, p.webhook_id, keep),
            )
        self._logged[p.webhook_id] = logged

    def _attempt(self, delivery_id: str) -> None:
        p = self.pending.get(delivery_id)
        if p is None or p.in_flight:
            return
        p.timer = None
        hook = self.hooks.get(p.webhook_id)
        if hook is None or not hook.active:
            del self.pending[delivery_id]
            self.store.write("UPDATE webhook_deliveries SET status = 'cancelled', next_attempt_at = NULL WHERE id = ?",
                             (delivery_id,))
            return
        self._send(hook, p)

    def _send(self, hook: Webhook, p: Pending, test_run: dict | None = None) -> None:
        p.attempts += 1
        p.in_flight = True
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "port-daddy-webhooks",
            "X-PortDaddy-Event": p.event,
            "X-PortDaddy-Delivery": p.id,
            "X-PortDaddy-Attempt": str(p.attempts),
        }
        if hook.secret:
            headers[SIGNATURE_HEADER] = sign(p.body, hook.secret)
        elif hook.secret_error:  # it has a secret we cannot open: fail now rather than send unsigned
            self._attempted(p, None, SecretUnreadable(SECRET_UNREADABLE), test_run)
            return
        url, body, timeout, allow, transport = hook.url, p.body, self.config.webhook_timeout_s, self._allow_hosts(), \
            self.transport
        self.root.offload(lambda: transport(url, body, headers, timeout, allow),
                          lambda result, error: self._attempted(p, result, error, test_run))

    def _attempted(self, p: Pending, result: tuple[int, str] | None, error: BaseException | None,
                   test_run: dict | None) -> None:
        """Back on the core: record one attempt's outcome; retry later, or finish."""
        p.in_flight = False
        now = self.root.clock()
        status_code, text = result if result is not None else (None, None)
        ok = error is None and status_code is not None and 200 <= status_code < 300
        refused = isinstance(error, TargetRefused)
        unsignable = isinstance(error, SecretUnreadable)  # no retry can sign it
        err_text = None if error is None else (str(error) or type(error).__name__)[:RESPONSE_BODY_MAX]
        if ok:
            status, next_at = "delivered", None
        elif refused or unsignable or test_run is not None or p.attempts >= self.config.webhook_max_attempts:
            status, next_at = ("refused" if refused else "failed"), None
        else:
            delay = min(self.config.webhook_retry_max_ms, self.config.webhook_retry_base_ms * 2 ** (p.attempts - 1))
            status, next_at = "retrying", now + delay
        self.store.write(
            "UPDATE webhook_deliveries SET status=?, attempts=?, last_attempt=?, next_attempt_at=?, response_status=?, "
            "response_body=?, error=? WHERE id=?",
            (status, p.attempts, now, next_at, status_code, text, err_text, p.id),
        )
        hook = self.hooks.get(p.webhook_id)
        if status != "retrying" and hook is not None:
            hook.last_triggered = now
            if ok:
                hook.success_count += 1
            else:
                hook.failure_count += 1
            self.store.write("UPDATE webhooks SET last_triggered=?, success_count=?, failure_count=? WHERE id=?",
                             (now, hook.success_count, hook.failure_count, hook.id))
        if test_run is not None:
            test_run["done"] = True
            test_run["result"] = {"delivered": ok, "status": status_code, "body": text, "error": err_text,
                                  "deliveryId": p.id}
            self.root.wake(("webhook.test", p.webhook_id))
            return
        if status == "retrying" and p.id in self.pending:
            p.timer = self.root.timers.add(next_at, self._attempt, p.id)
        else:
            self.pending.pop(p.id, None)


PRIMITIVE = Webhooks
