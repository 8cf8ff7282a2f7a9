"""`pd fleet init`: write the starter pd-fleet.yml and install the git post-commit hook.

Shared by the CLI and the MCP server's `fleet_init` tool (both run on the user's side; the core
never writes into a project).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fleet.githook import install_hook
from fleet.schema import FLEET_FILES, SEGMENT_RE, find_fleet_file

STARTER = "pd-fleet.starter.yml"
PROJECT_TOKEN = "@@PROJECT@@"


def starter_text(project: str) -> str:
    """The starter fleet file for a project folder named `project`."""
    text = resources.files("fleet.templates").joinpath(STARTER).read_text()
    return text.replace(PROJECT_TOKEN, project)


def git_toplevel(folder: Path) -> Path | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else None


def project_root(start: Path) -> Path:
    """Where a fleet belongs: the git repository's top folder, else `start`."""
    return git_toplevel(start) or start.resolve()


@dataclass
class InitResult:
    project_dir: Path
    file: Path
    file_action: str  # written | kept (exists) | overwritten
    hook: Path | None = None
    hook_action: str = "skipped"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"projectDir": str(self.project_dir), "file": str(self.file), "fileAction": self.file_action,
                "hook": str(self.hook) if self.hook else None, "hookAction": self.hook_action, "notes": self.notes}


def init_project(project_dir: Path, force: bool = False, hook: bool = True, home: Path | None = None) -> InitResult:
    """Write pd-fleet.yml (unless one exists and not `force`) and install the post-commit hook."""
    project_dir = project_dir.resolve()
    name = project_dir.name
    if not SEGMENT_RE.match(name):
        raise ValueError(f"the project folder's name {name!r} cannot name a fleet (it must be 1-64 characters of "
                         "A-Z a-z 0-9 . _ -); rename the folder")
    existing = find_fleet_file(project_dir)
    result = InitResult(project_dir, existing or project_dir / FLEET_FILES[0], "kept")
    if existing is None or force:
        target = existing or project_dir / FLEET_FILES[0]
        target.write_text(starter_text(name))
        result.file, result.file_action = target, "overwritten" if existing else "written"
    else:
        result.notes.append(f"{existing.name} exists already; kept it (--force writes the starter over it)")
    if hook:
        if git_toplevel(project_dir) is None:
            result.hook_action = "skipped"
            result.notes.append("not a git repository, so no post-commit hook; run git init, then pd fleet init again")
        else:
            result.hook, result.hook_action = install_hook(project_dir, home)
            if result.hook_action.startswith("added"):
                result.notes.append("the hook block was added at the end of your post-commit hook; make sure "
                                    "nothing before it exits")
    return result
