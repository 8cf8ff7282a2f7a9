"""Where the fleet keeps its files: agent logs under the daemon's home folder."""

from __future__ import annotations

from pathlib import Path


def fleet_dir(home: Path, fleet: str) -> Path:
    return Path(home) / "fleet" / fleet


def agent_log(home: Path, fleet: str, agent: str) -> Path:
    """The log of a fleet agent: every run appends its output there."""
    return fleet_dir(home, fleet) / f"{agent}.log"


def spawn_log(home: Path, agent_id: str) -> Path:
    """The log of an ad-hoc spawned agent."""
    return Path(home) / "spawn" / f"{agent_id}.log"
