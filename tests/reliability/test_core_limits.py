"""The core's caps against hostile IPC clients: each refuses past it with its code, the SDK and
`pd` go over HTTP when IPC is refused, and the core's memory and time stay bounded.

Figures (RSS, refusal times) are printed; run with `-s` to see them (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time

import msgpack
import psutil
import pytest

from pdcore import protocol as P
from pdcore.client import AsyncClient, Client
from pdcore.errors import OpError
from tests.conftest import REPO

MiB = 1024 * 1024


def connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


def first_reply(s: socket.socket, timeout: float = 10.0) -> tuple[int, int, dict] | None:
    """The first frame the daemon sends on `s` (None when it closes without one)."""
    decoder = P.FrameDecoder()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        for type_, conv, body in decoder.feed(data):
            return type_, conv, msgpack.unpackb(body)
    return None


def ask(s: socket.socket, conv: int, payload: dict) -> tuple[int, int, dict] | None:
    try:
        s.sendall(P.encode(P.REQUEST, conv, payload))
    except OSError:
        pass  # refused and closed already: its REFUSE is still readable
    return first_reply(s)


def holder(d, count: int, seconds: float = 60.0) -> tuple[subprocess.Popen, dict]:
    """Another process that opens `count` IPC connections and holds them (tests/reliability/_flood.py)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.reliability._flood", "--ipc", str(d.config.ipc),
                             "--hold", str(count), "--seconds", str(seconds)], env=d.env, cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


