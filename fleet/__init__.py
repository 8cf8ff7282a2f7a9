"""The fleet: pd-fleet.yml, triggers, and a psutil supervisor running background agents (SPEC.md §11)."""

from fleet.schema import AgentSpec, FleetSpec, LoadResult, Problem, find_fleet_file, load_fleet
from fleet.supervisor import Process, Program, State

__all__ = ["AgentSpec", "FleetSpec", "LoadResult", "Problem", "Process", "Program", "State", "find_fleet_file",
           "load_fleet"]
