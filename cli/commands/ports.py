"""pd claim | release | find | services | service | endpoint | ports | cleanup."""

from __future__ import annotations

import click

from cli.common import call, duration_ms, output, output_options, table

SERVICE_COLUMNS = [("id", "IDENTITY"), ("port", "PORT"), ("pid", "PID"), ("status", "STATUS")]
TEAM_SERVICE_COLUMNS = [("id", "IDENTITY"), ("address", "HOST:PORT"), ("host", "HOST"), ("status", "STATUS")]


@click.command()
@click.argument("identity", required=False)
@click.option("--id", "id_opt", help="The identity (same as the positional argument).")
@click.option("--port", type=click.IntRange(1, 65535), help="Preferred port.")
@click.option("--range", "range_", metavar="A-B", help="Pick within this port range.")
@click.option("--pid", type=click.IntRange(1), help="Release the claim when this process exits.")
@click.option("--expires", help="Release after this long (30s, 5m, 1h).")
@click.option("--cmd", help="Command the service runs (for humans).")
@output_options
def claim(identity: str | None, id_opt: str | None, port: int | None, range_: str | None, pid: int | None,
          expires: str | None, cmd: str | None) -> None:
    """Claim the deterministic port of IDENTITY (project:stack:context). `-q` prints only the port."""
    ident = identity or id_opt
    if not ident:
        raise click.UsageError("give an identity: pd claim myapp:api:main")
    result = call("port.claim", id=ident, port=port, range=range_, pid=pid, expires=duration_ms(expires), cmd=cmd)
    output(result, lambda r: f"{r['id']} -> port {r['port']}" + (" (already held)" if r["existing"] else ""),
           quiet=result["port"])


@click.command()
@click.argument("target", required=False)
@click.option("--id", "id_opt", help="Identity or pattern (same as the positional argument).")
@click.option("--port", type=click.IntRange(1, 65535), help="Release whatever holds this port.")
@output_options
def release(target: str | None, id_opt: str | None, port: int | None) -> None:
    """Release the claim of an identity, or of every identity matching a pattern (myapp:*)."""
    ident = target or id_opt
    if not ident and port is None:
        raise click.UsageError("give an identity, a pattern or --port")
    result = call("port.release", id=ident, port=port)
    output(result, lambda r: f"released {r['released']} service(s)"
           + (f": ports {', '.join(map(str, r['releasedPorts']))}" if r["releasedPorts"] else ""),
           quiet=result["released"])


def _list(pattern: str | None, status: str | None, port: int | None, team: bool = False) -> None:
    if team:
        result = call("port.list", pattern=pattern, status=status, team=True)
        output(result, lambda r: table(r["services"], TEAM_SERVICE_COLUMNS, empty="no services in the team"),
               quiet="\n".join(f"{s['id']} {s['address']}" for s in result["services"]))
        return
    result = call("port.list", pattern=pattern, status=status, port=port)
    output(result, lambda r: table(r["services"], SERVICE_COLUMNS, empty="no services"),
           quiet="\n".join(f"{s['id']} {s['port']}" for s in result["services"]))


@click.command()
@click.argument("pattern", required=False)
@click.option("--status", help="Only services with this status.")
@click.option("--port", type=click.IntRange(1, 65535))
@click.option("--team", is_flag=True, help="Team mode: every host's services, each as host:port.")
@output_options
def find(pattern: str | None, status: str | None, port: int | None, team: bool) -> None:
    """Find services by identity pattern: `pd find 'myapp:*'`, `pd find 'myapp:*:main'`."""
    _list(pattern, status, port, team)


@click.command()
@click.option("--pattern")
@click.option("--status")
@output_options
def services(pattern: str | None, status: str | None) -> None:
    """List every claimed service."""
    _list(pattern, status, None)


@click.command()
@click.argument("identity")
@output_options
def service(identity: str) -> None:
    """Show one service."""
    result = call("port.get", id=identity)
    s = result["service"]
    output(result, "\n".join(f"{k}: {v}" for k, v in s.items() if v not in (None, {}, "")), quiet=s["port"])


@click.command()
@click.argument("identity")
@click.argument("env")
@click.argument("url")
@output_options
def endpoint(identity: str, env: str, url: str) -> None:
    """Record URL as the ENV endpoint of a service."""
    result = call("port.set_endpoint", id=identity, env=env, url=url)
    output(result, f"{identity} {env} -> {url}")


@click.command()
@output_options
def ports() -> None:
    """Every claimed port."""
    result = call("port.active")
    output(result, lambda r: table(r["ports"], [("port", "PORT"), ("id", "IDENTITY"), ("pid", "PID")],
                                   empty="no ports claimed"))


@click.command()
@output_options
def cleanup() -> None:
    """Release claims whose process is gone or whose TTL has passed."""
    result = call("port.cleanup")
    output(result, lambda r: f"cleaned {r['cleaned']} claim(s)", quiet=result["cleaned"])


def register(cli: click.Group) -> None:
    for cmd in (claim, release, find, services, service, endpoint, ports, cleanup):
        cli.add_command(cmd)
