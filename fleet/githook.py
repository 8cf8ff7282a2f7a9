"""The git post-commit hook: publish `git:committed` to the fleet harbor after every commit.

`pd fleet init` installs a small block in `.git/hooks/post-commit` (keeping any hook already
there). The block does nothing unless the daemon's IPC socket exists, so a commit with the
daemon down costs one `test -S`; otherwise it runs `python -m fleet.githook` in the background,
which reads the commit (hash, branch, author, subject, changed files), finds the harbor in the
fleet file, and publishes `{commit, branch, author, subject, changed_files}` on
`<harbor>:git:committed` over IPC with a short timeout, importing only the wire protocol.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

MARK_BEGIN = "# >>> port-daddy fleet (pd fleet init) >>>"
MARK_END = "# <<< port-daddy fleet <<<"
CHANNEL = "git:committed"
TIMEOUT_S = 2.0


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"git {' '.join(args)} failed")
    return proc.stdout


def commit_event(repo: Path) -> dict[str, Any]:
    """The `git:committed` message for HEAD."""
    head = _git(repo, "log", "-1", "--format=%H%x00%an <%ae>%x00%s").rstrip("\n").split("\x00")
    files = _git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", "--root", "HEAD").split("\n")
    try:
        branch = _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    except RuntimeError:
        branch = ""
    return {"commit": head[0], "branch": branch, "author": head[1] if len(head) > 1 else "",
            "subject": head[2] if len(head) > 2 else "", "changed_files": [f for f in files if f]}


def harbor_of(project_dir: Path) -> str | None:
    """The fleet harbor named by the project's fleet file (None without a fleet file)."""
    from fleet.schema import DEFAULT_HARBOR, find_fleet_file
    from fleet.variables import render

    file = find_fleet_file(project_dir)
    if file is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    if isinstance(data, dict) and isinstance(data.get("fleet"), dict):
        data = {**data, **data["fleet"]}
    if not isinstance(data, dict):
        return None
    name = str(data.get("name") or project_dir.name)
    template = data.get("harbor") if isinstance(data.get("harbor"), str) else DEFAULT_HARBOR
    return render(template, {"project": name, "project_dir": str(project_dir), "fleet": name})


def publish(ipc_path: Path, channel: str, payload: dict, sender: str = "git") -> bool:
    """Publish one message over IPC and wait for the daemon's answer; False when it cannot."""
    from pdcore import protocol as P

    frame = P.encode(P.REQUEST, 1, {"action": "msg.publish", "channel": channel, "payload": payload,
                                    "sender": sender})
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT_S)
            s.connect(str(ipc_path))
            s.sendall(frame)
            decoder = P.FrameDecoder(1 << 20)
            while True:
                data = s.recv(65536)
                if not data:
                    return False
                for item in decoder.feed(data):
                    if isinstance(item, P.ProtocolError):
                        return False
                    type_, conv, _ = item
                    if conv == 1:
                        return type_ == P.INFORM_DONE
    except OSError:
        return False


def ipc_path() -> Path:
    home = Path(os.environ.get("PORT_DADDY_HOME") or "~/.port-daddy").expanduser()
    return Path(os.environ.get("PORT_DADDY_IPC") or home / "daemon.ipc")


def main() -> int:
    """Run from the hook, in the repository's top folder. Always exits 0: a hook never blocks a commit."""
    try:
        repo = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel").strip())
        harbor = harbor_of(repo)
        if harbor is None:
            return 0
        publish(ipc_path(), f"{harbor}:{CHANNEL}", commit_event(repo))
    except Exception:  # noqa: BLE001 - never fail a commit
        pass
    return 0


# -- installing ------------------------------------------------------------------------------
def hook_block(home: Path | None = None) -> str:
    """The block added to post-commit: the interpreter, code path and home known at install time."""
    code_root = Path(__file__).resolve().parent.parent
    default_home = shlex.quote(str(home)) if home is not None else '"$HOME/.port-daddy"'
    return "\n".join([
        MARK_BEGIN,
        "# Publishes git:committed to the Port Daddy fleet harbor; does nothing when the daemon is down.",
        f'PD_HOME="${{PORT_DADDY_HOME:-{default_home}}}"',
        'PD_IPC="${PORT_DADDY_IPC:-$PD_HOME/daemon.ipc}"',
        'if [ -S "$PD_IPC" ]; then',
        f'  PORT_DADDY_HOME="$PD_HOME" PORT_DADDY_IPC="$PD_IPC" PYTHONPATH={shlex.quote(str(code_root))}'
        '"${PYTHONPATH:+:$PYTHONPATH}" \\',
        f"    {shlex.quote(sys.executable)} -m fleet.githook </dev/null >/dev/null 2>&1 &",
        "fi",
        MARK_END,
        "",
    ])


def hooks_dir(repo: Path) -> Path:
    """The repository's hooks folder (honours core.hooksPath)."""
    path = Path(_git(repo, "rev-parse", "--git-path", "hooks").strip())
    return path if path.is_absolute() else (repo / path)


def install_hook(repo: Path, home: Path | None = None) -> tuple[Path, str]:
    """Install (or refresh) the block in post-commit; return the hook path and what was done."""
    folder = hooks_dir(repo)
    folder.mkdir(parents=True, exist_ok=True)
    hook = folder / "post-commit"
    block = hook_block(home)
    if hook.exists():
        text = hook.read_text()
        if MARK_BEGIN in text and MARK_END in text:
            start = text.index(MARK_BEGIN)
            end = text.index(MARK_END) + len(MARK_END)
            new = text[:start] + block.rstrip("\n") + text[end:]
            action = "updated"
        else:
            new = text.rstrip("\n") + "\n\n" + block
            action = "added to the existing hook"
    else:
        new = "#!/bin/sh\n" + block
        action = "installed"
    hook.write_text(new)
    hook.chmod(hook.stat().st_mode | 0o755)
    return hook, action


if __name__ == "__main__":
    sys.exit(main())
