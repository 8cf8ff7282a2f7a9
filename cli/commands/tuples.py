"""pd tuple out | rd | in | poll | scan | count: the tuple space (docs/tuples.md).

A tuple or pattern is one JSON array (`'["task", "*", ">0.7"]'`) or several words, each read as
JSON when it is JSON (`0.9`, `true`, `null`) and as a string otherwise (`pd tuple out task build 1`).
A pattern given as one argument is passed to the daemon as written, so a malformed one is
refused there with the position named.
"""

from __future__ import annotations

import json
from typing import Any

import click

from cli.common import call, duration_ms, my_agent, output, output_options

HARBOR_HELP = "Harbor (default: the global space)."
AGENT_HELP = "Act as this agent (default: $PORT_DADDY_AGENT); checked in gated harbors."


def _word(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _fields(words: tuple[str, ...]) -> list:
    """The tuple to write: one JSON array, or words."""
    if len(words) == 1 and words[0].lstrip().startswith("["):
        try:
            value = json.loads(words[0])
        except ValueError as exc:
            raise click.BadParameter(f"not a JSON array: {exc}", param_hint="TUPLE") from None
        return value
    return [_word(w) for w in words]


def _pattern(words: tuple[str, ...]) -> Any:
    """A pattern: JSON text as written (the daemon parses it), or words."""
    if len(words) == 1 and words[0].lstrip().startswith("["):
        return words[0]
    return [_word(w) for w in words] if words else None


def _agent(agent: str | None) -> str | None:
    return my_agent(agent)


def _line(t: dict) -> str:
    where = f" @{t['harbor']}" if t.get("harbor") else ""
    by = f" by {t['writtenBy']}" if t.get("writtenBy") else ""
    return f"#{t['id']} {json.dumps(t['fields'])}{where}{by}"


def _lines(tuples: list[dict], empty: str) -> str:
    return "\n".join(_line(t) for t in tuples) if tuples else empty


def _bare(tuples: list[dict]) -> str:
    return "\n".join(json.dumps(t["fields"]) for t in tuples)


@click.group("tuple")
def tuple_group() -> None:
    """Shared typed memory (Linda): out writes, rd reads, in takes exactly once."""


@tuple_group.command("out")
@click.argument("words", nargs=-1, required=True, metavar="TUPLE")
@click.option("--harbor", help=HARBOR_HELP)
@click.option("--ttl", help="Expire after this long (30s, 5m, 1h); default: never (durable).")
@click.option("--by", "written_by", help="Who wrote it (default: the agent).")
@click.option("--agent", help=AGENT_HELP)
@output_options
def out(words: tuple[str, ...], harbor: str | None, ttl: str | None, written_by: str | None,
        agent: str | None) -> None:
    """Write a tuple: `pd tuple out '["task", "build-auth", "pending"]' --harbor myapp:fleet`. -q: its id."""
    result = call("tuple.out", fields=_fields(words), harbor=harbor, ttlMs=duration_ms(ttl), writtenBy=written_by,
                  agentId=_agent(agent))
    output(result, lambda r: f"wrote {_line(r['tuple'])}", quiet=result["tuple"]["id"])


@tuple_group.command("rd")
@click.argument("words", nargs=-1, metavar="PATTERN")
@click.option("--harbor", help=HARBOR_HELP)
@click.option("--limit", type=click.IntRange(1, 100_000), help="At most this many (default 100).")
@click.option("--wait", help="Wait this long for a match (5s); then print nothing.")
@click.option("--agent", help=AGENT_HELP)
@output_options
def rd(words: tuple[str, ...], harbor: str | None, limit: int | None, wait: str | None, agent: str | None) -> None:
    """Read matching tuples, oldest first, leaving them: `pd tuple rd '["task", "*", ">0.7"]'`."""
    result = call("tuple.rd", pattern=_pattern(words), harbor=harbor, limit=limit, wait=duration_ms(wait),
                  agentId=_agent(agent))
    output(result, lambda r: _lines(r["tuples"], "no matching tuples"), quiet=_bare(result["tuples"]))


@tuple_group.command("in")
@click.argument("words", nargs=-1, required=True, metavar="PATTERN")
@click.option("--harbor", help=HARBOR_HELP)
@click.option("--limit", type=click.IntRange(1, 100_000), help="Take this many (default 1).")
@click.option("--wait", help="Wait this long for a match (5s); then print nothing.")
@click.option("--agent", help=AGENT_HELP)
@click.option("--request-id", help="Id of this take: run again with the same id, it prints the same tuples "
                                   "instead of taking others (default: a fresh id, repeated after a lost reply).")
@output_options
def take(words: tuple[str, ...], harbor: str | None, limit: int | None, wait: str | None, agent: str | None,
         request_id: str | None) -> None:
    """Take the oldest matching tuple (removed; exactly one taker gets it). `[]` takes any. -q: its fields."""
    result = call("tuple.in", pattern=_pattern(words), harbor=harbor, limit=limit,
                  wait=duration_ms(wait), agentId=_agent(agent), requestId=request_id)
    output(result, lambda r: _lines(r["taken"], "nothing taken: no matching tuple"), quiet=_bare(result["taken"]))


@tuple_group.command("poll")
@click.argument("words", nargs=-1, metavar="PATTERN")
@click.option("--harbor", help="Harbor, or * for every harbor (default: the global space).")
@click.option("--after", type=click.IntRange(0), default=0, help="Cursor: the last id seen.")
@click.option("--limit", type=click.IntRange(1, 100_000), help="At most this many (default 1).")
@click.option("--wait", help="Wait this long for a match (5s).")
@output_options
def poll(words: tuple[str, ...], harbor: str | None, after: int, limit: int | None, wait: str | None) -> None:
    """The next matching tuples after id --after; prints the cursor to pass next. -q: the cursor."""
    result = call("tuple.poll", pattern=_pattern(words), harbor=harbor, after=after, limit=limit,
                  wait=duration_ms(wait))
    output(result, lambda r: f"{_lines(r['tuples'], 'no new matching tuple')}\nlastId {r['lastId']}",
           quiet=result["lastId"])


@tuple_group.command("scan")
@click.argument("words", nargs=-1, metavar="[PATTERN]")
@click.option("--harbor", help="Harbor, or * for every harbor (default: the global space).")
@click.option("--limit", type=click.IntRange(1, 100_000), help="At most this many (default 200).")
@output_options
def scan(words: tuple[str, ...], harbor: str | None, limit: int | None) -> None:
    """List the tuples of a harbor, oldest first."""
    result = call("tuple.scan", harbor=harbor, limit=limit, pattern=_pattern(words))
    more = result.get("total", result["count"]) - result["count"]
    tail = f"\n... and {more} more (--limit)" if more > 0 else ""
    output(result, lambda r: _lines(r["tuples"], "no tuples") + tail, quiet=_bare(result["tuples"]))


@tuple_group.command("count")
@click.argument("words", nargs=-1, metavar="[PATTERN]")
@click.option("--harbor", help="Harbor, or * for every harbor (default: the global space).")
@output_options
def count(words: tuple[str, ...], harbor: str | None) -> None:
    """Count tuples (matching PATTERN when given)."""
    result = call("tuple.count", harbor=harbor, pattern=_pattern(words))
    output(result, lambda r: str(r["count"]), quiet=result["count"])


def register(cli: click.Group) -> None:
    cli.add_command(tuple_group)
