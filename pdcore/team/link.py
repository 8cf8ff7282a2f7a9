"""The core's link to the team's NATS server: nats-py on the core's own uvloop loop.

The link connects in the background and reconnects by itself (forever, every
`team_reconnect_wait_ms`); it creates or opens the space's buckets and streams on every
(re)connect, keeps one watch per bucket that asked for it, and writes this host's heartbeat.
Another host is alive while new heartbeats of it keep arriving here, timed on this host's
monotonic clock (the `ts` it writes is its own clock's, which may be off).

How a primitive plugs in (see docs/team.md, "Adding a shared primitive"):

- declare its bucket or stream in `pdcore/team/space.py` (join and the link create it);
- define `on_team_link(link)` on the primitive: the core calls it once, before the link
  connects; keep `link`, and call `link.watch(short, on_change)` to follow a bucket:
  `on_change(key, revision, value | None)` runs on the core's thread for the latest value of
  every key, then every change (None: deleted, purged or expired); call `root.wake(key)` there
  to retry the calls parked on it; or `link.follow(short, on_open, on_message)` to follow a
  stream (a local mirror fed by an ordered consumer; `await link.applied(short, seq)` waits
  until the mirror has seen `seq`, so a host reads its own acknowledged writes);
- in a handler, return `link.call(fn, *args, then=...)`: `fn(*args)` is a coroutine doing the
  JetStream work (`link.js`, `link.buckets[short]`); the call is parked in the core until it
  resolves, then `then(result)` runs on the core's thread and answers like a handler (dict,
  Park, another Await, or OpError). When NATS is unreachable the call fails at once, and one
  not acknowledged within `team_op_timeout_ms` fails, with `team_unavailable`: never a local
  answer. `link.spawn(fn, *args)` runs one nobody waits for (a release on disconnect).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from pdcore import __version__
from pdcore.config import Config
from pdcore.errors import OpError
from pdcore.state.base import Await
from pdcore.team.space import BUCKETS, HOSTS, STREAMS, bucket_name, open_space, stream_name
from pdcore.team.takes import TakeIndex

OnOpen = Callable[[int], int]  # (the stream's last sequence now) -> the sequence to follow from (1: all)
OnMessage = Callable[[int, str, bytes, dict], None]  # (sequence, subject, data, headers)

log = logging.getLogger("pd.team")

KV_MARKER_REASON = "Nats-Marker-Reason"
KV_OPERATION = "KV-Operation"


def team_unavailable(why: str) -> OpError:
    return OpError("team_unavailable", f"the team's NATS server is not reachable or did not acknowledge ({why}); "
                                       "team operations fail until it is back (pd team status)")


STREAM_FULL = 10077  # JetStream: a stream with discard NEW is at its limit ("maximum bytes exceeded")


def stream_full(err: BaseException) -> bool:
    """True when a publish was refused because the stream is at its byte cap (discard NEW)."""
    return isinstance(err, nats.js.errors.APIError) and err.err_code == STREAM_FULL


def team_full(what: str, setting: str, limit: int, more: str) -> OpError:
    return OpError("team_full", f"the team's {what} stream is full ({setting} = {limit} bytes): {more}")


def host_id(config: Config) -> str:
    """This host's id in the team: the setting, else one made from the hostname once and kept in the home."""
    if config.team_host_id:
        return config.team_host_id
    path = config.home / "team.host"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    base = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:40] or "host"
    made = f"{base}-{secrets.token_hex(3)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(made + "\n")
    return made


def ttl_seconds(ms: int) -> int:
    """A server-side TTL: whole seconds (what JetStream takes), at least 1."""
    return max(1, math.ceil(ms / 1000))


async def stream_subjects(nc: Any, stream: str, subjects_filter: str, timeout_s: float) -> AsyncIterator[str]:
    """Every subject of `stream` matching the filter, page by page: the server answers a stream info with
    at most one page of subjects (100,000), and nats-py's stream_info reads only the first."""
    offset = 0
    while True:
        request = json.dumps({"subjects_filter": subjects_filter, "offset": offset}).encode()
        info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", request, timeout=timeout_s)).data)
        if "error" in info:
            raise nats.js.errors.APIError.from_error(info["error"])
        subjects = (info.get("state") or {}).get("subjects") or {}
        for subject in subjects:
            yield subject
        offset += len(subjects)
        if not subjects or offset >= int(info.get("total") or 0):
            return


