"""pd pub | watch (alias sub) | channels | channel history|poll|clear|list: pub/sub (docs/messaging.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import click

from cli.common import call, duration_ms, my_agent, options, output, output_options, table

CHANNEL_COLUMNS = [("channel", "CHANNEL"), ("count", "MESSAGES"), ("lastId", "LAST ID"), ("lastMessage", "LAST AT")]


def message_text(message: Any) -> str:
    """A message as the text a command receives: strings as they are, anything else as JSON."""
    return message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))


def _show(m: dict) -> str:
    payload = m.get("payload", m.get("message"))
    sender = f" <{m['sender']}>" if m.get("sender") else ""
    return f"[{m.get('channel')} #{m.get('id')}]{sender} {message_text(payload)}"


@click.command()
@click.argument("channel")
@click.argument("message", required=False)
@click.option("--message", "message_opt", help="The message (same as the positional argument; - reads stdin).")
@click.option("--parse", is_flag=True, help="Send MESSAGE as JSON (an object, array, number...) rather than text.")
@click.option("--sender", help="Who is sending (default: $PORT_DADDY_AGENT).")
@click.option("--expires", help="Drop it from history after this long (30s, 5m, 1h).")
@output_options
def pub(channel: str, message: str | None, message_opt: str | None, parse: bool, sender: str | None,
        expires: str | None) -> None:
    """Publish MESSAGE on CHANNEL (reads stdin when MESSAGE is - or missing). `-q` prints the id."""
    text = message if message is not None else message_opt
    if text is None or text == "-":
        text = sys.stdin.read()
    payload: Any = text
    if parse:
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="MESSAGE") from None
    result = call("msg.publish", channel=channel, payload=payload, sender=my_agent(sender),
                  expires=duration_ms(expires))
    output(result, lambda r: f"published #{r['id']} on {r['channel']}", quiet=result["id"])


class _Runner:
    """Runs CMD once per message: at most `limit` at a time, starts `min_interval` apart."""

    def __init__(self, cmd: str, limit: int, timeout_s: float | None, min_interval_s: float) -> None:
        self.cmd, self.timeout_s, self.min_interval_s = cmd, timeout_s, min_interval_s
        self.slots = threading.BoundedSemaphore(limit)
        self.last_start = 0.0
        self.threads: list[threading.Thread] = []

    def run(self, delivery: dict) -> int:
        """Run CMD for one message and wait for it; return its exit code."""
        text = message_text(delivery.get("message"))
        env = {**os.environ, "PD_MESSAGE": text, "PD_CHANNEL": str(delivery.get("channel", "")),
               "PD_MESSAGE_ID": str(delivery.get("id", "")), "PD_SENDER": str(delivery.get("sender") or "")}
        try:
            proc = subprocess.run(["/bin/sh", "-c", self.cmd], input=text, text=True, env=env,
                                  timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            click.echo(f"pd: watch: command timed out after {self.timeout_s:g}s (message #{delivery.get('id')})",
                       err=True)
            return 124
        return proc.returncode

    def start(self, delivery: dict) -> None:
        """Run CMD for one message in the background, waiting for a free slot first."""
        self.slots.acquire()
        wait = self.last_start + self.min_interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.last_start = time.monotonic()

        def work() -> None:
            try:
                self.run(delivery)
            finally:
                self.slots.release()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]

    def drain(self) -> None:
        for thread in self.threads:
            thread.join()


def _is_message(delivery: Any) -> bool:
    """Real messages only: never connection, keep-alive or control events."""
    return isinstance(delivery, dict) and "channel" in delivery and "message" in delivery and "id" in delivery


@click.command()
@click.argument("channels", nargs=-1, required=True)
@click.option("--exec", "exec_", metavar="CMD", help="Run CMD (via sh -c) per message; the message is in "
                                                     "$PD_MESSAGE and on stdin, the channel in $PD_CHANNEL.")
@click.option("--once", is_flag=True, help="Stop after the first message (exit with CMD's exit code).")
@click.option("--max-concurrent", type=click.IntRange(1), default=3, show_default=True,
              help="Most CMDs running at once.")
@click.option("--timeout", default="30s", show_default=True, help="Kill a CMD running longer than this (0: never).")
@click.option("--min-interval", default="0", show_default=True, help="Start CMDs at least this far apart (2s).")
@output_options
def watch(channels: tuple[str, ...], exec_: str | None, once: bool, max_concurrent: int, timeout: str,
          min_interval: str) -> None:
    """Watch CHANNELS (patterns like 'myapp:*' work) and print or act on each message.

    Keeps running across daemon restarts (it reconnects and subscribes again). Alias: pd sub.
    """
    call("daemon.health")  # says so (or starts the daemon) when it is down, before subscribing
    timeout_s = (duration_ms(timeout) or 0) / 1000 or None
    runner = _Runner(exec_, max_concurrent, timeout_s, (duration_ms(min_interval) or 0) / 1000) if exec_ else None
    last_id: dict[str, int] = {}
    opts = options()
    subscription = opts.client().subscribe(*channels)
    try:
        for delivery in subscription:
            if not _is_message(delivery):
                continue
            channel, msg_id = delivery["channel"], delivery["id"]
            if isinstance(msg_id, int):
                if msg_id <= last_id.get(channel, 0):
                    continue  # already seen (a reconnect may repeat one)
                last_id[channel] = msg_id
            if runner is None:
                if opts.json:
                    click.echo(json.dumps(delivery, default=str))
                else:
                    click.echo(_show(delivery))
                sys.stdout.flush()
            elif once:
                sys.exit(runner.run(delivery))
            else:
                runner.start(delivery)
            if once:
                break
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        subscription.close()
    if runner is not None:
        runner.drain()


@click.command()
@click.option("--pattern", help="Only channels matching this pattern ('myapp:*').")
@output_options
def channels(pattern: str | None) -> None:
    """Channels with messages in their history, most recent first."""
    _list_channels(pattern)


def _list_channels(pattern: str | None) -> None:
    result = call("msg.channels", pattern=pattern)
    output(result, lambda r: table(r["channels"], CHANNEL_COLUMNS, empty="no channels"),
           quiet="\n".join(c["channel"] for c in result["channels"]))


@click.group()
def channel() -> None:
    """Channel history: list, history, poll, clear."""


@channel.command("list")
@click.option("--pattern", help="Only channels matching this pattern ('myapp:*').")
@output_options
def channel_list(pattern: str | None) -> None:
    """Channels with messages in their history, most recent first."""
    _list_channels(pattern)


@channel.command("history")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--after", type=click.IntRange(0), help="Only messages with a larger id.")
@output_options
def channel_history(name: str, limit: int, after: int | None) -> None:
    """Recent messages of channel NAME (or a pattern), oldest first."""
    result = call("msg.history", channel=name, limit=limit, after=after)
    output(result, lambda r: "\n".join(_show(m) for m in r["messages"]) or "no messages",
           quiet="\n".join(message_text(m["payload"]) for m in result["messages"]))


@channel.command("poll")
@click.argument("name")
@click.option("--after", type=click.IntRange(0), default=0, help="Last id seen.")
@click.option("--timeout", default="30s", show_default=True, help="How long to wait for a message.")
@output_options
def channel_poll(name: str, after: int, timeout: str) -> None:
    """Wait for messages on NAME after id --after (long-poll)."""
    result = call("msg.poll", channel=name, after=after, timeout=duration_ms(timeout))
    output(result, lambda r: "\n".join(_show(m) for m in r["messages"]) or "no new messages",
           quiet=result["lastId"])


@channel.command("clear")
@click.argument("name")
@output_options
def channel_clear(name: str) -> None:
    """Forget the history of channel NAME (or every channel matching a pattern)."""
    result = call("msg.clear", channel=name)
    output(result, lambda r: r["message"], quiet=result["deleted"])


def register(cli: click.Group) -> None:
    for command in (pub, watch, channels, channel):
        cli.add_command(command)
