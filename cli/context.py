"""The current agent and session of this terminal, so `pd note "..."` after `pd begin` needs no ids.

A terminal is its login session: every command typed in one terminal shares the session id
(`os.getsid`) of the shell that leads it, while two terminals, even in the same folder, have
two. The context lives in `<home>/contexts/<sid>.json` (0600) with the leader's start time, so
a file left by a closed terminal whose sid was later reused is not picked up.
`PORT_DADDY_AGENT` and `PORT_DADDY_SESSION` override the file (`eval "$(pd begin ... --export)"`
pins a context into one shell and its children, e.g. an agent whose tool calls run in fresh
sessions).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pdcore.procs import process_start, same_start

ENV_AGENT = "PORT_DADDY_AGENT"
ENV_SESSION = "PORT_DADDY_SESSION"
_SEGMENT_BAD = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class TerminalContext:
    agent_id: str | None = None
    session_id: str | None = None
    identity: str | None = None
    source: str = "none"  # "env", "file", "env+file" or "none"


def terminal_key() -> tuple[int, float | None]:
    """This terminal: the session id of our process and the start time of its leader."""
    try:
        sid = os.getsid(0)
    except OSError:
        sid = os.getppid()
    return sid, process_start(sid)


def _dir(home: Path) -> Path:
    return Path(home) / "contexts"


def _file(home: Path, sid: int) -> Path:
    return _dir(home) / f"{sid}.json"


def load(home: Path) -> TerminalContext:
    """The context of this terminal: environment first, then this terminal's file."""
    env_agent, env_session = os.environ.get(ENV_AGENT) or None, os.environ.get(ENV_SESSION) or None
    saved: dict = {}
    sid, leader_start = terminal_key()
    path = _file(home, sid)
    saved = _saved(path)
    if saved and not same_start(saved.get("leaderStart"), leader_start):
        saved = {}  # left by an earlier terminal that had the same session id
        with contextlib.suppress(OSError):
            path.unlink()
    if env_agent and saved.get("agentId") not in (None, env_agent):
        saved = {}  # the environment names another agent: the file's session is not its session
    agent = env_agent or saved.get("agentId")
    session = env_session or saved.get("sessionId")
    if env_agent or env_session:
        source = "env+file" if saved else "env"
    else:
        source = "file" if saved else "none"
    return TerminalContext(agent, session, saved.get("identity"), source)


def _saved(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def save(home: Path, agent_id: str | None, session_id: str | None, identity: str | None = None) -> Path:
    """Remember the agent and session of this terminal (atomically, private to the user).

    An agent pinned by $PORT_DADDY_AGENT lives in the environment: it does not overwrite the
    terminal's own context when that belongs to another agent (two agents sharing a terminal,
    one of them pinned with `eval "$(pd begin ... --export)"`)."""
    folder = _dir(home)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    sid, leader_start = terminal_key()
    path = _file(home, sid)
    if agent_id is not None and os.environ.get(ENV_AGENT) == agent_id:
        other = _saved(path).get("agentId")
        if other not in (None, agent_id):
            return path
    tmp = folder / f".{sid}.{os.getpid()}.tmp"
    body = json.dumps({"agentId": agent_id, "sessionId": session_id, "identity": identity, "sid": sid,
                       "leaderStart": leader_start, "cwd": os.getcwd(), "savedAt": int(time.time() * 1000)})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    prune(home)
    return path


def clear(home: Path, agent_id: str | None = None, session_id: str | None = None) -> None:
    """Forget this terminal's context after `pd done` ended `agent_id` / `session_id`.

    Only when the context is the one that ended (or when no ids are given): ending an agent
    pinned by the environment leaves another agent's terminal context alone."""
    sid, _ = terminal_key()
    path = _file(home, sid)
    if agent_id is not None or session_id is not None:
        saved = _saved(path)
        if saved and saved.get("agentId") != agent_id and saved.get("sessionId") != session_id:
            return
    with contextlib.suppress(OSError):
        path.unlink()


def prune(home: Path) -> int:
    """Remove the context files of terminals that are gone; return how many."""
    removed = 0
    folder = _dir(home)
    if not folder.is_dir():
        return 0
    for path in folder.glob("*.json"):
        saved = _saved(path)
        sid = int(path.stem) if path.stem.isdigit() else -1
        if not saved or sid < 0 or not same_start(saved.get("leaderStart"), process_start(sid)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def default_identity(cwd: Path | None = None) -> str | None:
    """The project of the current folder: `.portdaddyrc`'s project, else the repository or folder name."""
    here = Path(cwd or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        rc = folder / ".portdaddyrc"
        if rc.is_file():
            try:
                project = json.loads(rc.read_text()).get("project")
            except (OSError, ValueError, AttributeError):
                project = None
            if isinstance(project, str) and project:
                return _segment(project)
            return _segment(folder.name)
        if (folder / ".git").exists():
            return _segment(folder.name)
    return _segment(here.name)


def _segment(name: str) -> str | None:
    text = _SEGMENT_BAD.sub("-", name).strip("-")[:64]
    return text or None
