"""Where the fleet keeps its files: agent logs under the daemon's home folder.

Fleet names, agent names and spawned agent ids come from callers; each becomes a file name
through `pdcore.paths.file_name`, so none can lead outside the home.
"""

from __future__ import annotations

from pathlib import Path

from pdcore.paths import file_name, home_file


def fleet_dir(home: Path, fleet: str) -> Path:
    return home_file(home, "fleet", name=fleet, field="fleet")


def agent_log(home: Path, fleet: str, agent: str) -> Path:
    """The log of a fleet agent: every run appends its output there."""
    return home_file(home, "fleet", file_name(fleet, "fleet"), name=agent, suffix=".log", field="agent")


def spawn_log(home: Path, agent_id: str) -> Path:
    """The log of an ad-hoc spawned agent."""
    return home_file(home, "spawn", name=agent_id, suffix=".log", field="agentId")
