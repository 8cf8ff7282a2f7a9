"""The core process: one thread, uvloop, every piece of state, the only database writer.

Bytes arrive on `daemon.ipc` (public clients) and `core.sock` (HTTP workers), become frames
(pdcore.protocol), then calls of catalogue operations on the State. Replies made while handling
one loop tick are held; at the end of the tick ONE database transaction commits every durable
change of the tick, and only then are the replies written, one write per connection (group
commit). Calls that must wait are parked and retried when the state they wait on changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack

from pdcore import protocol as P
from pdcore.config import EXIT_CONFIG, Config, load_config_or_exit
from pdcore.crypto import MasterKeyError
from pdcore.errors import OpError
from pdcore.ops import CATALOGUE
from pdcore.ops.schema import compile_validator
from pdcore.paths import check_home, peer_credentials, remove_stale_socket, watch_supervisor
from pdcore.shm import ShmWriter, service_rows
from pdcore.startcheck import StartRefused, check_state
from pdcore.state import Await, Ctx, Park, State
from pdcore.store import Store
from pdcore.subscriptions import Subscriptions

log = logging.getLogger("pd.core")

_unpackb = msgpack.unpackb
_pack = msgpack.Packer(use_bin_type=True).pack
_header = P.HEADER.pack
_MAX_WAKE_ROUNDS = 1000
_NO_DEADLINE = 1 << 62  # a parked call's wait deadline before it has one (an Await first, a Park later)
_CALL_TYPES = frozenset({P.REQUEST, P.QUERY_REF, P.QUERY_IF, P.INFORM})
# Fire-and-forget frames repeat byte for byte (an agent's heartbeat): their decoded, validated
# arguments are kept by body, so a repeat skips MessagePack and validation. Only payloads of
# scalars are kept (handlers get fresh kwargs, and nothing shared can be mutated).
_FF_CACHE_MAX = 4096
_FF_CACHE_BODY_MAX = 256
CHECKPOINT_EVERY = 1000  # commits between WAL checkpoints (run off the core's thread)
DROPPED_CHANNELS_MAX = 64  # channel names a msg.dropped notice lists
REFUSED_LINGER_S = 1.0  # a refused connection is closed after this long, if its client has not closed it
# Ops whose `agentId` names the agent acted upon (a path field, e.g. /salvage/claim/{agentId},
# or Op.subject_agent), not the caller: it must not become the caller's identity.
_AGENT_IS_TARGET = frozenset(
    op.name for op in CATALOGUE.values()
    if op.subject_agent or any(a.name == "agentId" and a.where == "path" for a in op.args))


def _all_scalar(payload: dict) -> bool:
    for value in payload.values():
        if value is not None and value.__class__ not in (str, int, float, bool):
            return False
    return True


class _Entry:
    """One row of the dispatch table: what the core needs to run an action, looked up once."""

    __slots__ = ("op", "handler", "validate", "durable", "fire_and_forget", "agent_is_target")

    def __init__(self, op: Any, handler: Callable, validate: Callable[[dict], dict]) -> None:
        self.op = op
        self.handler = handler
        self.validate = validate
        self.durable = op.durable
        self.fire_and_forget = op.fire_and_forget
        self.agent_is_target = op.name in _AGENT_IS_TARGET


class Parked:
    """A call waiting in the core for its keys to be woken or its deadline to pass."""

    __slots__ = ("seq", "action", "handler", "args", "conn", "conv_id", "agent_id", "keys", "timer", "done",
                 "on_timeout", "durable", "deadline", "task")

    def __init__(self, seq: int, action: str, handler: Callable, args: dict, conn: Connection, conv_id: int,
                 agent_id: str | None, park: Park, durable: bool) -> None:
        self.seq = seq
        self.action = action
        self.handler = handler
        self.args = args
        self.conn = conn
        self.conv_id = conv_id
        self.agent_id = agent_id
        self.keys = tuple(park.keys)
        self.on_timeout = park.on_timeout
        self.timer: Any = None
        self.done = False
        self.durable = durable
        self.deadline = park.deadline  # the wait's own deadline: retries never push it later
        self.task: asyncio.Task | None = None  # an Await's call in flight


class Connection(asyncio.Protocol):
    """One client connection: frame decoding, rate limit, strikes, flow control, fair turns."""

    __slots__ = ("core", "public", "id", "pid", "transport", "decoder", "out", "strikes", "tokens", "refill_at",
                 "parked", "closed", "reading_paused", "output_paused", "waiting_turn", "dropped",
                 "dropped_on", "limited")

    def __init__(self, core: Core, public: bool) -> None:
        self.core = core
        self.public = public
        self.id = 0
        self.pid = 0  # the peer process (SO_PEERCRED), whose public connections are counted together
        self.transport: asyncio.Transport | None = None
        # Unfinished messages of public connections share the daemon's budget; core.sock carries
        # the HTTP workers' requests, already bounded by http_max_body per request.
        self.decoder = P.FrameDecoder(core.config.ipc_max_message, core.pending if public else None)
        self.out: list[bytes] = []
        self.strikes = 0
        self.tokens = float(core.config.ipc_rate_limit)
        self.refill_at = time.monotonic()
        self.parked: dict[int, Parked] = {}
        self.closed = False
        self.reading_paused = False
        self.output_paused = False  # the client is not reading its replies
        self.waiting_turn = False  # complete frames are left for the next turn (Core._serve_turns)
        self.dropped = 0  # deliveries dropped since the last msg.dropped notice
        self.dropped_on: set[str] = set()  # their channels (at most DROPPED_CHANNELS_MAX names)
        self.limited = public and core.config.ipc_rate_limit > 0  # core.sock is exempt

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=self.core.config.ipc_write_high_water)  # type: ignore[attr-defined]
        try:
            pid, uid, _gid = peer_credentials(transport.get_extra_info("socket"))
        except (OSError, AttributeError):
            pid, uid = 0, -1
        self.pid = pid
        if uid != os.getuid():
            self.core.stats["refused_connections"] += 1
            log.warning("event=ipc.forbidden peer_pid=%d peer_uid=%d", pid, uid)
            self.refuse(OpError("forbidden", f"only the daemon's owner (uid {os.getuid()}) may connect; "
                                             f"this peer runs as uid {uid}"))
            return
        self.core.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.core.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if not self.closed:  # a refused connection: nothing it sends is read
            self.core.frames_received(self, data)

    def refuse(self, err: OpError) -> None:
        """Turn the connection away: one REFUSE (conv_id 0), then end of stream; nothing it sends
        is read. It is closed a moment later, so a client that has just sent its first request
        still reads the REFUSE rather than finding its connection reset by the close."""
        self.closed = True
        transport = self.transport
        if transport is not None:
            transport.pause_reading()
            transport.write(P.encode_body(P.REFUSE, 0, _reply_error(None, err)))
            transport.write_eof()  # type: ignore[attr-defined]
            self.core.loop.call_later(REFUSED_LINGER_S, transport.close)

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests until it does.
        self.output_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self.output_paused = False
        if self.waiting_turn and not self.closed:
            self.core.wait_turn(self)
        self.update_reading()

    def update_reading(self) -> None:
        """Read from the socket unless the client's replies pile up or its frames wait for a turn."""
        paused = self.output_paused or self.waiting_turn
        if paused != self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # -- output ----------------------------------------------------------------------------
    def send(self, frame: bytes) -> None:
        if not self.closed:
            if not self.out:
                self.core.dirty.append(self)
            self.out.append(frame)
            self.core.schedule_flush()

    def take_token(self, now: float) -> bool:
        rate = self.core.config.ipc_rate_limit
        if rate <= 0 or not self.public:
            return True
        tokens = min(float(rate), self.tokens + (now - self.refill_at) * rate)
        self.refill_at = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


