"""Agents, salvage, sessions, notes, file claims, inbox and services shared by two daemons (two
homes standing for two hosts) through a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from pdcore.errors import OpError
from pdcore.team.locks import lock_kv_key
from tests.team.conftest import team_settings, wait_team_ready

NOTES_CAP = 16 * 1024  # team_notes_max_bytes of the notes test
INBOX_CAP = 4096  # team_inbox_max_bytes of the inbox test


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def _wait_for(predicate, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


@pytest.fixture
def team_key(tmp_path):
    path = tmp_path / "team.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def _pair(nats_server, space: str, team_key, **more):
    settings = team_settings([nats_server.url], space, team_key_file=str(team_key), reaper_interval_ms=300,
                             team_heartbeat_ms=300, **more)
    return settings


def _a_and_b_behind(proxy, daemon_factory, settings: dict):
    """Daemons host-a (straight to NATS) and host-b (through `proxy`, which a test cuts), both ready."""
    a = daemon_factory(**settings, team_host_id="host-a")
    b = daemon_factory(**{**settings, "team_servers": proxy.url}, team_host_id="host-b")
    wait_team_ready(a), wait_team_ready(b)
    return a, b


def _entry(client, agent: str) -> dict | None:
    return next((e for e in client.call("salvage.list")["entries"] if e["agentId"] == agent), None)


def test_an_agent_dead_on_a_reaches_salvage_on_b_and_exactly_one_claimer_wins(nats_server, daemon_factory, team_key):
    settings = _pair(nats_server, "salv", team_key)
    a, b = daemon_factory(**settings, team_host_id="host-a"), daemon_factory(**settings, team_host_id="host-b")
    wait_team_ready(a), wait_team_ready(b)
    ca, cb = a.client(), b.client()
    proc = _sleeper()
    try:
        ca.call("sugar.begin", purpose="migrate the db", identity="shop:api", agentId="victim", pid=proc.pid,
                files=["src/db/*.sql"])
        seen = _wait_for(lambda: next((x for x in cb.call("agent.list")["agents"] if x["id"] == "victim"), None), 10)
        assert seen is not None and seen["host"] == "host-a" and seen["status"] == "alive"
        proc.kill()
        proc.wait()
        entry = _wait_for(lambda: _entry(cb, "victim"), 15)
        assert entry is not None, a.log_tail()
        assert entry["status"] == "pending" and entry["files"] == ["src/db/*.sql"] and entry["project"] == "shop"
        dead = _wait_for(lambda: cb.call("agent.get", id="victim")["agent"]["status"] == "dead", 10)
        assert dead
    finally:
        proc.kill()
    # both hosts claim at once: exactly one claimer wins across the team. heir-a's claim is sent
    # twice to A and once to B with one requestId (repeats while the first try is in flight, on
    # the same host and on another): it is one take, so all get its one answer, or already_claimed.
    calls = ((a, "heir-a", "rid-a"), (b, "heir-b", "rid-b"), (b, "heir-a", "rid-a"), (a, "heir-a", "rid-a"))
    results: list = []
    barrier = threading.Barrier(len(calls))

    def claim(daemon, who: str, rid: str) -> None:
        client = daemon.client()
        barrier.wait()
        try:
            results.append(("ok", rid, client.call("salvage.claim", agentId="victim", claimedBy=who, requestId=rid)))
        except OpError as exc:
            results.append(("err", rid, exc.code))

    threads = [threading.Thread(target=claim, args=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wins = [r for r in results if r[0] == "ok"]
    assert len(results) == len(calls) and {r[1] for r in wins} in ({"rid-a"}, {"rid-b"}), results
    assert all(r[2] == "already_claimed" for r in results if r[0] == "err"), results
    rid, first = wins[0][1], next(r[2] for r in wins if not r[2].get("repeated"))
    assert len(wins) == (3 if rid == "rid-a" else 1) and sum(bool(r[2].get("repeated")) for r in wins) == len(wins) - 1
    for r in wins:
        assert {k: v for k, v in r[2].items() if k != "repeated"} == first, results
    winner = first["claimedBy"]
    assert first["inheritedFiles"] == ["src/db/*.sql"]
    claimed = _wait_for(lambda: (_entry(ca, "victim") or {}).get("claimedBy") == winner
                        and (_entry(cb, "victim") or {}).get("claimedBy") == winner, 10)
    assert claimed
    # the winning take repeated later on either host: its first answer, not already_claimed
    for client in (ca, cb):
        again = client.call("salvage.claim", agentId="victim", claimedBy=winner, requestId=rid)
        assert again["repeated"] and {k: v for k, v in again.items() if k != "repeated"} == first
        with pytest.raises(OpError) as other:  # the same id with other arguments is refused, as in local mode
            client.call("salvage.claim", agentId="victim", claimedBy="someone-else", requestId=rid)
        assert other.value.code == "conflict"
        with pytest.raises(OpError) as other:  # or for another take
            client.call("tuple.in", pattern=["x"], requestId=rid)
        assert other.value.code == "conflict"
    assert "claim" not in _entry(cb, "victim")  # the take record is not shown


def test_a_daemon_killed_with_kill_9_has_its_agents_declared_dead_team_wide(nats_server, daemon_factory, team_key):
    settings = _pair(nats_server, "host9", team_key, team_host_timeout_ms=2000)
    a, b = daemon_factory(**settings, team_host_id="host-a"), daemon_factory(**settings, team_host_id="host-b")
    c_extra = daemon_factory(**settings, team_host_id="host-c")
    wait_team_ready(a), wait_team_ready(b), wait_team_ready(c_extra)
    ca = a.client()
    proc = _sleeper()
    try:
        for i in range(3):
            ca.call("sugar.begin", purpose=f"work {i}", identity="shop:web", agentId=f"worker-{i}", pid=proc.pid,
                    files=[f"web/{i}/**"])
        cb, cc = b.client(), c_extra.client()
        assert _wait_for(lambda: len([x for x in cb.call("agent.list")["agents"] if x.get("host") == "host-a"]) == 3,
                         10)
        os.killpg(a.proc.pid, signal.SIGKILL)  # the whole daemon: supervisor, core, workers
        a.proc.wait(10)
        started = time.monotonic()

        def all_dead() -> bool:
            agents = [x for x in cb.call("agent.list")["agents"] if x.get("host") == "host-a"]
            return len(agents) == 3 and all(x["status"] == "dead" for x in agents)

        assert _wait_for(all_dead, 20), b.log_tail()
        took = time.monotonic() - started
        assert took >= 1.5  # not before the host timeout
        entries = _wait_for(lambda: [e for e in cc.call("salvage.list")["entries"] if e["agentId"].startswith("worker-")]
                            if len([e for e in cc.call("salvage.list")["entries"]
                                    if e["agentId"].startswith("worker-")]) == 3 else None, 10)
        assert entries is not None and sorted(e["files"][0] for e in entries) == ["web/0/**", "web/1/**", "web/2/**"]
        declared = {e["declaredBy"] for e in entries}
        assert declared <= {"host-b", "host-c"}
        for x in cb.call("agent.list")["agents"]:
            if x.get("host") == "host-a":
                assert x["declaredBy"] in ("host-b", "host-c")
        # their claims leave the team (the declarer drops them just after queueing the salvage entry):
        # another host may then claim the same files strictly; a refused strict begin changes nothing

        def take_over() -> dict | None:
            try:
                return cb.call("sugar.begin", purpose="take over", identity="shop:web", agentId="heir",
                               files=["web/**"], strict=True)
            except OpError as exc:
                if exc.code != "file_conflict":
                    raise
                return None

        got = _wait_for(take_over, 5, step=0.1)
        assert got is not None and got["sessionId"]
    finally:
        proc.kill()


def _fake_hosts(url: str, space: str, skews: dict[str, int], agents: dict[str, str], stop: threading.Event) -> None:
    """Hosts that beat every 0.2 s until `stop` (nats-py, no daemon), each writing `ts` = its clock, off
    by `skews[host]` ms; `agents` (id -> host) are written once as alive agents of those hosts."""
    import nats

    async def run() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            hosts, agent_kv = await js.key_value(f"pd-{space}-hosts"), await js.key_value(f"pd-{space}-agents")

            async def beat() -> None:
                now = int(time.time() * 1000)
                for host, skew in skews.items():
                    await hosts.put(host, json.dumps({"host": host, "hostname": host, "pid": 1, "ts": now + skew}).encode())

            await beat()
            await asyncio.sleep(0.2)
            for agent, host in agents.items():
                record = {"id": agent, "agentId": agent, "host": host, "status": "alive", "liveness": "alive",
                          "isActive": True, "diedAt": None, "registeredAt": int(time.time() * 1000), "sessionId": None}
                await agent_kv.put(lock_kv_key(agent), json.dumps(record).encode())
            while not stop.is_set():
                await beat()
                await asyncio.sleep(0.2)
        finally:
            await nc.close()

    asyncio.run(run())


def test_a_host_is_judged_by_when_its_beats_arrive_here_not_by_its_own_clock(nats_server, daemon_factory, team_key):
    settings = _pair(nats_server, "skew", team_key, team_host_timeout_ms=1000)
    judge = daemon_factory(**settings, team_host_id="judge")
    wait_team_ready(judge)
    c = judge.client()
    stop = threading.Event()
    # one host's clock an hour behind, one's an hour ahead: only when their beats arrive counts
    beater = threading.Thread(target=_fake_hosts, args=(nats_server.url, "skew", {"behind": -3_600_000,
                              "ahead": 3_600_000}, {"slow-1": "behind", "fast-1": "ahead"}, stop))
    beater.start()
    ids = ("slow-1", "fast-1")
    try:
        assert _wait_for(lambda: {x["id"] for x in c.call("agent.list")["agents"]} >= set(ids), 5)
        watched_until = time.monotonic() + 1.5  # past the host timeout, the judge connected longer than it
        while time.monotonic() < watched_until:
            statuses = {i: c.call("agent.get", id=i)["agent"]["status"] for i in ids}
            assert statuses == {"slow-1": "alive", "fast-1": "alive"}, statuses
            time.sleep(0.1)
        hosts = {h["host"]: h for h in c.call("team.status")["hosts"]}
        assert hosts["behind"]["alive"] and hosts["ahead"]["alive"], hosts
        assert hosts["behind"]["silentMs"] < 1000
    finally:
        stop.set()
        beater.join(10)
    stopped = time.monotonic()
    # silent now: both are declared dead about one host timeout later, whatever their clocks said
    assert _wait_for(lambda: all(c.call("agent.get", id=i)["agent"]["status"] == "dead" for i in ids), 6), \
        judge.log_tail()
    assert time.monotonic() - stopped >= 0.7
    assert {c.call("agent.get", id=i)["agent"]["declaredBy"] for i in ids} == {"judge"}
    assert not any(h["alive"] for h in c.call("team.status")["hosts"] if h["host"] in ("behind", "ahead"))


def test_a_host_cut_off_mid_write_answers_team_pending_and_keeps_the_verdict_when_back(nats_server, link_proxy,
                                                                                      daemon_factory, team_key):
    proxy = link_proxy()
    a, b = _a_and_b_behind(proxy, daemon_factory, _pair(nats_server, "back", team_key, team_host_timeout_ms=1500))
    ca, cb = a.client(timeout=30), b.client(timeout=30)
    proc = _sleeper()
    try:
        begun = cb.call("sugar.begin", purpose="long job", identity="shop:api", agentId="bob", pid=proc.pid,
                        files=["src/**"])
        sid = begun["sessionId"]
        assert "teamPending" not in begun
        assert "teamPending" not in cb.call("note.add", id=sid, content="first")
        assert _wait_for(lambda: ca.call("agent.get", id="bob")["agent"]["status"] == "alive", 10)
        # B's link stalls under a note: B wrote it, the team never acknowledges it, then the link drops
        proxy.stall()
        outcome: dict = {}
        writer = threading.Thread(target=lambda: outcome.update(reply=b.client(timeout=30).call(
            "note.add", id=sid, content="second")))
        writer.start()
        time.sleep(0.3)
        proxy.cut()
        writer.join(10)
        assert outcome["reply"]["teamPending"] is True and outcome["reply"]["noteId"], outcome
        with pytest.raises(OpError) as down:  # an op that needs the team still fails before changing anything
            cb.call("note.add", id=sid, content="never")
        assert down.value.code == "team_unavailable"
        # A stops hearing B: it declares bob dead and queues his session for salvage
        assert _wait_for(lambda: ca.call("agent.get", id="bob")["agent"].get("declaredBy") == "host-a", 10)
        assert _wait_for(lambda: _entry(ca, "bob"), 5)
        proxy.heal()
        wait_team_ready(b)
        # B is back: its resync publishes the pending note (once) and the session, ended by the verdict
        assert _wait_for(lambda: ca.call("session.get", id=sid)["session"].get("sharedNotes") == 2, 10), b.log_tail()
        got = ca.call("session.get", id=sid)
        assert got["session"]["status"] == "abandoned" and got["session"]["host"] == "host-b"
        assert [n["content"] for n in got["notes"]] == ["first", "second"]
        assert ca.call("note.verify", sessionId=sid)["ok"]
        theirs = ca.call("agent.get", id="bob")["agent"]
        assert theirs["status"] == "dead" and theirs["declaredBy"] == "host-a", theirs
        mine = cb.call("agent.get", id="bob")["agent"]
        assert mine["status"] == "dead" and "host-a" in mine["deadReason"], mine
        assert cb.call("session.get", id=sid)["session"]["status"] == "abandoned"
        for client in (ca, cb):  # one salvage entry, the declarer's; B queued none of its own
            entries = [e for e in client.call("salvage.list")["entries"] if e["agentId"] == "bob"]
            assert [(e["declaredBy"], e["status"], e["files"]) for e in entries] == [("host-a", "pending", ["src/**"])]
        with sqlite3.connect(f"file:{b.config.db_path}?mode=ro", uri=True) as db:
            assert db.execute("SELECT COUNT(*) FROM salvage").fetchone()[0] == 0
        # bob goes on as a dead agent does in local mode: his session is over, a heartbeat registers him anew
        with pytest.raises(OpError) as ended:
            cb.call("note.add", id=sid, content="late")
        assert ended.value.code == "session_ended"
        again = cb.call("heartbeat", id="bob", pid=proc.pid)
        assert again["registered"] and again["created"]
        assert _wait_for(lambda: ca.call("agent.get", id="bob")["agent"]["status"] == "alive", 5)
        # B paused rather than cut off (its connection stays up): the verdict reaches B through its watch
        os.killpg(b.proc.pid, signal.SIGSTOP)
        try:
            assert _wait_for(lambda: ca.call("agent.get", id="bob")["agent"]["status"] == "dead", 10)
        finally:
            os.killpg(b.proc.pid, signal.SIGCONT)
        mine = _wait_for(lambda: (lambda x: x if x["status"] == "dead" else None)(cb.call("agent.get", id="bob")["agent"]), 5)
        assert mine and "host-a" in mine["deadReason"], cb.call("agent.get", id="bob")
        assert ca.call("agent.get", id="bob")["agent"]["declaredBy"] == "host-a"
    finally:
        proc.kill()


def _team_session(client, sid: str) -> dict | None:
    """The session as that host sees it, or None while it has not seen it yet."""
    try:
        return client.call("session.get", id=sid)["session"]
    except OpError as exc:
        if exc.code != "not_found":
            raise
        return None


def test_what_a_host_did_while_cut_off_reaches_the_team_after_a_kill_9_and_restart(nats_server, link_proxy,
                                                                                     daemon_factory, team_key):
    # B's reaper finds its agent dead while B's link is down; B is then killed with kill -9 before the
    # link comes back, so nothing in memory remembers to publish the end. After the restart, the
    # resync compares the team's copy of B's records with B's database and publishes the end.
    proxy = link_proxy()
    settings = _pair(nats_server, "resync", team_key, team_host_timeout_ms=120_000)  # A never declares B dead here
    a, b = _a_and_b_behind(proxy, daemon_factory, settings)
    ca, cb = a.client(timeout=30), b.client(timeout=30)
    proc = _sleeper()
    try:
        sid = cb.call("sugar.begin", purpose="long job", identity="shop:api", agentId="bob", pid=proc.pid,
                      files=["src/**"])["sessionId"]
        assert _wait_for(lambda: _team_session(ca, sid) and _team_session(ca, sid)["status"] == "active", 10)
        proxy.cut()
        proc.kill()
        proc.wait()

        def ended_here() -> bool:
            with sqlite3.connect(f"file:{b.config.db_path}?mode=ro", uri=True) as db:
                row = db.execute("SELECT status FROM sessions WHERE id=?", (sid,)).fetchone()
            return row is not None and row[0] != "active"

        assert _wait_for(ended_here, 10), b.log_tail()
        os.killpg(b.proc.pid, signal.SIGKILL)
        b.proc.wait(10)
        assert ca.call("session.get", id=sid)["session"]["status"] == "active"  # the team never heard
        proxy.heal()
        b.start()
        wait_team_ready(b)
        got = _wait_for(lambda: (lambda s: s if s and s["status"] != "active" else None)(_team_session(ca, sid)), 10)
        assert got is not None and got["status"] == "abandoned" and got["host"] == "host-b", \
            ca.call("session.get", id=sid)["session"]
        assert _wait_for(lambda: ca.call("agent.get", id="bob")["agent"]["status"] == "dead", 10)
        assert _wait_for(lambda: _entry(ca, "bob"), 10)  # its salvage entry, from B's outbox
    finally:
        proc.kill()


def test_a_key_that_expired_while_the_link_was_down_leaves_the_copy_when_it_is_back(nats_server, link_proxy,
                                                                                     daemon_factory, team_key):
    # Host keys expire without a marker: a host that vanished while B's link was down must not stay
    # in B's copy of the hosts forever once B reconnects.
    import nats

    proxy = link_proxy()
    settings = _pair(nats_server, "ghost", team_key)
    b = daemon_factory(**{**settings, "team_servers": proxy.url}, team_host_id="host-b")
    wait_team_ready(b)
    cb = b.client(timeout=30)

    async def ghost_beats_once() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            record = {"host": "ghost", "hostname": "ghost", "pid": 1, "ts": int(time.time() * 1000)}
            await nc.jetstream().publish("$KV.pd-ghost-hosts.ghost", json.dumps(record).encode(), msg_ttl=1)
        finally:
            await nc.close()

    def hosts() -> set[str]:
        return {h["host"] for h in cb.call("team.status")["hosts"]}

    asyncio.run(ghost_beats_once())
    assert _wait_for(lambda: "ghost" in hosts(), 10)
    reconnects = cb.call("team.status")["reconnects"]
    proxy.cut()
    time.sleep(2.5)  # the ghost's key expires meanwhile, leaving no marker
    proxy.heal()
    assert _wait_for(lambda: cb.call("team.status")["reconnects"] > reconnects and cb.call("team.status")["ready"],
                     15), cb.call("team.status")
    assert _wait_for(lambda: "ghost" not in hosts(), 5), hosts()
    assert "host-b" in hosts()


def test_a_dead_agents_session_left_active_by_a_crashed_declarer_still_reaches_salvage(nats_server, daemon_factory,
                                                                                        team_key):
    # The team shows an agent of a vanished host dead (declared by a host that crashed right after)
    # while its session is still active and has no salvage entry. A surviving host finishes the job.
    import nats

    settings = _pair(nats_server, "orphan", team_key, team_host_timeout_ms=1000)
    a = daemon_factory(**settings, team_host_id="host-a")
    wait_team_ready(a)
    ca = a.client(timeout=30)
    now = int(time.time() * 1000)
    agent = {"id": "orphan", "agentId": "orphan", "host": "gone", "status": "dead", "liveness": "dead",
             "isActive": False, "diedAt": now - 5000, "deadReason": "host gone stopped beating",
             "declaredBy": "crashed", "registeredAt": now - 60_000, "sessionId": "session-orphan"}
    session = {"id": "session-orphan", "agentId": "orphan", "host": "gone", "status": "active", "phase": "coding",
               "identity": "shop:api", "project": "shop", "purpose": "half-done migration", "createdAt": now - 50_000,
               "files": [{"path": "src/db/*.sql"}], "sharedNotes": 0}

    async def write() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await (await js.key_value("pd-orphan-sessions")).put("session-orphan", json.dumps(session).encode())
            await (await js.key_value("pd-orphan-agents")).put(lock_kv_key("orphan"), json.dumps(agent).encode())
        finally:
            await nc.close()

    asyncio.run(write())
    entry = _wait_for(lambda: _entry(ca, "orphan"), 10)
    assert entry is not None, a.log_tail()
    assert entry["status"] == "pending" and entry["files"] == ["src/db/*.sql"] and entry["sessionId"] == "session-orphan"
    assert entry["declaredBy"] == "host-a"
    assert _wait_for(lambda: (_team_session(ca, "session-orphan") or {}).get("status") == "abandoned", 10)
    assert len([e for e in ca.call("salvage.list")["entries"] if e["agentId"] == "orphan"]) == 1


def _stream_state(url: str, stream: str) -> dict:
    """messages, bytes and messages per subject of a stream, as the server holds it now."""
    import nats

    async def read() -> dict:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(stream, subjects_filter=">")
            return {"messages": info.state.messages, "bytes": info.state.bytes,
                    "subjects": dict(info.state.subjects or {})}
        finally:
            await nc.close()

    return asyncio.run(read())


def _stream_bytes(url: str, stream: str) -> bytes:
    import nats

    async def read() -> bytes:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            out = b""
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                out += msg.subject.encode() + (msg.data or b"")
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def _session_with_notes(client, sid: str, notes: int) -> dict | None:
    """The session as `client`'s host sees it, once it holds `notes` notes (None before)."""
    try:
        got = client.call("session.get", id=sid)
    except OpError as exc:
        if exc.code == "not_found":
            return None
        raise
    return got if len(got["notes"]) >= notes else None


