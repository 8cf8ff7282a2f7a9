"""pd arbiter status | violations: the six invariants and what broke them (docs/arbiter.md)."""

from __future__ import annotations

import time

import click

from cli.common import call, output, output_options, table

RULE_COLUMNS = [("invariant", "#"), ("name", "RULE"), ("severity", "SEVERITY"), ("violations", "VIOLATIONS"),
                ("strictModeAction", "IN STRICT MODE")]
VIOLATION_COLUMNS = [("id", "ID"), ("at", "WHEN"), ("rule", "RULE"), ("severity", "SEVERITY"), ("agentId", "WHO"),
                     ("target", "WHAT"), ("action", "ACTION"), ("details", "DETAILS")]


def _at(ms: int | None) -> str:
    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


@click.group()
def arbiter() -> None:
    """Runtime invariants: pid squatting, capability escalation, notes, locks, heartbeats."""


@arbiter.command("status")
@output_options
def status() -> None:
    """The invariants, their violation counts, strict mode and agents overboard."""
    result = call("arbiter.status")

    def human(r: dict) -> str:
        mode = "strict (critical violations throw the agent overboard)" if r["strictMode"] else "observe only"
        lines = [f"arbiter: {mode}; {r['violationsCount']} violation(s); last sweep {_at(r.get('lastSweepAt'))}",
                 table(r["rules"], RULE_COLUMNS)]
        if r["overboard"]:
            lines.append("overboard (writes refused until they register again): "
                         + ", ".join(f"{o['agentId']} ({o['rule']})" for o in r["overboard"]))
        return "\n".join(lines)

    output(result, human, quiet=result["violationsCount"])


@arbiter.command("violations")
@click.option("--rule", help="Only this rule (PID_SQUATTING, CAP_ESCALATION, NOTE_MONOTONICITY, ...).")
@click.option("--agent", help="Only violations by this agent.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@output_options
def violations(rule: str | None, agent: str | None, limit: int) -> None:
    """Recorded violations, newest first: who, what, when."""
    result = call("arbiter.violations", rule=rule, agentId=agent, limit=limit)
    rows = [{**v, "at": _at(v["timestamp"])} for v in result["violations"]]
    output(result, lambda r: table(rows, VIOLATION_COLUMNS, empty="no violations"), quiet=result["total"])


def register(cli: click.Group) -> None:
    cli.add_command(arbiter)
