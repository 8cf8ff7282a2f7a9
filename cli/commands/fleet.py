"""pd fleet init | validate | up | down | status | list | logs | run: background agent fleets (docs/fleet.md)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

import click

from cli.common import call, fail, options, output, output_options, table

AGENT_COLUMNS = [("name", "AGENT"), ("state", "STATE"), ("when", "TRIGGER"), ("backend", "BACKEND"),
                 ("runs", "RUNS"), ("succeeded", "OK"), ("failed", "FAILED"), ("skipped", "SKIPPED"),
                 ("last", "LAST EXIT"), ("next", "NEXT RUN")]
FLEET_COLUMNS = [("name", "FLEET"), ("how", "RUN BY"), ("agentCount", "AGENTS"), ("activeRuns", "ACTIVE"),
                 ("projectDir", "PROJECT")]


def _when(ms: int | None) -> str:
    return "-" if not ms else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _project(path: str | None) -> Path:
    """The project folder of a command: the one given, else the nearest with a fleet file, else here."""
    from fleet.schema import find_project

    start = Path(path).expanduser() if path else Path.cwd()
    if start.is_file():
        return start
    return find_project(start) or start.resolve()


def _fleet_name(name: str | None) -> str:
    """A fleet's name defaults to the project folder's name (they must be equal)."""
    if name:
        return name
    from fleet.schema import project_dir_of

    project = _project(None)
    return (project_dir_of(project) if project.is_file() else project).name


def _problems_text(result) -> str:
    lines = []
    for p in result.problems:
        lines.append(f"{'error' if p.level == 'error' else 'warning'}: {p}")
    return "\n".join(lines)


def _agent_rows(agents: list[dict]) -> list[dict]:
    rows = []
    for a in agents:
        when = a.get("trigger") or (f"cron {a['schedule']}" if a.get("schedule") else "-")
        if a.get("kind") == "watcher":
            when = f"watch {when}"
        state = a.get("state", "-") + ("" if a.get("enabled", True) else " (disabled)")
        last = "-" if a.get("lastExitCode") is None else f"{a['lastExitCode']} ({a.get('lastOutcome')})"
        rows.append({**a, "when": when, "state": state, "last": last, "next": _when(a.get("nextRunAt"))})
    return rows


def _describe(f: dict) -> str:
    runner = f.get("runner") or {}
    how = (f"run by the {runner.get('kind')} runner (pid {runner.get('pid')})" if f.get("running")
           else "registered, waiting for the daemon's fleet runner" if f.get("registered") else "not running")
    lines = [f"fleet {f['name']}: {how}"]
    if f.get("harbor"):
        lines.append(f"harbor {f['harbor']}; project {f.get('projectDir') or '-'}")
    if f.get("error"):
        lines.append(f"error: {f['error']}")
    lines.append(table(_agent_rows(f.get("agents") or []), AGENT_COLUMNS, empty="no agents reported yet"))
    fatal = [a["name"] for a in f.get("agents") or [] if a.get("state") == "FATAL"]
    if fatal:
        lines.append(f"circuit breaker open for {', '.join(fatal)}: see pd fleet logs AGENT; restart the fleet to "
                     "reset it")
    return "\n".join(lines)


@click.group()
def fleet() -> None:
    """Background agents declared in pd-fleet.yml: run on commits, schedules, messages or tuples."""


@fleet.command("init")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Write the starter file over an existing fleet file.")
@click.option("--no-hook", is_flag=True, help="Do not install the git post-commit hook.")
@output_options
def init(directory: str | None, force: bool, no_hook: bool) -> None:
    """Write a starter pd-fleet.yml and install the git hook that publishes git:committed."""
    from fleet.project import init_project, project_root

    folder = Path(directory).expanduser() if directory else project_root(Path.cwd())
    try:
        result = init_project(folder, force=force, hook=not no_hook, home=options().config.home)
    except (ValueError, RuntimeError, OSError) as exc:
        fail(str(exc))

    def human(r: dict) -> str:
        lines = [f"{r['fileAction']} {r['file']} (fleet {Path(r['projectDir']).name})"]
        if r["hook"]:
            lines.append(f"git post-commit hook {r['hookAction']}: {r['hook']}")
        lines += r["notes"]
        lines.append("next: edit the agents, then pd fleet validate and pd fleet up")
        return "\n".join(lines)

    output(result.to_dict(), human, quiet=str(result.file))


@fleet.command("validate")
@click.argument("path", required=False, type=click.Path())
@output_options
def validate(path: str | None) -> None:
    """Check the fleet file: every problem names the key and the fix. Exit 1 on errors."""
    from fleet.schema import load_fleet

    result = load_fleet(_project(path))
    body = {"ok": result.ok, "file": str(result.file) if result.file else None,
            "problems": [p.to_dict() for p in result.problems],
            "agents": [a.summary() for a in result.spec.programs()] if result.spec else []}

    def human(b: dict) -> str:
        text = _problems_text(result)
        if result.ok:
            head = f"{result.file}: fleet {result.spec.name} is valid ({len(body['agents'])} agents/watchers, " \
                   f"harbor {result.spec.harbor})"
            return head + ("\n" + text if text else "")
        return text

    output(body, human, quiet="ok" if result.ok else None)
    if not result.ok:
        sys.exit(1)


@fleet.command("up")
@click.argument("path", required=False, type=click.Path())
@click.option("--detach", "-d", is_flag=True, help="Hand the fleet to the daemon (it survives this terminal).")
@output_options
def up(path: str | None, detach: bool) -> None:
    """Run the fleet here in the foreground (Ctrl-C stops it), or --detach to have the daemon run it."""
    from fleet.schema import load_fleet

    result = load_fleet(_project(path))
    if not result.ok:
        click.echo(_problems_text(result), err=True)
        fail(f"{result.file or result.project_dir}: not started; fix the errors above (pd fleet validate)")
    spec = result.spec
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if detach:
        reply = call("fleet.register", name=spec.name, projectDir=str(spec.project_dir), file=str(spec.file))
        output(reply, lambda r: r["message"], quiet=spec.name)
        return
    _run_foreground(spec)


def _run_foreground(spec) -> None:
    from fleet.link import CoreLink
    from fleet.runner import FleetConflict, FleetRunner, run_foreground

    call("daemon.health")  # says so (or starts the daemon) when it is down
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    fleet_log = logging.getLogger("pd.fleet")
    fleet_log.addHandler(handler)
    fleet_log.setLevel(logging.INFO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner = FleetRunner(spec, CoreLink(options().config), options().config, kind="foreground")
    names = ", ".join(f"{a.name} ({a.trigger.text if a.trigger else 'cron ' + str(a.schedule)})"
                      for a in spec.programs() if a.enabled) or "none enabled"
    click.echo(f"fleet {spec.name} up in the foreground: harbor {spec.harbor}; agents {names}. Ctrl-C stops it.",
               err=True)
    try:
        code = run_foreground(runner, stop)
    except FleetConflict as exc:
        fail(str(exc))
    click.echo(f"fleet {spec.name} stopped", err=True)
    sys.exit(code)


@fleet.command("down")
@click.argument("name", required=False)
@output_options
def down(name: str | None) -> None:
    """Stop a fleet (default: this project's) wherever it runs: daemon or another terminal."""
    result = call("fleet.down", name=_fleet_name(name))
    output(result, lambda r: r["message"], quiet=result["name"])


@fleet.command("status")
@click.argument("name", required=False)
@output_options
def status(name: str | None) -> None:
    """Each agent's state (STOPPED, STARTING, RUNNING, BACKOFF, EXITED, FATAL), runs and next run."""
    result = call("fleet.status", name=_fleet_name(name))
    f = result["fleet"]
    output(result, lambda r: _describe(f), quiet=",".join(f"{a['name']}={a['state']}" for a in f.get("agents") or []))


@fleet.command("list")
@output_options
def list_fleets() -> None:
    """Every fleet the daemon knows: registered or running."""
    result = call("fleet.list")
    rows = [{**f, "how": (f["runner"]["kind"] if f.get("running") else "waiting" if f.get("registered") else "-"),
             "agentCount": len(f.get("agents") or [])} for f in result["fleets"]]
    output(result, lambda r: table(rows, FLEET_COLUMNS, empty="no fleets"),
           quiet="\n".join(f["name"] for f in result["fleets"]))


@fleet.command("run")
@click.argument("agent")
@click.option("--fleet", "fleet_name", help="The fleet (default: this project's).")
@output_options
def run(agent: str, fleet_name: str | None) -> None:
    """Run AGENT of a running fleet now, whatever its trigger."""
    result = call("fleet.run", name=_fleet_name(fleet_name), agent=agent)
    output(result, lambda r: r["message"], quiet=agent)


def follow_file(path: Path, lines: int, follow: bool) -> None:
    """Print the last `lines` lines of a log, then (with follow) what is appended, until Ctrl-C."""
    if not path.exists():
        fail(f"no log yet at {path} (the agent has not run)")
    with open(path, "rb") as fh:
        tail = fh.read().splitlines()[-lines:] if lines else []
        for line in tail:
            click.echo(line.decode(errors="replace"))
        if not follow:
            return
        try:
            while True:
                chunk = fh.readline()
                if chunk:
                    click.echo(chunk.decode(errors="replace").rstrip("\n"))
                else:
                    time.sleep(0.25)
        except KeyboardInterrupt:
            return


@fleet.command("logs")
@click.argument("agent")
@click.option("--fleet", "fleet_name", help="The fleet (default: this project's).")
@click.option("-n", "--lines", type=click.IntRange(0), default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the agent writes.")
@click.option("--path", "show_path", is_flag=True, help="Print the log file's path only.")
def logs(agent: str, fleet_name: str | None, lines: int, follow: bool, show_path: bool) -> None:
    """Show AGENT's output: every run appends to one log file under the daemon's home."""
    from fleet.paths import agent_log

    path = agent_log(options().config.home, _fleet_name(fleet_name), agent)
    if show_path:
        click.echo(str(path))
        return
    follow_file(path, lines, follow)


def register(cli: click.Group) -> None:
    cli.add_command(fleet)
