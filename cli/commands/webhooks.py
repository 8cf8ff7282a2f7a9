"""pd webhook add | list | get | update | rm | test | deliveries | events (docs/messaging.md)."""

from __future__ import annotations

import click

from cli.common import call, output, output_options, table

HOOK_COLUMNS = [("id", "ID"), ("url", "URL"), ("events", "EVENTS"), ("active", "ACTIVE"),
                ("successCount", "OK"), ("failureCount", "FAILED")]
DELIVERY_COLUMNS = [("id", "DELIVERY"), ("event", "EVENT"), ("status", "STATUS"), ("attempts", "TRIES"),
                    ("responseStatus", "HTTP"), ("error", "ERROR")]


def _hook_text(h: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in h.items() if v not in (None, "", []))


@click.group()
def webhook() -> None:
    """Signed HTTP POSTs to a URL when events happen (lock.acquire, agent.dead, ...)."""


@webhook.command("add")
@click.argument("url")
@click.option("--event", "events", multiple=True, help="Event to send (repeat; lock.*, * work). Default: all.")
@click.option("--secret", help="Sign deliveries (X-PortDaddy-Signature: sha256=HMAC of the body).")
@click.option("--filter", "filter_", help="Only events whose target matches this glob ('myapp:*').")
@output_options
def add(url: str, events: tuple[str, ...], secret: str | None, filter_: str | None) -> None:
    """Register URL to receive events. `-q` prints the webhook id."""
    result = call("webhook.register", url=url, events=list(events) or None, secret=secret, filterPattern=filter_)
    output(result, lambda r: f"webhook {r['id']} -> {r['url']} ({', '.join(r['events'])})", quiet=result["id"])


@webhook.command("list")
@click.option("--active/--inactive", default=None, help="Only active (or inactive) webhooks.")
@output_options
def list_hooks(active: bool | None) -> None:
    """Registered webhooks."""
    result = call("webhook.list", active=active)
    rows = [{**h, "events": ",".join(h["events"])} for h in result["webhooks"]]
    output(result, table(rows, HOOK_COLUMNS, empty="no webhooks"), quiet="\n".join(h["id"] for h in rows))


@webhook.command("get")
@click.argument("id")
@output_options
def get(id: str) -> None:
    """Show one webhook."""
    result = call("webhook.get", id=id)
    output(result, lambda r: _hook_text(r["webhook"]), quiet=result["webhook"]["url"])


@webhook.command("update")
@click.argument("id")
@click.option("--url")
@click.option("--event", "events", multiple=True, help="Replace the events (repeat).")
@click.option("--secret", help="New secret ('' removes it).")
@click.option("--filter", "filter_", help="New target filter ('' removes it).")
@click.option("--active/--inactive", default=None)
@output_options
def update(id: str, url: str | None, events: tuple[str, ...], secret: str | None, filter_: str | None,
           active: bool | None) -> None:
    """Change a webhook."""
    result = call("webhook.update", id=id, url=url, events=list(events) or None, secret=secret,
                  filterPattern=filter_, active=active)
    output(result, lambda r: _hook_text(r["webhook"]), quiet=id)


@webhook.command("rm")
@click.argument("id")
@output_options
def rm(id: str) -> None:
    """Delete a webhook and its delivery log."""
    result = call("webhook.delete", id=id)
    output(result, f"deleted webhook {id}", quiet=id)


@webhook.command("test")
@click.argument("id")
@output_options
def test(id: str) -> None:
    """Send a webhook.test delivery now and show how the endpoint answered."""
    result = call("webhook.test", id=id)
    output(result, lambda r: (f"delivered (HTTP {r['status']})" if r["delivered"]
                              else f"not delivered: {r.get('error') or 'HTTP ' + str(r.get('status'))}"),
           quiet=result.get("status"))


@webhook.command("deliveries")
@click.argument("id")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--status", type=click.Choice(["pending", "retrying", "delivered", "failed", "refused", "cancelled"]))
@output_options
def deliveries(id: str, limit: int, status: str | None) -> None:
    """Recent deliveries of a webhook, newest first."""
    result = call("webhook.deliveries", id=id, limit=limit, status=status)
    output(result, lambda r: table(r["deliveries"], DELIVERY_COLUMNS, empty="no deliveries"),
           quiet="\n".join(f"{d['id']} {d['status']}" for d in result["deliveries"]))


@webhook.command("events")
@output_options
def events() -> None:
    """Event names a webhook can subscribe to."""
    result = call("webhook.events")
    output(result, lambda r: "\n".join(r["events"]) + "\n(also: * and <category>.*)", quiet="\n".join(result["events"]))


def register(cli: click.Group) -> None:
    cli.add_command(webhook)
    cli.add_command(webhook, "webhooks")