class Follower:
    """A stream followed into a local mirror: its callbacks and how far the mirror has got."""

    def __init__(self, short: str, on_open: OnOpen, on_message: OnMessage) -> None:
        self.short = short
        self.on_open = on_open
        self.on_message = on_message
        self.applied = 0  # the last sequence the mirror applied
        self.waiting: list[tuple[int, asyncio.Future]] = []  # (sequence, future) of `TeamLink.applied` calls
        self.caught_up: asyncio.Event | None = None  # set once the mirror holds what the stream held at open

    def advance(self, seq: int) -> None:
        self.applied = max(self.applied, seq)
        if self.waiting:
            still = []
            for want, fut in self.waiting:
                if want <= self.applied:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((want, fut))
            self.waiting = still


class ParkedKeys:
    """The wake keys calls of this host parked on, with their latest deadline: when the link goes
    down they are all woken, so the calls retry and fail with team_unavailable rather than wait
    blind. Keys whose waits are over are dropped as the set grows, so it stays bounded."""

    def __init__(self) -> None:
        self.deadlines: dict[Any, int] = {}
        self._prune_at = 1024

    def add(self, keys: tuple, deadline: int, now: int) -> None:
        for key in keys:
            if self.deadlines.get(key, 0) < deadline:
                self.deadlines[key] = deadline
        if len(self.deadlines) > self._prune_at:
            self.deadlines = {k: d for k, d in self.deadlines.items() if d > now}
            self._prune_at = max(1024, 2 * len(self.deadlines))

    def wake_all(self, root: Any) -> None:
        for key in self.deadlines:
            root.wake(key)
        self.deadlines = {}


def connect_options(config: Config) -> dict[str, Any]:
    """nats.connect() arguments for the team settings (also used by `pd team join`)."""
    opts: dict[str, Any] = {
        "servers": list(config.team_servers),
        "connect_timeout": max(1, math.ceil(config.team_connect_timeout_ms / 1000)),
        "reconnect_time_wait": config.team_reconnect_wait_ms / 1000,
        "name": f"port-daddy {config.team_space}",
    }
    if config.team_creds:
        opts["user_credentials"] = str(config.team_creds)
    if config.team_user:
        opts["user"] = config.team_user
        opts["password"] = config.team_password
    if config.team_tls_ca or any(u.startswith("tls://") for u in config.team_servers):
        ctx = ssl.create_default_context(cafile=str(config.team_tls_ca) if config.team_tls_ca else None)
        opts["tls"] = ctx
    return opts