def test_notes_written_on_a_read_and_verify_on_b_and_the_stream_holds_no_plaintext(nats_server, daemon_factory,
                                                                                   team_key):
    # a small notes stream, and ended sessions forgotten after 3 s: the caps are checked at the end
    settings = _pair(nats_server, "notes", team_key, team_notes_max_bytes=NOTES_CAP, agent_dead_retention_ms=3000)
    a, b = daemon_factory(**settings, team_host_id="host-a"), daemon_factory(**settings, team_host_id="host-b")
    wait_team_ready(a), wait_team_ready(b)
    ca, cb = a.client(), b.client()
    begun = ca.call("sugar.begin", purpose="write notes", identity="blog:api", agentId="writer")
    sid = begun["sessionId"]
    secrets_ = [f"the launch code is swordfish-{i}" for i in range(5)]
    for text in secrets_:
        ca.call("note.add", id=sid, content=text)
    # B sees A's writes once its watch delivers them (acknowledged on A does not mean applied on B)
    got = _wait_for(lambda: _session_with_notes(cb, sid, len(secrets_)), 10)
    assert got is not None, "host B never saw the session and its notes"
    assert got["session"]["purpose"] == "write notes" and got["session"]["host"] == "host-a"
    assert [n["content"] for n in got["notes"]] == secrets_
    assert cb.call("note.verify", sessionId=sid)["ok"]
    listed = cb.call("session.list", status="active")["sessions"]
    assert sid in [s["id"] for s in listed]
    who = cb.call("sugar.whoami", agentId="writer")
    assert who["active"] and who["sessionId"] == sid and who["noteCount"] == 5
    raw = _stream_bytes(nats_server.url, "pd-notes-notes")
    assert raw and b"swordfish" not in raw and b"launch code" not in raw
    # the session ends with a closing note on A: B reads it, and the chain still verifies
    ca.call("sugar.done", agentId="writer", note="handing over: swordfish-final")
    got = _wait_for(lambda: cb.call("session.get", id=sid) if cb.call("session.get", id=sid)["session"]["status"]
                    == "completed" else None, 10)
    assert got["notes"][-1]["content"] == "handing over: swordfish-final"
    verified = cb.call("note.verify", sessionId=sid)
    assert verified["ok"] and verified["checked"] == 6
    assert b"swordfish-final" not in _stream_bytes(nats_server.url, "pd-notes-notes")
    # The notes stream is capped in bytes and refuses new notes when full rather than drop old ones:
    # the chains other hosts verify stay whole. The note that meets the full stream is kept here and
    # answered teamPending (it is durable: a retry would write it twice); later ones are refused.
    filler = ca.call("sugar.begin", purpose="fill", identity="blog:fill", agentId="filler")["sessionId"]
    written, held = 0, None
    for _ in range(40):
        reply = ca.call("note.add", id=filler, content="x" * 1000)
        if reply.get("teamPending"):
            held = reply
            break
        written += 1
    assert held is not None, "no note met the full notes stream"
    assert written >= 3
    state = _stream_state(nats_server.url, "pd-notes-notes")
    assert state["bytes"] <= NOTES_CAP
    with pytest.raises(OpError) as again:  # refused before it is written, while this host's notes wait
        ca.call("note.add", id=filler, content="one more")
    assert again.value.code == "team_full"
    got = _wait_for(lambda: _session_with_notes(cb, filler, written), 10)
    assert got is not None and cb.call("note.verify", sessionId=filler)["ok"]
    # The ended session's record expires (agent_dead_retention_ms): its notes leave the stream, which
    # makes room; the note kept back reaches the team and new notes are taken again.
    assert _wait_for(lambda: f"pd.notes.notes.{sid}" not in _stream_state(nats_server.url, "pd-notes-notes")
                     ["subjects"], 15), _stream_state(nats_server.url, "pd-notes-notes")["subjects"]

    def added() -> dict | None:
        try:
            return ca.call("note.add", id=filler, content="after the purge")
        except OpError as exc:
            assert exc.code == "team_full"
            return None

    assert _wait_for(added, 10, step=0.2)
    got = _wait_for(lambda: _session_with_notes(cb, filler, written + 2), 10)
    assert got is not None and got["notes"][-1]["content"] == "after the purge"
    verified = cb.call("note.verify", sessionId=filler)
    assert verified["ok"] and verified["checked"] == written + 2