# -- who may connect ------------------------------------------------------------------------
_OTHER_UID_PEER = """
import ctypes, os, socket, sys
import msgpack
from pdcore import protocol as P
libc = ctypes.CDLL(None, use_errno=True)
os.setegid(65534)
os.seteuid(65534)         # the kernel records this uid for SO_PEERCRED...
libc.setfsuid(0)          # ...while the file system still lets it reach the 0700 home
out = {}
for name in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(name)
    try:
        s.sendall(P.encode(P.REQUEST, 3, {"action": "port.claim", "id": "intruder:svc"}))
    except OSError:
        pass
    frames, data = [], b""
    dec = P.FrameDecoder()
    while True:
        try:
            chunk = s.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        frames += [(t, c, msgpack.unpackb(b)) for t, c, b in dec.feed(chunk)]
    out[name] = frames
print(repr(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second local user")
def test_a_peer_of_another_uid_is_refused_on_both_sockets_and_changes_nothing(daemon):
    paths = [str(daemon.config.ipc), str(daemon.config.core_sock)]
    run = subprocess.run([sys.executable, "-c", _OTHER_UID_PEER, *paths], env=daemon.env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    seen = eval(run.stdout)  # noqa: S307 - our own child's repr of plain data
    for path in paths:
        (type_, conv, body), = seen[path]  # one REFUSE, then the daemon closed the connection
        assert (type_, conv, body["code"]) == (P.REFUSE, 0, "forbidden"), (path, body)
        assert f"uid {os.getuid()}" in body["error"] and "owner" in body["error"]
    with pytest.raises(OpError) as err:
        daemon.client().port_get(id="intruder:svc")
    assert err.value.code == "not_found"


# -- how many connections -------------------------------------------------------------------
def test_one_process_holds_at_most_its_share_and_others_still_get_in(daemon_factory):
    d = daemon_factory(ipc_max_connections_per_peer=4, ipc_reserved_connections=0)
    held = [connect(d.config.ipc) for _ in range(4)]
    for n, s in enumerate(held):
        assert ask(s, n + 1, {"action": "daemon.health"})[0] == P.INFORM_DONE
    type_, conv, body = ask(connect(d.config.ipc), 9, {"action": "daemon.health"})
    assert (type_, conv, body["code"]) == (P.REFUSE, 0, "too_many_connections")
    assert body["limit"] == "ipc_max_connections_per_peer" and body["value"] == 4
    assert "ipc_max_connections_per_peer" in body["error"]
    proc, report = holder(d, 4)  # another process gets its own four, and is refused a fifth
    try:
        assert report == {"held": 4, "extra": "too_many_connections"}
    finally:
        stop(proc)
    held[0].close()
    time.sleep(0.2)
    assert ask(connect(d.config.ipc), 10, {"action": "daemon.health"})[0] == P.INFORM_DONE


def test_the_last_slots_are_kept_for_processes_that_hold_none(daemon_factory):
    d = daemon_factory(ipc_max_connections=16, ipc_reserved_connections=4)
    held, refused = [], None
    for n in range(16):
        s = connect(d.config.ipc)
        reply = ask(s, n + 1, {"action": "daemon.health"})
        if reply[0] == P.REFUSE:
            refused = reply[2]
            break
        held.append(s)
    assert refused is not None and refused["limit"] == "ipc_reserved_connections" and refused["value"] == 4
    proc, report = holder(d, 1)  # a newcomer still gets one of the kept slots
    try:
        assert report["held"] == 1
    finally:
        stop(proc)


def test_when_every_ipc_slot_is_held_pd_and_the_sdk_use_http(daemon_factory):
    d = daemon_factory(ipc_max_connections=12, ipc_reserved_connections=0, ipc_max_connections_per_peer=12)
    procs = []
    try:
        proc, report = holder(d, 12)  # whatever the daemon's own fleet runner leaves
        procs.append(proc)
        assert report["held"] >= 6 and report["extra"] == "too_many_connections"
        refused_before = d.client(transport="http").daemon_metrics()["counters"]["refused_connections"]

        run = d.pd("claim", "full:cli:main")
        assert run.returncode == 0, run.stderr
        assert "full:cli:main -> port" in run.stdout and "may or may not" not in run.stderr

        c = Client(d.config)
        assert c.port_claim(id="full:sdk:main")["id"] == "full:sdk:main"
        c.heartbeat(id="full-agent")  # fire-and-forget goes over HTTP too
        assert c.agent_get(id="full-agent")["agent"]["id"] == "full-agent"

        async def over_async() -> dict:
            async with AsyncClient(d.config) as ac:
                return await ac.port_claim(id="full:async:main")

        assert asyncio.run(over_async())["id"] == "full:async:main"
        counters = d.client(transport="http").daemon_metrics()["counters"]
        assert counters["refused_connections"] > refused_before  # they did try IPC first

        # Only when HTTP fails too does the error speak, and it says what happened to both.
        lost = Client(dataclasses.replace(d.config, sock=d.home / "no-such.sock", no_tcp=True))
        with pytest.raises(OpError) as err:
            lost.port_claim(id="full:nowhere:main")
        message = err.value.message
        assert "refused the IPC connection" in message and "ipc_max_connections" in message
        assert "HTTP failed too" in message and "may or may not" not in message
        with pytest.raises(OpError) as err:  # a client bound to IPC gets the refusal itself
            Client(d.config, transport="ipc").port_claim(id="full:ipc-only:main")
        assert err.value.code == "too_many_connections"
    finally:
        for proc in procs:
            stop(proc)


# -- how many bytes -------------------------------------------------------------------------
def unfinished(conv: int, chunks: int, size: int = P.MAX_PAYLOAD) -> bytes:
    """`chunks` CONTINUATION frames of a message that never gets its last frame."""
    return (P.HEADER.pack(P.CONTINUATION, conv, size) + b"\x00" * size) * chunks


def test_unfinished_messages_of_all_connections_share_one_budget(daemon_factory):
    d = daemon_factory(ipc_pending_bytes_max=MiB)
    first, second = connect(d.config.ipc), connect(d.config.ipc)
    first.sendall(unfinished(5, 12))  # 768 KiB held
    time.sleep(0.3)
    second.sendall(unfinished(6, 5))  # 320 KiB more would pass 1 MiB
    type_, conv, body = first_reply(second)
    assert (type_, conv, body["code"]) == (P.FAILURE, 6, "too_large")
    assert "ipc_pending_bytes_max" in body["error"]
    second.sendall(P.HEADER.pack(P.REQUEST, 6, 1) + b"\x00")  # its last frame: skipped with the rest
    second.sendall(P.encode(P.REQUEST, 7, {"action": "daemon.health"}))
    assert first_reply(second)[:2] == (P.INFORM_DONE, 7)
    first.close()  # its 768 KiB are freed with it
    time.sleep(0.3)
    big = P.encode(P.REQUEST, 8, {"action": "daemon.health", "pad": "x" * 300_000})
    second.sendall(big)
    assert first_reply(second)[:2] == (P.INFORM_DONE, 8)


def test_256_connections_holding_unfinished_4_mib_messages_keep_the_core_under_budget(daemon_factory):
    budget = 64 * MiB
    d = daemon_factory(ipc_max_connections=300, ipc_max_connections_per_peer=300, ipc_reserved_connections=0,
                       ipc_pending_bytes_max=budget)
    core = psutil.Process(d.core_pid())
    base = core.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], core.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    block = unfinished(3, 4 * MiB // P.MAX_PAYLOAD - 1)  # all of a 4 MiB message but its last frame
    conns = []
    started = time.monotonic()
    try:
        for _ in range(256):
            s = connect(d.config.ipc)
            s.sendall(block)
            conns.append(s)
        sent_s = time.monotonic() - started
        health = Client(d.config, transport="ipc")
        t0 = time.perf_counter()
        assert health.daemon_health()["status"] == "ok"  # answered after all of the above was read
        answer_ms = (time.perf_counter() - t0) * 1000
        time.sleep(0.5)
        done.set()
        sampler.join()
        after = core.memory_info().rss
        too_large = 0
        for s in conns:
            s.settimeout(0.05)
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            too_large += b"too_large" in data
    finally:
        for s in conns:
            s.close()
    grew = (max(peak[0], after) - base) / MiB
    print(f"\n256 x unfinished 4 MiB: core RSS {base / MiB:.0f} -> peak {peak[0] / MiB:.0f}, after {after / MiB:.0f} MiB "
          f"(+{grew:.0f} MiB; budget {budget // MiB} MiB); {too_large} refused too_large; sent in {sent_s:.1f} s; "
          f"health answered in {answer_ms:.1f} ms")
    assert grew < budget / MiB + 32, f"core RSS grew {grew:.0f} MiB"
    assert too_large >= 256 - budget // (4 * MiB)


# -- how many values ------------------------------------------------------------------------
def test_a_message_of_millions_of_values_is_refused_at_once_and_the_core_keeps_answering(daemon):
    hog, other = connect(daemon.config.ipc), connect(daemon.config.ipc)
    body = msgpack.packb({"action": "daemon.health", "pad": [{}] * 4_000_000})  # ~4 MiB of empty maps
    nested = msgpack.packb({"action": "daemon.health", "pad": [[{}] * 60_000] * 64})
    assert len(body) < daemon.config.ipc_max_message
    for conv, payload in ((11, body), (12, nested)):
        t0 = time.perf_counter()
        hog.sendall(P.encode_body(P.REQUEST, conv, payload))
        other.sendall(P.encode(P.REQUEST, conv, {"action": "daemon.health"}))
        assert first_reply(other)[:2] == (P.INFORM_DONE, conv)
        other_ms = (time.perf_counter() - t0) * 1000
        type_, got_conv, reply = first_reply(hog)
        refused_ms = (time.perf_counter() - t0) * 1000
        print(f"\n{len(payload) / MiB:.1f} MiB of empty maps ({'nested' if conv == 12 else 'flat'}): refused in "
              f"{refused_ms:.0f} ms; another client answered in {other_ms:.0f} ms")
        assert (type_, got_conv, reply["code"]) == (P.FAILURE, conv, "too_large")
        assert "ipc_max_elements" in reply["error"]
        assert refused_ms < 400 and other_ms < 400
    hog.sendall(P.encode(P.REQUEST, 13, {"action": "daemon.health"}))  # not a strike: still served
    assert first_reply(hog)[:2] == (P.INFORM_DONE, 13)


def test_waiting_calls_are_capped_per_connection_and_per_daemon(daemon_factory):
    d = daemon_factory(park_max_per_connection=4, park_max=6)
    name = f"parkcap-{os.getpid()}-{time.monotonic_ns()}"
    with d.client(transport="ipc") as holder:
        holder.lock_acquire(name=name, owner="holder")

        async def scenario() -> tuple[list, list]:
            a, b = AsyncClient(d.config), AsyncClient(d.config)
            try:
                waits = [asyncio.ensure_future(a.lock_acquire(name=name, owner=f"a{i}", wait=20_000))
                         for i in range(4)]
                await asyncio.sleep(0.5)  # all four parked on a's connection
                with pytest.raises(OpError) as per_conn:
                    await a.lock_acquire(name=name, owner="a-extra", wait=20_000)
                more = [asyncio.ensure_future(b.lock_acquire(name=name, owner=f"b{i}", wait=20_000))
                        for i in range(2)]
                await asyncio.sleep(0.5)  # six parked in all: the daemon's cap
                with pytest.raises(OpError) as per_daemon:
                    await b.lock_acquire(name=name, owner="b-extra", wait=20_000)
                # a refused call did not park: the six that did are still served one by one
                for _ in range(6):
                    await asyncio.to_thread(_release_next, d, name)
                served = await asyncio.wait_for(asyncio.gather(*waits, *more), 20)
                return [per_conn.value, per_daemon.value], served
            finally:
                await a.close()
                await b.close()

        refusals, served = asyncio.run(scenario())
    assert [(e.code, e.extra.get("limit")) for e in refusals] == [
        ("too_many_parked", "park_max_per_connection"), ("too_many_parked", "park_max")]
    assert len({r["fence"] for r in served}) == 6


def _release_next(d, name: str) -> None:
    """Release the lock whoever holds it now, once it has a holder."""
    with d.client(transport="ipc") as c:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            held = c.lock_get(name=name)
            owner = held.get("owner") or (held.get("lock") or {}).get("owner")
            if owner:
                c.lock_release(name=name, owner=owner)
                return
            time.sleep(0.02)
    raise AssertionError(f"nobody took {name}")