class TeamLink:
    """The core's connection to the team; see the module doc."""

    def __init__(self, config: Config, root: Any, loop: asyncio.AbstractEventLoop,
                 after_change: Callable[[], None]) -> None:
        self.config = config
        self.root = root
        self.loop = loop
        self.after_change = after_change  # the core's "process wakes, schedule the commit"
        self.space = config.team_space
        self.host_id = host_id(config)
        self.nc: Any = None
        self.js: Any = None
        self.ready = False  # connected, and the space's buckets and streams are open
        self.buckets: dict[str, Any] = {}  # short name -> nats KeyValue (space.BUCKETS)
        self.watchers: dict[str, Callable[[str, int, bytes | None], None]] = {}  # short name -> on_change
        self.followers: dict[str, Follower] = {}  # short stream name -> its mirror's callbacks
        self.hosts: dict[str, dict] = {}  # host id -> its last heartbeat record
        self.takes = TakeIndex(config)  # take records read off the takes' writes (tuples, salvage)
        # host id -> (revision of its last heartbeat, when this host saw that revision arrive: its own
        # monotonic clock, seconds). Liveness is judged from this, never from the `ts` another host wrote.
        self.host_seen: dict[str, tuple[int, float]] = {}
        self.last_error: str | None = None
        self.last_error_at: int | None = None
        self.connected_at: int | None = None
        self.disconnected_at: int | None = None
        self.reconnects = 0
        self.on_down: list[Callable[[], None]] = []  # called on the core's thread when the link goes down
        self.on_ready: list[Callable[[], None]] = []  # called on the core's thread each time the space is (re)opened
        self.ready_at: int | None = None  # when the space was last (re)opened
        self.ready_mono: float | None = None  # the same moment on this host's monotonic clock (seconds)
        self._watches: list[Any] = []
        self._live: dict[str, set[str]] = {}  # bucket short name -> keys its watch's copy holds
        self._tasks: set[asyncio.Task] = set()
        self._main: asyncio.Task | None = None
        self._beat: asyncio.Task | None = None
        self._setup_lock = asyncio.Lock()
        self.watch(HOSTS.short, self._host_changed)

    # -- registration (primitives, in on_team_link) ---------------------------------------------
    def watch(self, short: str, on_change: Callable[[str, int, bytes | None], None]) -> None:
        """Call `on_change(key, revision, value | None)` on the core's thread for every change of
        bucket `short` (one of space.BUCKETS), starting with the latest value of every key."""
        if not any(b.short == short for b in BUCKETS):
            raise ValueError(f"bucket {short!r} is not declared in pdcore.team.space.BUCKETS")
        self.watchers[short] = on_change

    def follow(self, short: str, on_open: OnOpen, on_message: OnMessage) -> None:
        """Mirror stream `short` (one of space.STREAMS): on every (re)open of the space `on_open(last_seq)`
        says where to start (1: from the oldest kept; it may reset the mirror first), then
        `on_message(seq, subject, data, headers)` runs on the core's thread for each message in order.
        The link is ready only once every mirror holds what its stream held when it was opened."""
        if not any(st.short == short for st in STREAMS):
            raise ValueError(f"stream {short!r} is not declared in pdcore.team.space.STREAMS")
        self.followers[short] = Follower(short, on_open, on_message)

    async def applied(self, short: str, seq: int) -> None:
        """Wait (at most team_op_timeout_ms) until the mirror of stream `short` has applied `seq`."""
        follower = self.followers[short]
        if follower.applied >= seq:
            return
        fut = self.loop.create_future()
        follower.waiting.append((seq, fut))
        try:
            await asyncio.wait_for(fut, self.config.team_op_timeout_ms / 1000)
        except TimeoutError:  # the message was removed before it reached the mirror, or the mirror lags
            pass

    def subject(self, short: str, *tokens: str) -> str:
        """A subject of stream `short` (one of space.STREAMS): pd.<space>.<short>.<tokens...>."""
        return ".".join((f"pd.{self.space}.{short}", *tokens))

    async def latest(self, short: str, key: str) -> tuple[int, dict | None]:
        """The last revision of `key` in bucket `short`, counting deletes and expiry markers, and its
        record (None: absent, deleted, expired or unreadable). What a compare-and-set goes on."""
        bucket = bucket_name(self.space, short)
        try:
            msg = await self.js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")
        except nats.js.errors.NotFoundError:
            return 0, None
        headers = msg.headers or {}
        if KV_OPERATION in headers or KV_MARKER_REASON in headers or not msg.data:
            return msg.seq, None
        try:
            return msg.seq, json.loads(msg.data)
        except ValueError:
            return msg.seq, None

    # -- calls from handlers ----------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.ready and self.nc is not None and self.nc.is_connected

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, then: Callable[[Any], Any] | None = None,
             now: int | None = None) -> Await:
        """Park the caller on `fn(*args)` (JetStream work); raise team_unavailable at once when NATS is away."""
        if not self.available:
            raise team_unavailable(self.last_error or "not connected")
        now = int(time.time() * 1000) if now is None else now
        timeout_ms = self.config.team_op_timeout_ms
        return Await(self.guard(fn(*args)), now + timeout_ms + 250, then,
                     team_unavailable(f"no answer in {timeout_ms} ms"))

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` in the background (a release nobody waits for); failures are logged."""
        if not self.available:
            log.warning("event=team.dropped what=%s reason=unavailable", getattr(fn, "__name__", fn))
            return
        task = self.loop.create_task(self.guard(fn(*args)))
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def run_forever(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a long-lived coroutine (a consumer's loop) until the link closes; it handles outages itself."""
        task = self.loop.create_task(fn(*args))
        self._tasks.add(task)

    def _background_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("event=team.background_failed error=%s", task.exception())
        self.after_change()

    async def guard(self, call: Awaitable[Any]) -> Any:
        """Bound a JetStream call by team_op_timeout_ms; any NATS failure becomes team_unavailable."""
        try:
            return await asyncio.wait_for(call, self.config.team_op_timeout_ms / 1000)
        except OpError:
            raise
        except (TimeoutError, nats.errors.TimeoutError):
            raise team_unavailable(self._failed("timeout")) from None
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            raise team_unavailable(self._failed(f"{type(exc).__name__}: {exc}".strip(": "))) from None

    def _failed(self, why: str) -> str:
        self.last_error = why
        self.last_error_at = int(time.time() * 1000)
        return why

    # -- connection -------------------------------------------------------------------------------
    def start(self) -> None:
        self._main = self.loop.create_task(self._connect())

    async def close(self) -> None:
        for task in (self._main, self._beat, *self._tasks):
            if task is not None:
                task.cancel()
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.close(), 2)
            except Exception:  # noqa: BLE001 - closing on the way out
                pass

    async def _connect(self) -> None:
        """Connect (retrying forever), then open the space. nats-py reconnects by itself after that."""
        opts = connect_options(self.config)
        while True:
            try:
                self.nc = await nats.connect(
                    **opts, allow_reconnect=True, max_reconnect_attempts=-1,
                    error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected)
                break
            except Exception as exc:  # noqa: BLE001 - any failure: say why, retry
                self._failed(f"connect: {type(exc).__name__}: {exc}")
                await asyncio.sleep(self.config.team_reconnect_wait_ms / 1000)
        self.js = self.nc.jetstream(timeout=self.config.team_op_timeout_ms / 1000)
        self.connected_at = int(time.time() * 1000)
        await self._open_space()
        self._beat = self.loop.create_task(self._heartbeats())

    async def _open_space(self) -> None:
        """Create or open the space's buckets and streams, and (re)start their watches; retried until done."""
        async with self._setup_lock:
            self.ready = False
            while self.nc is not None and not self.nc.is_closed:
                try:
                    for sub in self._watches:
                        try:
                            await sub.unsubscribe()
                        except Exception:  # noqa: BLE001 - the old watch may be gone with the old connection
                            pass
                    self._watches = []
                    self.buckets = await open_space(self.js, self.config)
                    watched = []
                    for short, on_change in self.watchers.items():
                        sub, caught_up = await self._watch(short, on_change)
                        self._watches.append(sub)
                        watched.append(caught_up)
                    for follower in self.followers.values():
                        self._watches.append(await self._follow(follower))
                    # ready once every copy holds what the server held at open: what a reconnect
                    # publishes again (on_ready) is compared with the team's copies of this host's records
                    for caught_up in watched + [f.caught_up for f in self.followers.values()]:
                        await asyncio.wait_for(caught_up.wait(), 4 * self.config.team_op_timeout_ms / 1000)
                    self.ready = True
                    self.ready_at = int(time.time() * 1000)
                    self.ready_mono = time.monotonic()
                    for fn in self.on_ready:  # e.g. host-owned records published again after an outage
                        fn()
                    log.info("event=team.ready space=%s host=%s server=%s", self.space, self.host_id,
                             self._server_url())
                    self.after_change()
                    return
                except Exception as exc:  # noqa: BLE001 - JetStream not ready yet (cluster electing): retry
                    self._failed(f"opening space {self.space}: {type(exc).__name__}: {exc}")
                    log.warning("event=team.open_failed error=%s", self.last_error)
                    await asyncio.sleep(self.config.team_reconnect_wait_ms / 1000)

    async def _watch(self, short: str,
                     on_change: Callable[[str, int, bytes | None], None]) -> tuple[Any, asyncio.Event]:
        """An ordered consumer over the bucket: the latest of every key, then every change; and an event
        set once the latest of every key has been delivered."""
        bucket = bucket_name(self.space, short)
        prefix = f"$KV.{bucket}."
        caught_up = asyncio.Event()
        live = self._live.setdefault(short, set())  # keys the copy holds, from this watch and earlier ones
        earlier, seen = set(live), set()

        def settle() -> None:
            """The latest of every key is in: forget what an earlier watch left that the bucket no longer
            has (a key that expired while the link was down and whose marker is gone too)."""
            for key in earlier - seen:
                live.discard(key)
                try:
                    on_change(key, 0, None)
                except Exception:
                    log.exception("event=team.watch_crash bucket=%s", bucket)
            caught_up.set()

        if (await self.js.stream_info(f"KV_{bucket}")).state.messages == 0:
            settle()

        async def deliver(msg: Any) -> None:
            headers = msg.headers or {}
            gone = KV_OPERATION in headers or KV_MARKER_REASON in headers
            key = msg.subject[len(prefix):]
            (live.discard if gone else live.add)(key)
            if not caught_up.is_set():
                seen.add(key)
            try:
                on_change(key, msg.metadata.sequence.stream, None if gone else msg.data)
            except Exception:
                log.exception("event=team.watch_crash bucket=%s", bucket)
            if msg.metadata.num_pending == 0 and not caught_up.is_set():
                settle()
            self.after_change()

        sub = await self.js.subscribe(f"{prefix}>", stream=f"KV_{bucket}", cb=deliver, ordered_consumer=True,
                                      deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                                      inactive_threshold=300)
        return sub, caught_up

    async def _follow(self, follower: Follower) -> Any:
        """An ordered consumer over the stream from where `on_open` says, feeding the mirror."""
        name = stream_name(self.space, follower.short)
        info = await self.js.stream_info(name)
        start = follower.on_open(info.state.last_seq)
        follower.applied = start - 1
        follower.caught_up = caught_up = asyncio.Event()
        if info.state.messages == 0 or start > info.state.last_seq:
            caught_up.set()

        async def deliver(msg: Any) -> None:
            meta = msg.metadata
            try:
                follower.on_message(meta.sequence.stream, msg.subject, msg.data, msg.headers or {})
            except Exception:
                log.exception("event=team.follow_crash stream=%s", name)
            follower.advance(meta.sequence.stream)
            if meta.num_pending == 0:
                caught_up.set()
            self.after_change()

        return await self.js.subscribe(
            f"pd.{self.space}.{follower.short}.>", stream=name, cb=deliver, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, config=api.ConsumerConfig(opt_start_seq=start),
            inactive_threshold=300)

    async def _on_error(self, exc: Exception) -> None:
        self._failed(f"{type(exc).__name__}: {exc}")

    async def _on_disconnected(self) -> None:
        self.ready = False
        self.disconnected_at = int(time.time() * 1000)
        log.warning("event=team.disconnected error=%s", self.last_error)
        for fn in self.on_down:  # e.g. parked lock waiters: they retry now and fail with team_unavailable
            fn()
        self.after_change()

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        self.connected_at = int(time.time() * 1000)
        log.info("event=team.reconnected server=%s", self._server_url())
        self.loop.create_task(self._open_space())

    def _server_url(self) -> str | None:
        url = self.nc.connected_url if self.nc is not None else None
        return f"{url.scheme}://{url.hostname}:{url.port}" if url is not None else None

    # -- heartbeats --------------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        """Write this host's heartbeat into the hosts bucket; it expires on the server after the host timeout."""
        subject = f"$KV.{bucket_name(self.space, HOSTS.short)}.{self.host_id}"
        ttl = ttl_seconds(self.config.team_host_timeout_ms)
        while True:
            if self.available:
                record = {"host": self.host_id, "hostname": socket.gethostname(), "pid": os.getpid(),
                          "version": __version__, "ts": int(time.time() * 1000)}
                try:
                    await asyncio.wait_for(self.js.publish(subject, json.dumps(record).encode(), msg_ttl=ttl),
                                           self.config.team_op_timeout_ms / 1000)
                except Exception as exc:  # noqa: BLE001 - the next beat tries again
                    self._failed(f"heartbeat: {type(exc).__name__}: {exc}")
            await asyncio.sleep(self.config.team_heartbeat_ms / 1000)

    def _host_changed(self, key: str, revision: int, value: bytes | None) -> None:
        if value is None:
            self.hosts.pop(key, None)
            self.host_seen.pop(key, None)
            return
        try:
            self.hosts[key] = json.loads(value)
        except ValueError:
            log.warning("event=team.bad_heartbeat host=%s", key)
            return
        seen = self.host_seen.get(key)
        if seen is None or seen[0] != revision:  # a watch restarted after a reconnect repeats the last revision
            self.host_seen[key] = (revision, time.monotonic())

    def host_silent_ms(self, host: str) -> int | None:
        """How long ago, by this host's monotonic clock, a new heartbeat of `host` arrived (None: none seen).

        The `ts` inside a heartbeat is the other host's wall clock, which may run behind or ahead of
        ours; when we saw its revision change is ours alone."""
        seen = self.host_seen.get(host)
        return None if seen is None else int((time.monotonic() - seen[1]) * 1000)

    def host_alive(self, host: str) -> bool:
        """A new heartbeat of `host` arrived within `team_host_timeout_ms` (this host's clock)."""
        silent = self.host_silent_ms(host)
        return silent is not None and silent < self.config.team_host_timeout_ms

    def hosts_seen(self) -> list[dict]:
        return [{**h, "alive": self.host_alive(k), "silentMs": self.host_silent_ms(k), "self": k == self.host_id}
                for k, h in sorted(self.hosts.items())]

    # -- status ------------------------------------------------------------------------------------
    async def status(self) -> dict:
        """What `pd team status` shows: the server, its RTT, the space, each bucket/stream, hosts, last error."""
        out: dict[str, Any] = {
            "configured": True, "space": self.space, "hostId": self.host_id, "servers": self.config.team_servers,
            "replicas": self.config.team_replicas, "connected": bool(self.nc is not None and self.nc.is_connected),
            "ready": self.ready, "server": None, "serverVersion": None, "rttMs": None,
            "connectedAt": self.connected_at, "disconnectedAt": self.disconnected_at, "reconnects": self.reconnects,
            "lastError": self.last_error, "lastErrorAt": self.last_error_at, "streams": [],
            "hosts": self.hosts_seen(),
        }
        if not out["connected"]:
            return out
        out["server"] = self._server_url()
        out["serverVersion"] = (self.nc._server_info or {}).get("version")
        timeout = self.config.team_op_timeout_ms / 1000
        try:
            out["rttMs"] = round(await asyncio.wait_for(self.nc.rtt(), timeout) * 1000, 3)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            out["lastError"] = self._failed(f"rtt: {type(exc).__name__}")
        names = [(f"KV_{bucket_name(self.space, b.short)}", "bucket", b.short) for b in BUCKETS] + \
                [(stream_name(self.space, st.short), "stream", st.short) for st in STREAMS]
        for stream, kind, short in names:
            out["streams"].append(await self._stream_health(stream, kind, short, timeout))
        return out

    async def _stream_health(self, stream: str, kind: str, short: str, timeout: float) -> dict:
        row: dict[str, Any] = {"name": short, "kind": kind, "stream": stream, "ok": False}
        try:
            info = await asyncio.wait_for(self.js.stream_info(stream), timeout)
        except Exception as exc:  # noqa: BLE001 - a missing or unreachable stream is a finding
            row["error"] = f"{type(exc).__name__}: {exc}".strip(": ")
            return row
        cluster = info.cluster
        peers = [{"name": p.name, "current": p.current, "offline": bool(p.offline), "lag": p.lag or 0}
                 for p in (cluster.replicas or [])] if cluster else []
        row.update(ok=all(p["current"] and not p["offline"] for p in peers), messages=info.state.messages,
                   bytes=info.state.bytes, replicas=info.config.num_replicas,
                   leader=cluster.leader if cluster else None, peers=peers)
        return row