def test_two_hosts_claiming_overlapping_globs_strictly_at_once_exactly_one_wins(nats_server, daemon_factory,
                                                                              team_key):
    settings = _pair(nats_server, "claims", team_key)
    a, b = daemon_factory(**settings, team_host_id="host-a"), daemon_factory(**settings, team_host_id="host-b")
    wait_team_ready(a), wait_team_ready(b)
    for round_ in range(10):
        sa = a.client().call("sugar.begin", purpose="a", identity="mono:x", agentId=f"a-{round_}")["sessionId"]
        sb = b.client().call("sugar.begin", purpose="b", identity="mono:y", agentId=f"b-{round_}")["sessionId"]
        results: list = []
        barrier = threading.Barrier(2)

        def claim(daemon, sid: str, files: list[str], results=results, barrier=barrier) -> None:
            client = daemon.client()
            barrier.wait()
            try:
                results.append(("ok", client.call("session.claim_files", id=sid, files=files, strict=True)))
            except OpError as exc:
                results.append(("err", exc.code))

        threads = [threading.Thread(target=claim, args=(a, sa, [f"src/{round_}/**"])),
                   threading.Thread(target=claim, args=(b, sb, [f"src/{round_}/api/*.py"]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(r[0] for r in results) == ["err", "ok"], results
        assert [r[1] for r in results if r[0] == "err"] == ["file_conflict"]
    # advisory: a cross-host overlap is reported, not refused
    sa = a.client().call("sugar.begin", purpose="adv", identity="mono:x", agentId="adv-a", files=["docs/*.md"])["sessionId"]
    got = b.client().call("sugar.begin", purpose="adv", identity="mono:y", agentId="adv-b", files=["docs/intro.md"])
    assert [c["sessionId"] for c in got["fileConflicts"]] == [sa]


def test_inbox_a_to_b_is_delivered_also_when_b_was_away(nats_server, daemon_factory, team_key):
    # the inbox stream is bounded like the local inbox (3 per agent here) and in bytes
    settings = _pair(nats_server, "inbox", team_key, inbox_max_per_agent=3, team_inbox_max_bytes=INBOX_CAP)
    a, b = daemon_factory(**settings, team_host_id="host-a"), daemon_factory(**settings, team_host_id="host-b")
    wait_team_ready(a), wait_team_ready(b)
    ca, cb = a.client(), b.client()
    cb.call("sugar.begin", purpose="listen", identity="chat:b", agentId="bob")
    assert _wait_for(lambda: ca.call("agent.get", id="bob")["agent"].get("host") == "host-b", 10)
    sent = ca.call("inbox.send", id="bob", content="hello from A", **{"from": "alice"})
    assert sent["host"] == "host-b" and sent["seq"] > 0
    got = _wait_for(lambda: cb.call("inbox.list", id="bob")["messages"], 10)
    assert [(m["content"], m["from"]) for m in got] == [("hello from A", "alice")]
    # once B stored it, B purges it: the stream keeps undelivered messages only
    assert _wait_for(lambda: _stream_state(nats_server.url, "pd-inbox-inbox")["messages"] == 0, 10)
    # B away: messages wait in the stream (the newest 3 for bob, as bob's inbox keeps them) ...
    os.killpg(b.proc.pid, signal.SIGKILL)
    b.proc.wait(10)
    for i in range(5):
        ca.call("inbox.send", id="bob", content={"while": "away", "n": i}, **{"from": "alice"})
    assert _stream_state(nats_server.url, "pd-inbox-inbox")["messages"] == 3
    # ... and a send that would pass the byte cap is refused, nothing dropped for it
    with pytest.raises(OpError) as full:
        ca.call("inbox.send", id="bob", content="y" * INBOX_CAP, **{"from": "alice"})
    assert full.value.code == "team_full"
    state = _stream_state(nats_server.url, "pd-inbox-inbox")
    assert state["messages"] == 3 and state["bytes"] <= INBOX_CAP
    # they arrive when B is back
    b.start()
    wait_team_ready(b)
    cb = b.client()
    got = _wait_for(lambda: [m["content"] for m in cb.call("inbox.list", id="bob")["messages"]]
                    == [{"while": "away", "n": n} for n in (4, 3, 2)], 15)
    assert got, [(m["id"], m["content"]) for m in cb.call("inbox.list", id="bob")["messages"]]
    assert ca.call("inbox.list", id="bob")["messages"] == []  # not a copy on the sender's host
    assert _wait_for(lambda: _stream_state(nats_server.url, "pd-inbox-inbox")["messages"] == 0, 10)


def test_find_team_lists_host_and_port_of_each_identity(nats_server, daemon_factory, team_key):
    settings = _pair(nats_server, "find", team_key)
    a, b = daemon_factory(**settings, team_host_id="host-a"), daemon_factory(**settings, team_host_id="host-b")
    wait_team_ready(a), wait_team_ready(b)
    pa = a.client().call("port.claim", id="shop:api")["port"]
    cb = b.client()
    pb = cb.call("port.claim", id="shop:web")["port"]

    def both() -> dict | None:
        found = {s["id"]: s for s in cb.call("port.list", team=True, pattern="shop:*")["services"]}
        return found if set(found) == {"shop:api", "shop:web"} else None

    found = _wait_for(both, 10)
    assert found is not None
    assert found["shop:api"]["host"] == "host-a" and found["shop:api"]["address"].endswith(f":{pa}")
    assert found["shop:web"]["host"] == "host-b" and found["shop:web"]["address"].endswith(f":{pb}")
    out = a.pd("find", "shop:*", "--team", "-q")
    assert out.returncode == 0, out.stderr
    assert f"shop:api {found['shop:api']['address']}" in out.stdout.splitlines()
    with pytest.raises(OpError) as local_only:
        daemon_factory(ipc_rate_limit=0).client().call("port.list", team=True)
    assert local_only.value.code == "invalid_argument"
