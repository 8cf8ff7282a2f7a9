"""Who may call (docs/security.md): the TCP port wants the home's token, the dashboard gets in
through one-time links, the token rotates, and a second local user is refused at every door.

The second-user tests need root (to create the user and drop to it in a forked child); CI runs
as root, elsewhere they are skipped. The hostile child uses raw sockets only: it cannot import
or run anything from the checkout once it is no longer root.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from pdcore import protocol as P
from pdcore.auth import cookie_name
from pdcore.config import HOME_HEADER
from pdcore.ops import CATALOGUE
from tests.conftest import REPO, Daemon

HOSTILE_USER = "pdtestuser"


def request(d: Daemon, method: str, path: str, headers: dict | None = None,
            body: object = None) -> tuple[int, dict, dict]:
    """One TCP request; (status, headers with lower-case names, JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, (json.loads(raw) if raw else {})
    finally:
        conn.close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def dashboard_link(d: Daemon) -> str:
    """The path of a fresh `pd dashboard` link (printed by the CLI, browser not opened)."""
    out = d.pd("dashboard", "--no-open", "-q")
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    prefix = f"http://127.0.0.1:{d.port}"
    assert url.startswith(prefix + "/auth/dashboard?ticket="), url
    return url[len(prefix):]


# -- the token on TCP ----------------------------------------------------------------------------

def test_tcp_without_the_token_is_a_json_401_that_says_where_the_token_is(daemon):
    before = daemon.client().call("port.list")["count"]
    for method, path, body in (("GET", "/services", None), ("POST", "/claim", {"id": "authtest:nope"}),
                               ("GET", "/", None), ("GET", "/config", None), ("GET", "/openapi.json", None)):
        status, headers, reply = request(daemon, method, path, body=body)
        assert status == 401, (path, reply)
        assert reply["success"] is False and reply["code"] == "unauthorized" and reply["field"] == "Authorization"
        assert str(daemon.home / "auth.token") in reply["error"] and "Authorization: Bearer" in reply["error"]
        assert headers["www-authenticate"].startswith("Bearer")
        assert HOME_HEADER.lower() not in headers
    assert daemon.client().call("port.list")["count"] == before


def test_a_wrong_token_is_refused_and_the_right_one_is_served(daemon):
    status, _, reply = request(daemon, "GET", "/services", bearer("not-the-token"))
    assert status == 401 and reply["code"] == "unauthorized" and "rotated" in reply["error"]
    status, _, reply = request(daemon, "GET", "/services", bearer(daemon.token[:-1]))
    assert status == 401
    status, headers, reply = request(daemon, "POST", "/claim", bearer(daemon.token), {"id": "authtest:web"})
    assert status == 200 and reply["port"] > 0
    assert HOME_HEADER.lower() in headers
    status, _, _ = request(daemon, "GET", "/services", {"Authorization": f"bearer {daemon.token}"})
    assert status == 200  # the scheme is case-insensitive


def test_health_without_the_token_says_ok_and_nothing_about_the_home(daemon):
    status, headers, reply = request(daemon, "GET", "/health")
    assert (status, reply) == (200, {"success": True, "status": "ok"})
    assert HOME_HEADER.lower() not in headers
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request("HEAD", "/health")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200 and resp.getheader(HOME_HEADER) is None
    status, headers, reply = request(daemon, "GET", "/health", bearer(daemon.token))
    assert status == 200 and {"version", "uptime", "pid"} <= set(reply) and HOME_HEADER.lower() in headers


def test_port_daddy_token_in_the_environment_overrides_the_file(daemon, tmp_path):
    """A client that finds no socket goes over TCP, sending PORT_DADDY_TOKEN rather than auth.token."""
    env = {**daemon.env, "PORT_DADDY_SOCK": str(tmp_path / "none.sock"), "PORT_DADDY_IPC": str(tmp_path / "none.ipc")}
    script = "from pdcore.client import Client; print(Client().call('port.list')['count'])"
    good = subprocess.run([sys.executable, "-c", script], env={**env, "PORT_DADDY_TOKEN": daemon.token},
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert good.returncode == 0 and good.stdout.strip().isdigit(), good.stderr
    bad = subprocess.run([sys.executable, "-c", script], env={**env, "PORT_DADDY_TOKEN": "wrong"},
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode != 0 and "refused this home's token" in bad.stderr, bad.stderr


# -- the dashboard's one-time links ---------------------------------------------------------------

def test_a_dashboard_link_works_once_and_its_cookie_opens_the_dashboard(daemon):
    link = dashboard_link(daemon)
    status, headers, _ = request(daemon, "GET", link)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    name = cookie_name(daemon.port)
    assert cookie.startswith(name + "=")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert daemon.token not in cookie  # the cookie is derived from the token, never the token
    jar = {"Cookie": cookie.split(";")[0]}
    page = _raw_get(daemon, "/", jar)
    assert page.status == 200 and "text/html" in page.getheader("Content-Type", "")
    page.read()
    status, _, reply = request(daemon, "GET", "/services", jar)
    assert status == 200 and reply["success"]
    status, _, reply = request(daemon, "GET", link)  # the same link again
    assert status == 401 and reply["code"] == "unauthorized" and "pd dashboard" in reply["error"]
    status, _, _ = request(daemon, "GET", "/services", {"Cookie": f"{name}=forged"})
    assert status == 401


def _raw_get(d: Daemon, path: str, headers: dict) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    conn.request("GET", path, headers=headers)
    return conn.getresponse()


def test_an_expired_dashboard_link_is_refused(daemon_factory):
    d = daemon_factory(dashboard_ticket_ttl_ms=300)
    link = dashboard_link(d)
    time.sleep(0.5)
    status, headers, reply = request(d, "GET", link)
    assert status == 401 and reply["code"] == "unauthorized" and "set-cookie" not in headers
    status, _, _ = request(d, "GET", dashboard_link(d))  # a fresh one still works
    assert status == 303


def test_a_ticket_is_redeemed_only_by_the_http_side(daemon):
    ticket = daemon.client().call("daemon.dashboard_ticket")["ticket"]
    with pytest.raises(Exception) as info:
        daemon.client().call("daemon.dashboard_redeem", ticket=ticket)
    assert getattr(info.value, "code", None) == "forbidden"
    status, _, _ = request(daemon, "GET", f"/auth/dashboard?ticket={ticket}")  # still unused: it works
    assert status == 303


# -- rotation ----------------------------------------------------------------------------------------

def test_rotating_the_token_takes_effect_without_a_restart(fresh_daemon):
    d = fresh_daemon
    old = d.token
    link = dashboard_link(d)
    cookie = request(d, "GET", link)[1]["set-cookie"].split(";")[0]
    assert request(d, "GET", "/services", {"Cookie": cookie})[0] == 200
    out = d.pd("token", "rotate", "-q")
    assert out.returncode == 0, out.stderr
    new = out.stdout.strip()
    assert new == d.token != old and d.pd("token", "-q").stdout.strip() == new
    assert (d.home / "auth.token").stat().st_mode & 0o777 == 0o600
    assert request(d, "GET", "/services", bearer(new))[0] == 200  # at once
    rotated_at = time.monotonic()
    # Every worker drops the old token and cookie within TokenKeys.recheck_s (1 s): ask a few
    # times on new connections, so each worker has been asked.
    for stale in (bearer(old), {"Cookie": cookie}):
        while any(request(d, "GET", "/services", stale)[0] != 401 for _ in range(6)):
            assert time.monotonic() - rotated_at < 5, f"{stale} still works 5 s after rotation"
            time.sleep(0.1)
    assert time.monotonic() - rotated_at < 3
    assert d.pd("claim", "authtest:rotated", "-q").returncode == 0  # the CLI goes on working
    assert d.pd("token", "path", "-q").stdout.strip() == str(d.home / "auth.token")


# -- operations that run commands -----------------------------------------------------------------

def test_operations_that_run_commands_are_marked_and_backup_has_no_route():
    marked = {name for name, op in CATALOGUE.items() if op.runs_commands}
    assert {"spawn.create", "fleet.register", "fleet.run", "webhook.register", "webhook.update",
            "webhook.test"} <= marked
    for op in CATALOGUE.values():
        for route in op.routes:
            assert "backup" not in route.path and "restore" not in route.path, (op.name, route)
        assert "backup" not in op.name and "restore" not in op.name


# -- a second local user -------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating and becoming a second user needs root")


def hostile_user() -> pwd.struct_passwd:
    """The second local user (created once: `useradd` is idempotent here)."""
    try:
        return pwd.getpwnam(HOSTILE_USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", HOSTILE_USER],
                       check=True, capture_output=True, timeout=30)
        return pwd.getpwnam(HOSTILE_USER)


@pytest.fixture
def exposed_daemon(daemon_factory):
    """A daemon whose two Unix sockets sit in a 0755 folder with mode 0666 (leaked permissions), so
    only the peer-uid check stands between another user and them."""
    folder = Path(tempfile.mkdtemp(prefix="pd-open-"))
    os.chmod(folder, 0o755)
    d = Daemon(ipc_rate_limit=0)
    d.env["PORT_DADDY_SOCK"] = str(folder / "daemon.sock")
    d.env["PORT_DADDY_IPC"] = str(folder / "daemon.ipc")
    d.start()
    for name in ("daemon.sock", "daemon.ipc"):
        os.chmod(folder / name, 0o666)
    yield d, folder
    d.stop()
    shutil.rmtree(folder, ignore_errors=True)


def run_as(user: pwd.struct_passwd, attempt) -> dict:
    """Run `attempt()` in a forked child that became `user`; return what it reported (JSON)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            report = {"uid": os.getuid(), **attempt()}
        except BaseException as exc:  # report, never raise into the forked pytest
            report, code = {"crash": repr(exc)}, 1
        os.write(write_end, json.dumps(report).encode())
        os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks))
    assert "crash" not in report, report
    assert report["uid"] == user.pw_uid
    return report


def raw_http(connect: tuple, method: str, path: str, body: dict | None, headers: dict | None = None) -> list:
    """An HTTP/1.0 request on a fresh socket; [status, reply body text] or ["error", why]."""
    family, address = connect
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(address)
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    except OSError as exc:
        return ["error", repr(exc)]
    finally:
        s.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return [int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode(errors="replace")]


def raw_ipc(path: str, action: str, args: dict) -> list:
    """One REQUEST frame on daemon.ipc: ["reply", frame type, payload] or ["closed", why]."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
        s.sendall(P.encode(P.REQUEST, 1, {"action": action, **args}))
        decoder = P.FrameDecoder(1 << 20)
        while True:
            data = s.recv(65536)
            if not data:
                return ["closed", "eof"]
            for item in decoder.feed(data):
                if isinstance(item, P.ProtocolError):
                    return ["closed", str(item)]
                type_, conv, body = item
                if conv == 1:
                    return ["reply", type_, P.unpack_payload(body)]
    except OSError as exc:
        return ["closed", repr(exc)]
    finally:
        s.close()


def state_snapshot(d: Daemon) -> dict:
    """Everything a hostile call could change, read as the owner."""
    c = d.client()
    activity = c.call("activity.list", limit=1)["activities"]
    return {
        "services": c.call("port.list")["services"],
        "sessions": c.call("session.list")["sessions"],
        "spawns": c.call("spawn.list")["agents"],
        "agents": c.call("agent.list")["agents"],
        "locks": c.call("lock.list")["locks"],
        "webhooks": c.call("webhook.list")["webhooks"],
        "lastActivity": activity[0]["id"] if activity else None,
    }


def marker_task(marker: Path) -> dict:
    return {"backend": "custom", "task": f"touch {marker}", "workdir": "/tmp"}


@needs_root
def test_a_second_user_is_refused_on_tcp_and_daemon_sock_and_changes_nothing(exposed_daemon):
    d, folder = exposed_daemon
    user = hostile_user()
    marker = Path(tempfile.gettempdir()) / f"pd-hostile-{uuid.uuid4().hex}"
    d.client().call("port.claim", id="owner:web")
    before = state_snapshot(d)
    tcp = (socket.AF_INET, ("127.0.0.1", d.port))
    unix = (socket.AF_UNIX, str(folder / "daemon.sock"))
    writes = (("POST", "/spawn", marker_task(marker)), ("POST", "/claim", {"id": "hostile:web"}),
              ("DELETE", "/release", {"id": "owner:web"}), ("POST", "/sessions", {"purpose": "x", "agentId": "h"}),
              ("POST", "/webhooks", {"url": "https://example.com/h"}), ("GET", "/notes", None),
              ("GET", "/auth/dashboard?ticket=guess", None))

    def attempt() -> dict:
        return {
            "tcp": [raw_http(tcp, m, p, b) for m, p, b in writes],
            "tcp_wrong_token": [raw_http(tcp, m, p, b, {"Authorization": "Bearer guess"}) for m, p, b in writes],
            "unix": [raw_http(unix, m, p, b) for m, p, b in writes],
        }

    report = run_as(user, attempt)
    for status, body in report["tcp"] + report["tcp_wrong_token"]:
        assert status == 401 and json.loads(body)["code"] == "unauthorized", (status, body)
    for status, body in report["unix"]:
        assert status == 403 and json.loads(body)["code"] == "forbidden", (status, body)
        assert f"uid {user.pw_uid}" in json.loads(body)["error"]
    time.sleep(1.0)  # a spawn that got through would have run by now
    assert not marker.exists()
    assert state_snapshot(d) == before
    # The control: the owner's own spawn of the same task does run (so the marker can appear).
    status, reply = d.http("POST", "/spawn", marker_task(marker))
    assert status == 200, reply
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < deadline, "the owner's spawn did not run"
        time.sleep(0.1)
    marker.unlink()


@needs_root
def test_a_second_user_is_refused_on_daemon_ipc(exposed_daemon):
    """The core's own peer-uid check on daemon.ipc: a REFUSE or a closed connection, nothing run."""
    d, folder = exposed_daemon
    user = hostile_user()
    marker = Path(tempfile.gettempdir()) / f"pd-hostile-{uuid.uuid4().hex}"
    d.client().call("port.claim", id="owner:api")
    before = state_snapshot(d)
    ipc = str(folder / "daemon.ipc")
    calls = (("spawn.create", marker_task(marker)), ("port.claim", {"id": "hostile:api"}),
             ("port.release", {"id": "owner:api"}), ("daemon.dashboard_ticket", {}), ("note.list", {}))

    report = run_as(user, lambda: {"ipc": [raw_ipc(ipc, action, args) for action, args in calls]})
    for outcome in report["ipc"]:
        assert outcome[0] == "closed" or outcome[1] == P.REFUSE, outcome
    time.sleep(1.0)
    assert not marker.exists()
    assert state_snapshot(d) == before
