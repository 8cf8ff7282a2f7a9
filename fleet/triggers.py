"""What sets an agent off: a channel, a tuple pattern, or a cron schedule.

Channel names in a fleet file are local to the fleet's harbor: `git:committed` in the fleet of
harbor `myapp:fleet` is the channel `myapp:fleet:git:committed`, so two projects' fleets never
hear each other. System channels (`pd:agents`, `pd:salvage`, ...) are global. A trigger
`tuple:[pattern]` fires on each new tuple of the harbor matching the pattern (the core publishes
every `out` on `tuple:<harbor>`). Schedules are real cron expressions evaluated by croniter in
local time; time is passed in, so the next run is computed the same way in tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from croniter import croniter

from pdcore.errors import OpError
from pdcore.ops.schema import NAME_RE
from pdcore.state.channels import channel_matches
from pdcore.state.tuplepattern import Pattern, compile_pattern
from pdcore.state.tuples import tuple_channel

GLOBAL_PREFIXES = ("pd:",)
CRON_MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
TUPLE_PREFIX = "tuple:["


def scoped_channel(harbor: str, channel: str) -> str:
    """The real channel of a fleet-local channel name."""
    if channel.startswith(GLOBAL_PREFIXES):
        return channel
    return f"{harbor}:{channel}"


def cron_problem(expr: Any) -> str | None:
    """Why `expr` is not a usable cron expression, or None when it is."""
    if not isinstance(expr, str) or not expr.strip():
        return "must be a cron expression"
    text = expr.strip()
    if text.startswith("@"):
        return None if text in CRON_MACROS else f"{text} is not a cron macro ({', '.join(sorted(CRON_MACROS))})"
    if len(text.split()) != 5:
        return f"{text!r} has {len(text.split())} fields; cron has five (minute hour day month weekday)"
    if not croniter.is_valid(text):
        return f"{text!r} is not a valid cron expression"
    return None


class CronSchedule:
    """A cron expression; `next_after(t)` is the first firing strictly after epoch second `t`."""

    def __init__(self, expr: str) -> None:
        problem = cron_problem(expr)
        if problem:
            raise ValueError(problem)
        self.expr = expr.strip()

    def next_after(self, t: float) -> float:
        base = datetime.fromtimestamp(t).astimezone()  # local time, DST-aware
        return float(croniter(self.expr, base).get_next(float))

    def __repr__(self) -> str:
        return f"CronSchedule({self.expr!r})"


@dataclass(frozen=True)
class Trigger:
    """A parsed `trigger:` value: a fleet-local channel (or pattern), or a tuple pattern."""

    text: str
    channel: str | None = None
    pattern: Pattern | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return "tuple" if self.pattern is not None else "channel"

    def real_channel(self, harbor: str) -> str:
        """The channel to subscribe to."""
        return tuple_channel(harbor) if self.pattern is not None else scoped_channel(harbor, self.channel or "")


def parse_trigger(text: Any) -> Trigger:
    """Parse a trigger, raising ValueError with a sentence saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("must be a channel name (git:committed) or tuple:[pattern]")
    text = text.strip()
    if text.startswith(TUPLE_PREFIX):
        try:
            raw = json.loads(text[len("tuple:"):])
        except ValueError as exc:
            raise ValueError(f'the tuple pattern is not JSON ({exc}); write tuple:["task", "*"]') from None
        if not isinstance(raw, list):
            raise ValueError("the tuple pattern must be a JSON array")
        try:
            return Trigger(text, pattern=compile_pattern(raw))
        except OpError as exc:
            raise ValueError(exc.message) from None
    if not NAME_RE.match(text):
        raise ValueError("a channel name is 1-200 characters of A-Z a-z 0-9 . _ : / @ * -")
    return Trigger(text, channel=text)


def tuple_fields(message: Any) -> list | None:
    """The fields of a new tuple announced on a harbor's tuple channel, or None for other events."""
    if isinstance(message, dict) and message.get("event") == "tuple.out":
        record = message.get("tuple")
        if isinstance(record, dict) and isinstance(record.get("fields"), list):
            return record["fields"]
    return None


def matches(trigger: Trigger, harbor: str, channel: str, message: Any) -> bool:
    """Does a delivery on `channel` set this trigger off?"""
    if trigger.pattern is not None:
        if channel != tuple_channel(harbor):
            return False
        fields = tuple_fields(message)
        return fields is not None and trigger.pattern.match(fields)
    return channel_matches(scoped_channel(harbor, trigger.channel or ""), channel)


def channel_matches_name(trigger: Trigger, channel: str) -> bool:
    """Does a fleet-local channel name (e.g. an on_success channel) set this trigger off?"""
    return trigger.pattern is None and channel_matches(trigger.channel or "", channel)
