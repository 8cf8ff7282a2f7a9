"""The asyncio twin of `pdcore.client.Client`: the same methods, awaited.

Kept in a module of its own (and re-exported lazily by `pdcore.client`) so that the `pd` CLI,
which only uses the sync client, does not pay for importing asyncio.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from pdcore import protocol as P
from pdcore.client import (
    DOWN_MESSAGE,
    IPC_REFUSED_HTTP_S,
    TAKE_RETRY_DELAY_MAX_S,
    FramePacer,
    IpcUnavailable,
    _make_sync,
    _next_conv,
    _reply_value,
    http_request,
    new_request_id,
    over_http_after,
    refusal_of,
    reply_lost,
)
from pdcore.config import Config, load_config
from pdcore.errors import OpError
from pdcore.ops import CATALOGUE, Op


# -- the asyncio client ----------------------------------------------------------------------
class AsyncClient:
    """The asyncio twin of Client: same methods, awaited; many calls may be in flight at once.

    Takes get a request id and are repeated after a lost reply, as with Client.
    """

    retry_takes = True

    def __init__(self, config: Config | None = None, home: str | None = None, timeout: float = 30.0) -> None:
        self.config = config or load_config(home)
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiters: dict[int, asyncio.Future] = {}
        self._reader_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._pacer = FramePacer(self.config.ipc_rate_limit)
        self._http_until = 0.0  # monotonic time until which calls go over HTTP (IPC was refused)

    async def _connect(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            delay = 0.02
            deadline = time.monotonic() + 3.0
            while True:
                try:
                    self._reader, self._writer = await asyncio.open_unix_connection(str(self.config.ipc))
                    break
                except OSError:
                    if time.monotonic() + delay > deadline:
                        raise IpcUnavailable("unavailable", DOWN_MESSAGE) from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(self._reader))
            return self._writer

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = P.FrameDecoder(1 << 30)
        refused: IpcUnavailable | None = None
        try:
            while True:
                data = await reader.read(262144)
                if not data:
                    break
                for item in decoder.feed(data):
                    if isinstance(item, P.ProtocolError):
                        continue
                    type_, conv_id, body = item
                    if not conv_id:
                        refused = refusal_of(type_, conv_id, P.unpack_payload(body)) or refused
                        continue
                    fut = self._waiters.pop(conv_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result((type_, P.unpack_payload(body)))
        except OSError:
            pass
        finally:
            if refused is not None:
                self._http_until = time.monotonic() + IPC_REFUSED_HTTP_S
            for fut in self._waiters.values():
                if not fut.done():
                    # refused: nothing was read, safe to make again; lost: it may have been applied
                    fut.set_exception(refused if refused is not None else reply_lost())
            self._waiters.clear()
            if self._writer is not None:
                self._writer.close()
            self._writer = None

    async def call(self, action: str, **args: Any) -> Any:
        op = CATALOGUE.get(action)
        if op is None:
            raise OpError("unknown_action", f"unknown action {action!r}", "action")
        args = {k: v for k, v in args.items() if v is not None}
        if op.takes and self.retry_takes:
            return await self._take(op, args)
        return await self._call(op, args)

    async def _take(self, op: Op, args: dict) -> Any:
        """Run a take with a request id, repeating it with the same id after a lost reply."""
        args.setdefault("requestId", new_request_id())
        deadline = None  # the repeats get the call's timeout, counted from the first lost reply
        delay = 0.05
        while True:
            try:
                return await self._call(op, args)
            except OpError as err:
                if deadline is None and err.extra.get("replyLost"):
                    deadline = time.monotonic() + self.timeout + (args.get("wait") or 0) / 1000.0
                if err.code != "unavailable" or deadline is None or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, TAKE_RETRY_DELAY_MAX_S)

    async def _call(self, op: Op, args: dict) -> Any:
        """Send one operation once (IPC; HTTP when IPC is absent or refused) and return its result."""
        action = op.name
        wait = max((v for k, v in args.items() if k in ("wait", "timeout") and isinstance(v, (int, float))),
                   default=0)
        timeout = self.timeout + wait / 1000.0
        if not self._use_ipc():
            return await asyncio.to_thread(http_request, op, args, self.config, timeout)
        try:
            writer = await self._connect()
            await self._pace()
            conv = _next_conv()
            fut = asyncio.get_running_loop().create_future()
            self._waiters[conv] = fut
            writer.write(P.encode(P.REQUEST, conv, {"action": action, **args}))
            try:
                type_, payload = await asyncio.wait_for(fut, timeout)
            finally:
                self._waiters.pop(conv, None)
        except IpcUnavailable as err:
            await self.close()
            return await asyncio.to_thread(over_http_after, err, op, args, self.config, timeout)
        return _reply_value(type_, payload)

    def _use_ipc(self) -> bool:
        if self._http_until:
            if time.monotonic() < self._http_until:
                return False
            self._http_until = 0.0
        return self._writer is not None or Path(self.config.ipc).exists()

    async def fire(self, action: str, **args: Any) -> None:
        op = CATALOGUE.get(action)
        if op is None or not op.fire_and_forget:
            raise OpError("fire_and_forget_not_allowed", f"{action} cannot be sent fire-and-forget", "action")
        args = {k: v for k, v in args.items() if v is not None}
        if not self._use_ipc():
            await asyncio.to_thread(http_request, op, args, self.config, self.timeout)
            return
        try:
            writer = await self._connect()
        except IpcUnavailable as err:
            await asyncio.to_thread(over_http_after, err, op, args, self.config, self.timeout)
            return
        await self._pace()
        writer.write(P.encode(P.REQUEST, 0, {"action": action, **args}))

    async def _pace(self) -> None:
        """Wait, if need be, to stay under the daemon's frame rate (see FramePacer)."""
        wait = self._pacer.delay()
        if wait:
            await asyncio.sleep(wait)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._writer = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _make_async(op: Op):
    name = op.name
    if op.fire_and_forget:
        async def method(self: AsyncClient, _reply: bool = False, **args: Any) -> Any:
            if _reply:
                return await self.call(name, **args)
            return await self.fire(name, **args)
    else:
        async def method(self: AsyncClient, **args: Any) -> Any:
            return await self.call(name, **args)
    method.__name__ = op.method_name
    method.__doc__ = _make_sync(op).__doc__
    return method



for _op in CATALOGUE.values():
    setattr(AsyncClient, _op.method_name, _make_async(_op))