def _dropped_notice(conn: Connection) -> bytes:
    """The INFORM that tells a subscriber, before its next delivery, what it missed while slow."""
    body = {"action": "msg.dropped", "count": conn.dropped, "channels": sorted(conn.dropped_on),
            "channelsComplete": len(conn.dropped_on) < DROPPED_CHANNELS_MAX}
    conn.dropped = 0
    conn.dropped_on = set()
    return P.encode_body(P.INFORM, 0, _pack(body))


def _reply_error(action: str | None, err: OpError) -> bytes:
    body = {"action": action, **err.to_dict()}
    return _pack(body)


class Core:
    """Owns the State, the listeners, the parked calls and the subscriptions."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.get_event_loop()
        self.store = Store(config.db_path, config.db_synchronous)
        self.store.migrate()
        self.state = State(self.store, config, deliver=self.deliver)
        self.state.offload = self.offload  # type: ignore[method-assign]
        self.state.wake = self._wake  # type: ignore[method-assign]
        self.timers = self.state.timers
        self.timers.on_change = self._arm_timer
        self.stats = self.state.daemon.stats  # type: ignore[attr-defined]
        self.team: Any = None  # TeamLink when a team is configured
        if config.team_servers:  # team mode: nats-py is imported only then (docs/team.md)
            from pdcore.team import TeamLink

            self.team = self.state.team_link = TeamLink(config, self.state, self.loop, self._after_state_change)
            self.state.notify("on_team_link", self.team)
        self._arbiter = self.state.arbiter  # type: ignore[attr-defined]
        self._entries: dict[str, _Entry] = {}
        self._ff_cache: dict[bytes, tuple] = {}
        for key in ("frames", "ops", "errors", "ff_dropped", "rate_limited", "violations", "connections",
                    "refused_connections", "delivered", "delivery_dropped", "commits", "parked"):
            self.stats[key] = 0
        self.conns: dict[int, Connection] = {}
        self.public_count = 0
        self.peer_counts: dict[int, int] = {}  # peer pid -> its public connections
        self.pending = P.PendingBudget(config.ipc_pending_bytes_max)
        self._turn_frames = max(1, config.ipc_frames_per_turn)
        self._max_elements = config.ipc_max_elements
        self._waiting_turn: list[Connection] = []
        self._turns_scheduled = False
        self._rate_refusal = _reply_error(None, OpError(
            "rate_limited", f"more than {config.ipc_rate_limit} frames/s on this connection (ipc_rate_limit)"))
        self._next_conn_id = 1
        self.dirty: list[Connection] = []
        self._flush_scheduled = False
        self._park_seq = 0
        # key -> its parked calls, oldest first (a dict: O(1) removal when one finishes)
        self.waiting: dict[Any, dict[Parked, None]] = {}
        self.parked_now = 0  # calls parked at this moment (park_max bounds it)
        self.subscriptions = Subscriptions.from_config(config)
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pd-offload")
        self._offloads: list[tuple[Callable, Callable]] = []  # started after the tick's commit (_flush)
        self.servers: list[asyncio.AbstractServer] = []
        self.shm: ShmWriter | None = None
        self._commits_since_checkpoint = 0
        self._checkpointing = False
        self.stopping = asyncio.Event()

    # -- start and stop --------------------------------------------------------------------
    async def start(self) -> None:
        self.state.load()
        if self.config.shm_enabled:
            self.shm = ShmWriter(self.config.shm_path, self.config.shm_slots)
            self._publish_shm()
        self._arm_timer()
        if self.team is not None:
            self.team.start()
        for path, public in ((self.config.ipc, True), (self.config.core_sock, False)):
            remove_stale_socket(Path(path))
            old_umask = os.umask(0o177)
            try:
                server = await self.loop.create_unix_server(lambda p=public: Connection(self, p), str(path),
                                                            backlog=1024)
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
            self.servers.append(server)
        log.info("event=core.ready pid=%d ipc=%s core_sock=%s services=%d", os.getpid(), self.config.ipc,
                 self.config.core_sock, self.state.counts().get("services", 0))

    async def stop(self) -> None:
        """Drain: stop accepting, answer what was handled, commit, close the database."""
        for server in self.servers:
            server.close()
        self._flush()
        for conn in list(self.conns.values()):
            if conn.transport is not None:
                conn.transport.close()
        self.state.notify("on_shutdown")  # e.g. persist the freshest heartbeats
        if self.team is not None:
            await self.team.close()
        self.store.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for path in (self.config.ipc, self.config.core_sock, self.config.shm_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        log.info("event=core.stopped")

    # -- connections -----------------------------------------------------------------------
    def connection_opened(self, conn: Connection) -> None:
        conn.id = self._next_conn_id
        self._next_conn_id += 1
        if conn.public:
            err = self._admission(conn.pid)
            if err is not None:
                self.stats["refused_connections"] += 1
                log.warning("event=ipc.refused peer_pid=%d code=%s limit=%s", conn.pid, err.code, err.extra["limit"])
                conn.refuse(err)
                return
            self.public_count += 1
            if conn.pid:
                self.peer_counts[conn.pid] = self.peer_counts.get(conn.pid, 0) + 1
        self.conns[conn.id] = conn
        self.stats["connections"] += 1

    def _admission(self, pid: int) -> OpError | None:
        """Why a new public connection of process `pid` is refused, or None: the total, the
        process's own share, and the last slots kept for processes that hold none yet."""
        cfg = self.config
        held = self.peer_counts.get(pid, 0) if pid else 0
        reserved = min(cfg.ipc_reserved_connections, cfg.ipc_max_connections // 2)
        if self.public_count >= cfg.ipc_max_connections:
            limit, value = "ipc_max_connections", cfg.ipc_max_connections
            why = f"the daemon serves at most {value} IPC connections (ipc_max_connections)"
        elif held >= cfg.ipc_max_connections_per_peer:
            limit, value = "ipc_max_connections_per_peer", cfg.ipc_max_connections_per_peer
            why = f"process {pid} already holds {held} IPC connections, the most one process may (ipc_max_connections_per_peer)"
        elif held and self.public_count >= cfg.ipc_max_connections - reserved:
            limit, value = "ipc_reserved_connections", reserved
            why = (f"the last {value} of {cfg.ipc_max_connections} IPC connections are kept for processes that hold "
                   f"none, and process {pid} holds {held} (ipc_reserved_connections)")
        else:
            return None
        return OpError("too_many_connections", why + "; use HTTP over daemon.sock meanwhile", limit=limit, value=value)

    def connection_closed(self, conn: Connection) -> None:
        if self.conns.pop(conn.id, None) is None:
            return
        conn.decoder.release()
        if conn.public:
            self.public_count -= 1
            held = self.peer_counts.get(conn.pid, 0) - 1
            if held > 0:
                self.peer_counts[conn.pid] = held
            else:
                self.peer_counts.pop(conn.pid, None)
        self.subscriptions.drop(conn)
        for parked in list(conn.parked.values()):
            self._finish_parked(parked)
        conn.parked.clear()
        self.state.connection_closed(conn.id)
        self._after_state_change()

    # -- frames ----------------------------------------------------------------------------
    def frames_received(self, conn: Connection, data: bytes) -> None:
        conn.decoder.push(data)
        if self._serve(conn):
            self.wait_turn(conn)

    def wait_turn(self, conn: Connection) -> None:
        """Stop reading `conn` and serve the frames it has left in a later turn of the loop."""
        conn.waiting_turn = True
        conn.update_reading()
        if not conn.output_paused and conn not in self._waiting_turn:
            self._waiting_turn.append(conn)
            if not self._turns_scheduled:
                self._turns_scheduled = True
                self.loop.call_soon(self._serve_turns)

    def _serve_turns(self) -> None:
        """One more turn for each connection with frames left; between two of these turns the
        loop reads every other connection, so a flood waits its turn rather than others."""
        self._turns_scheduled = False
        waiting, self._waiting_turn = self._waiting_turn, []
        for conn in waiting:
            if conn.closed or conn.output_paused:
                continue  # closed, or resumed by resume_writing once its client reads again
            if self._serve(conn):
                self._waiting_turn.append(conn)
            else:
                conn.waiting_turn = False
                conn.update_reading()
        if self._waiting_turn and not self._turns_scheduled:
            self._turns_scheduled = True
            self.loop.call_soon(self._serve_turns)

    def _serve(self, conn: Connection) -> bool:
        """Handle up to `ipc_frames_per_turn` buffered frames of `conn`; True when more are left."""
        now_mono = time.monotonic()
        now_ms = int(time.time() * 1000)
        stats = self.stats
        limited = conn.limited
        decoder = conn.decoder
        for item in decoder.frames(self._turn_frames):
            if conn.closed:
                return False
            if item.__class__ is not tuple:
                self._violation(conn, item)
                continue
            type_, conv_id, body = item
            stats["frames"] += 1
            if limited and not conn.take_token(now_mono):
                stats["rate_limited"] += 1
                if conv_id:
                    conn.send(P.encode_body(P.REFUSE, conv_id, self._rate_refusal))
                else:
                    stats["ff_dropped"] += 1
                continue
            if not conv_id and type_ in _CALL_TYPES:
                hit = self._ff_cache.get(body)
                if hit is not None and not self._arbiter.overboard:
                    self._run_fire_and_forget(conn, hit, now_ms)
                    continue
            try:
                if len(body) <= self._max_elements:  # too short to hold more values than allowed
                    payload = _unpackb(body, raw=False, strict_map_key=False)
                else:
                    payload = P.unpack_bounded(body, self._max_elements)
            except P.ProtocolError as err:
                err.conv_id = conv_id
                self._violation(conn, err)
                continue
            except Exception:
                self._violation(conn, P.ProtocolError("bad_payload", "payload is not MessagePack", conv_id))
                continue
            if not isinstance(payload, dict):
                self._violation(conn, P.ProtocolError("bad_payload", "payload must be a MessagePack map", conv_id))
                continue
            if type_ in _CALL_TYPES:
                self.dispatch(conn, conv_id, payload, now_ms, body)
            elif type_ == P.SUBSCRIBE or type_ == P.UNSUBSCRIBE:
                self._subscription(conn, type_, conv_id, payload)
            elif type_ == P.CANCEL:
                self._cancel(conn, conv_id)
            else:
                self._violation(conn, P.ProtocolError(
                    "unexpected_type", f"{P.NAMES.get(type_, hex(type_))} is not sent by clients", conv_id))
        return decoder.more and not conn.closed

    def _violation(self, conn: Connection, err: P.ProtocolError) -> None:
        if err.code == "too_large":
            if err.conv_id:
                conn.send(P.encode_body(P.FAILURE, err.conv_id, _reply_error(None, OpError("too_large", str(err)))))
            return
        self.stats["violations"] += 1
        conn.strikes += 1
        body = _pack({"code": err.code, "error": str(err), "strikes": conn.strikes})
        conn.send(P.encode_body(P.NOT_UNDERSTOOD, err.conv_id, body))
        if conn.strikes >= self.config.ipc_strikes:
            log.warning("event=ipc.strikes_out conn=%d code=%s", conn.id, err.code)
            self._flush()
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()

    # -- dispatch --------------------------------------------------------------------------
    def _entry(self, action: Any) -> _Entry | None:
        """The dispatch row of an action (op, bound handler, validator), built once per action."""
        if action.__class__ is not str:
            return None
        entry = self._entries.get(action)
        if entry is None:
            op = CATALOGUE.get(action)
            if op is None:
                return None
            entry = self._entries[action] = _Entry(op, self.state.handler(op.handler),
                                                   compile_validator(op, self.config))
        return entry

    def dispatch(self, conn: Connection, conv_id: int, payload: dict, now_ms: int, body: bytes | None = None) -> None:
        """Validate and run one operation; queue its reply (or park it)."""
        stats = self.stats
        action = payload.get("action")
        entry = self._entries.get(action) if action.__class__ is str else None
        if entry is None:
            entry = self._entry(action)
        if entry is None:
            stats["errors"] += 1
            if conv_id:
                err = OpError("unknown_action", f"unknown action {action!r}", "action")
                conn.send(P.encode_body(P.REFUSE, conv_id, _reply_error(None, err)))
            return
        if not conv_id and not entry.fire_and_forget:
            stats["ff_dropped"] += 1
            return
        stats["ops"] += 1
        agent_id = None if entry.agent_is_target else payload.get("agentId")
        if agent_id is not None and agent_id.__class__ is not str:
            agent_id = None
        public = conn.public
        ctx = Ctx(now_ms, conn if public else None, agent_id, "ipc" if public else "http")
        try:
            if self._arbiter.overboard:
                self._arbiter.check_writes(ctx, entry.op, payload)
            args = entry.validate(payload)
            if body is not None and not conv_id and len(body) <= _FF_CACHE_BODY_MAX and _all_scalar(payload):
                if len(self._ff_cache) >= _FF_CACHE_MAX:
                    self._ff_cache.clear()
                self._ff_cache[body] = (entry, args, agent_id)
            if entry.durable:
                result = self._run(entry.handler, ctx, args, True)
            else:
                result = entry.handler(ctx, **args)
        except OpError as err:
            stats["errors"] += 1
            if conv_id:
                type_ = P.FAILURE if err.status >= 500 else P.REFUSE
                conn.send(P.encode_body(type_, conv_id, _reply_error(action, err)))
            self._after_state_change()
            return
        except Exception:
            stats["errors"] += 1
            log.exception("event=op.crash action=%s", action)
            if conv_id:
                err = OpError("internal", f"{action} failed inside the daemon; see daemon.log")
                conn.send(P.encode_body(P.FAILURE, conv_id, _reply_error(action, err)))
            self._after_state_change()
            return
        if result.__class__ is Park:
            if conv_id:
                refused = self._park_refusal(conn)
                if refused is None:
                    self._park(conn, conv_id, action, entry.handler, args, agent_id, result, entry.durable)
                else:
                    conn.send(P.encode_body(P.REFUSE, conv_id, _reply_error(action, refused)))
        elif result.__class__ is Await:
            refused = self._park_refusal(conn) if conv_id else None
            if refused is None:
                self._await(conn, conv_id, action, entry.handler, args, agent_id, result, entry.durable)
            else:
                if hasattr(result.call, "close"):
                    result.call.close()  # a coroutine never awaited: nothing was sent to the team
                conn.send(P.encode_body(P.REFUSE, conv_id, _reply_error(action, refused)))
        elif conv_id:
            conn.send(P.encode_body(P.INFORM_DONE, conv_id, _pack({"action": action, "result": result})))
        if self.state.pending_wakes:
            self._process_wakes()

    def _run_fire_and_forget(self, conn: Connection, hit: tuple, now_ms: int) -> None:
        """Run a fire-and-forget frame whose exact bytes were decoded and validated before."""
        entry, args, agent_id = hit
        self.stats["ops"] += 1
        public = conn.public
        ctx = Ctx(now_ms, conn if public else None, agent_id, "ipc" if public else "http")
        try:
            if entry.durable:
                self._run(entry.handler, ctx, args, True)
            else:
                entry.handler(ctx, **args)
        except OpError:
            self.stats["errors"] += 1
            self._after_state_change()
            return
        except Exception:
            self.stats["errors"] += 1
            log.exception("event=op.crash action=%s", entry.op.name)
            self._after_state_change()
            return
        if self.state.pending_wakes:
            self._process_wakes()

    def _run(self, handler: Callable, ctx: Ctx, args: dict, durable: bool) -> Any:
        if not durable:
            return handler(ctx, **args)
        store = self.store
        store.begin_op()
        try:
            result = handler(ctx, **args)
        except BaseException:
            store.abort_op()
            raise
        store.end_op()
        return result

    # -- parking ---------------------------------------------------------------------------
    def _park_refusal(self, conn: Connection) -> OpError | None:
        """Why a call may not park now: the connection's or the daemon's parked calls are at their
        cap (every parked call is retried when its keys wake, so their number is bounded).
        core.sock is exempt from the per-connection cap: the HTTP workers bound their own."""
        cfg = self.config
        if conn.public and len(conn.parked) >= cfg.park_max_per_connection:
            limit, value = "park_max_per_connection", cfg.park_max_per_connection
        elif self.parked_now >= cfg.park_max:
            limit, value = "park_max", cfg.park_max
        else:
            return None
        return OpError("too_many_parked", f"{value} calls are waiting already, the most allowed ({limit}); "
                       "retry when some have been answered", limit=limit, value=value)

    def _park(self, conn: Connection, conv_id: int, action: str, handler: Callable, args: dict,
              agent_id: str | None, park: Park, durable: bool) -> None:
        self._park_seq += 1
        parked = Parked(self._park_seq, action, handler, args, conn, conv_id, agent_id, park, durable)
        for key in parked.keys:
            self.waiting.setdefault(key, {})[parked] = None
        parked.timer = self.timers.add(park.deadline, self._park_timeout, parked)
        self._hold(parked)

    def _hold(self, parked: Parked) -> None:
        """Count a parked call and file it under its connection (replacing one of the same conv_id)."""
        if parked.conv_id:
            old = parked.conn.parked.get(parked.conv_id)
            if old is not None:
                self._finish_parked(old)
            parked.conn.parked[parked.conv_id] = parked
        self.stats["parked"] += 1
        self.parked_now += 1

    def _await(self, conn: Connection, conv_id: int, action: str, handler: Callable, args: dict,
               agent_id: str | None, pending: Await, durable: bool) -> None:
        """Park a call on an asynchronous call (a fire-and-forget one runs it and drops the answer)."""
        self._park_seq += 1
        parked = Parked(self._park_seq, action, handler, args, conn, conv_id, agent_id,
                        Park((), _NO_DEADLINE, pending.on_timeout), durable)  # a Park later sets the wait's
        self._hold(parked)
        self._start_await(parked, pending)

    def _start_await(self, parked: Parked, pending: Await) -> None:
        """Run `pending.call`; its outcome settles the parked call unless the deadline came first."""
        self._unwait(parked)
        parked.on_timeout = pending.on_timeout
        parked.timer = self.timers.add(pending.deadline, self._park_timeout, parked)
        task = parked.task = self.loop.create_task(pending.call)
        task.add_done_callback(lambda t: self._awaited(parked, t, pending.then))

    def _awaited(self, parked: Parked, task: asyncio.Task, then: Callable[[Any], Any] | None) -> None:
        if parked.done or task.cancelled():
            return
        parked.task = None
        try:
            result = task.result()
            if then is not None:
                result = self._run_then(then, result, parked.durable)
        except OpError as err:
            self._answer_error(parked, err)
        except Exception:
            log.exception("event=op.crash action=%s await=1", parked.action)
            self._answer_error(parked, OpError("internal", f"{parked.action} failed inside the daemon; see daemon.log"))
        else:
            self._settle(parked, result)
        self._after_state_change()

    def _run_then(self, then: Callable[[Any], Any], value: Any, durable: bool) -> Any:
        """An Await's continuation, under its own savepoint when the op is durable (like a handler)."""
        if not durable:
            return then(value)
        store = self.store
        store.begin_op()
        try:
            result = then(value)
        except BaseException:
            store.abort_op()
            raise
        store.end_op()
        return result

    def _settle(self, parked: Parked, result: Any) -> None:
        """Put a parked call where its latest outcome says: waiting on keys, awaiting a call, or answered."""
        if result.__class__ is Await:
            self._start_await(parked, result)
        elif result.__class__ is Park:
            self._unwait(parked)
            parked.deadline = min(parked.deadline, result.deadline)
            parked.on_timeout = result.on_timeout
            if parked.deadline <= int(time.time() * 1000) or not parked.conv_id:
                self._park_timeout(parked)
                return
            parked.keys = tuple(result.keys)
            for key in parked.keys:
                self.waiting.setdefault(key, {})[parked] = None
            parked.timer = self.timers.add(parked.deadline, self._park_timeout, parked)
        else:
            self._finish_parked(parked)
            if parked.conv_id:
                parked.conn.send(P.encode_body(P.INFORM_DONE, parked.conv_id,
                                               _pack({"action": parked.action, "result": result})))

    def _answer_error(self, parked: Parked, err: OpError) -> None:
        self._finish_parked(parked)
        if parked.conv_id:
            type_ = P.FAILURE if err.status >= 500 else P.REFUSE
            parked.conn.send(P.encode_body(type_, parked.conv_id, _reply_error(parked.action, err)))

    def _unwait(self, parked: Parked) -> None:
        """Take a parked call off its keys and its timer (before it waits on something else)."""
        if parked.timer is not None:
            parked.timer.cancel()
            parked.timer = None
        for key in parked.keys:
            waiters = self.waiting.get(key)
            if waiters is not None:
                waiters.pop(parked, None)
                if not waiters:
                    del self.waiting[key]
        parked.keys = ()

    def _finish_parked(self, parked: Parked) -> None:
        if not parked.done:
            self.parked_now -= 1
        parked.done = True
        if parked.task is not None:
            parked.task.cancel()  # the caller is answered (or gone): its outcome no longer matters
            parked.task = None
        self._unwait(parked)
        if parked.conn.parked.get(parked.conv_id) is parked:
            del parked.conn.parked[parked.conv_id]

    def _park_timeout(self, parked: Parked) -> None:
        if parked.done:
            return
        parked.timer = None
        self._finish_parked(parked)
        outcome = parked.on_timeout
        if not parked.conv_id:
            return
        if isinstance(outcome, OpError):
            type_ = P.FAILURE if outcome.status >= 500 else P.REFUSE
            parked.conn.send(P.encode_body(type_, parked.conv_id, _reply_error(parked.action, outcome)))
        else:
            parked.conn.send(P.encode_body(P.INFORM_DONE, parked.conv_id,
                                           _pack({"action": parked.action, "result": outcome})))

    def _cancel(self, conn: Connection, conv_id: int) -> None:
        parked = conn.parked.get(conv_id)
        if parked is not None:
            self._finish_parked(parked)
        if conv_id:
            conn.send(P.encode_body(P.AGREE, conv_id, _pack({"action": "cancel", "cancelled": parked is not None})))

    def _wake(self, key: Any) -> None:
        """`State.wake`: only keys some parked call waits on are worth a retry round (most aren't)."""
        if key in self.waiting:
            self.state.pending_wakes.append(key)

    def _process_wakes(self) -> None:
        """Retry parked calls whose keys were woken, oldest first, until nothing more wakes."""
        state = self.state
        for _ in range(_MAX_WAKE_ROUNDS):
            keys = state.pending_wakes
            if not keys:
                return
            state.pending_wakes = []
            seen = set()
            candidates: list[Parked] = []
            for key in keys:
                if key in seen:
                    continue
                seen.add(key)
                candidates.extend(self.waiting.get(key, ()))
            candidates.sort(key=lambda p: p.seq)
            done_seqs = set()
            for parked in candidates:
                if parked.done or parked.seq in done_seqs:
                    continue
                done_seqs.add(parked.seq)
                self._retry(parked)
        log.error("event=wake.loop rounds=%d", _MAX_WAKE_ROUNDS)
        state.pending_wakes = []

    def _retry(self, parked: Parked) -> None:
        ctx = Ctx(int(time.time() * 1000), parked.conn if parked.conn.public else None, parked.agent_id,
                  "ipc" if parked.conn.public else "http")
        ctx.retry = True
        try:
            result = self._run(parked.handler, ctx, parked.args, parked.durable)
        except OpError as err:
            self._answer_error(parked, err)
            return
        except Exception:
            log.exception("event=op.crash action=%s retry=1", parked.action)
            self._finish_parked(parked)
            err = OpError("internal", f"{parked.action} failed inside the daemon; see daemon.log")
            parked.conn.send(P.encode_body(P.FAILURE, parked.conv_id, _reply_error(parked.action, err)))
            return
        if result.__class__ is Park:
            return
        if result.__class__ is Await:
            self._start_await(parked, result)
            return
        self._finish_parked(parked)
        parked.conn.send(P.encode_body(P.INFORM_DONE, parked.conv_id,
                                       _pack({"action": parked.action, "result": result})))

    # -- subscriptions ---------------------------------------------------------------------
    def _subscription(self, conn: Connection, type_: int, conv_id: int, payload: dict) -> None:
        channels = payload.get("channels")
        if channels is None:
            one = payload.get("channel") or payload.get("pattern")
            channels = [one] if one is not None else []
        if not isinstance(channels, list) or not channels or not all(
                isinstance(c, str) and 0 < len(c) <= 200 and "\x00" not in c for c in channels):
            if conv_id:
                err = OpError("invalid_argument", "channels must be a non-empty list of channel names or patterns",
                              "channels")
                conn.send(P.encode_body(P.REFUSE, conv_id, _reply_error("subscribe", err)))
            return
        if type_ == P.SUBSCRIBE:
            action = "subscribe"
            try:
                self.subscriptions.subscribe(conn, channels)
            except OpError as err:  # a cap: nothing of this SUBSCRIBE was applied
                if conv_id:
                    conn.send(P.encode_body(P.REFUSE, conv_id, _reply_error(action, err)))
                return
        else:
            action = "unsubscribe"
            self.subscriptions.unsubscribe(conn, channels)
        if conv_id:  # this frame's names, not all the connection's: a reply must not cost O(its patterns)
            body = {"action": action, "channels": sorted(set(channels)), "count": self.subscriptions.count(conn)}
            conn.send(P.encode_body(P.AGREE, conv_id, _pack(body)))

    def deliver(self, channel: str, message: dict) -> None:
        """Push one published message to every connection subscribed to its channel."""
        targets: set[Connection] = self.subscriptions.subscribers(channel)  # type: ignore[assignment]
        if not targets:
            return
        frame = P.encode_body(P.INFORM, 0, _pack({"action": "msg.delivery", **message}))
        limit = self.config.subscriber_queue_max
        for conn in targets:
            transport = conn.transport
            if conn.closed or transport is None:
                continue
            if transport.get_write_buffer_size() + sum(map(len, conn.out)) > limit:
                conn.dropped += 1
                if len(conn.dropped_on) < DROPPED_CHANNELS_MAX:
                    conn.dropped_on.add(channel)
                self.stats["delivery_dropped"] += 1
                continue
            if conn.dropped:
                conn.send(_dropped_notice(conn))
            conn.send(frame)
            self.stats["delivered"] += 1

    # -- time ------------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        deadline = self.timers.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0.0, (deadline - time.time() * 1000) / 1000)
            self._timer_handle = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer_handle = None
        self._timer_at = None
        try:
            self.timers.run_due(int(time.time() * 1000))
        except Exception:
            log.exception("event=timer.crash")
        self._after_state_change()
        self._arm_timer()

    def _after_state_change(self) -> None:
        if self.state.pending_wakes:
            self._process_wakes()
        if self.store.in_tx or self.dirty:
            self.schedule_flush()

    # -- off-thread work -------------------------------------------------------------------
    def offload(self, fn: Callable[[], Any], then: Callable[[Any, BaseException | None], None]) -> None:
        """Run `fn` on a pool thread once this tick's transaction has committed.

        Nothing a tick starts off the thread (a webhook POST, a scan over its own database
        connection) can then see or announce a change that is not yet durable.
        """
        self._offloads.append((fn, then))
        self.schedule_flush()

    def _submit(self, fn: Callable[[], Any], then: Callable[[Any, BaseException | None], None]) -> None:
        future = self.loop.run_in_executor(self._pool, fn)

        def done(fut: asyncio.Future) -> None:
            exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
            try:
                then(None if exc else fut.result(), exc)
            except Exception:
                log.exception("event=offload.callback_crash")
            self._after_state_change()

        future.add_done_callback(done)

    def _checkpoint(self) -> None:
        """Fold the WAL into the database on a pool thread so no commit stalls on it."""
        self._checkpointing = True
        self._commits_since_checkpoint = 0

        def done(_result: Any, error: BaseException | None) -> None:
            self._checkpointing = False
            if error is not None:
                log.warning("event=checkpoint.failed error=%s", error)

        self._submit(self.store.checkpoint, done)

    # -- group commit ----------------------------------------------------------------------
    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """End of tick: commit every durable change, then write every reply (one write each)."""
        self._flush_scheduled = False
        try:
            if self.store.commit():
                self.stats["commits"] += 1
                self._commits_since_checkpoint += 1
                if self._commits_since_checkpoint >= CHECKPOINT_EVERY and not self._checkpointing:
                    self._checkpoint()
        except Exception:
            log.critical("event=commit.failed", exc_info=True)
            # Nothing of this tick was acknowledged; restart from the database rather than diverge.
            os._exit(70)
        if self.shm is not None and self.state.ports.changed:  # type: ignore[attr-defined]
            self._publish_shm()
        if self._offloads:
            offloads, self._offloads = self._offloads, []
            for fn, then in offloads:
                self._submit(fn, then)
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            out = conn.out
            if out and not conn.closed and conn.transport is not None:
                conn.transport.write(out[0] if len(out) == 1 else b"".join(out))
            conn.out = []


    def _publish_shm(self) -> None:
        """Mirror changed services into state.shm (after the commit, before the replies)."""
        ports = self.state.ports  # type: ignore[attr-defined]
        put = self.shm.put  # type: ignore[union-attr]
        for ident, row in service_rows(ports, ports.take_changed()):
            put(ident, row)


def setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=os.environ.get("PORT_DADDY_LOG_LEVEL", "INFO").upper(),
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )


async def serve(config: Config) -> None:
    core = Core(config)
    await core.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, core.stopping.set)
    watch_supervisor(lambda: loop.call_soon_threadsafe(core.stopping.set), "core")
    await core.stopping.wait()
    await core.stop()


def main() -> None:
    """Entry point of the core process (`python -m pdcore.core`), run by the supervisor."""
    import uvloop

    config = load_config_or_exit()
    setup_logging(config)
    problem = check_home(config.home, create=True)
    if problem:
        print(f"port-daddy: {problem}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        check_state(config)  # reads only: a refused start writes nothing
    except StartRefused as exc:
        print(f"port-daddy: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    socket.setdefaulttimeout(None)
    os.umask(0o077)  # state.db, its WAL and shm files: the owner's alone, like everything in the home
    try:
        uvloop.run(serve(config))
    except MasterKeyError as exc:
        # A bad key must stop the daemon, never be replaced: say why in one line.
        print(f"port-daddy: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):
            raise  # locked, disk full, ...: a restart may help
        print(f"port-daddy: {config.db_path} cannot be read ({exc}); see `pd doctor`", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


if __name__ == "__main__":
    main()
