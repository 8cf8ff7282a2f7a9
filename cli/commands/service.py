"""pd install | uninstall (service manager units) and pd dev start|stop|status (a second daemon)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import click

from cli.common import fail, options, output, output_options
from cli.daemonctl import start_daemon, stop_daemon
from pdcore.config import load_config, setting_from_text
from pdcore.paths import supervisor_running

DEV_PORT = 9877


def _unit_target() -> tuple[str, Path]:
    if platform.system() == "Darwin":
        return "com.portdaddy.daemon.plist", Path.home() / "Library/LaunchAgents/com.portdaddy.daemon.plist"
    return "port-daddy.service", Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / \
        "systemd/user/port-daddy.service"


def _manager(*args: str) -> tuple[bool, str]:
    tool = args[0]
    if shutil.which(tool) is None:
        return False, f"{tool} not found"
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


@click.command()
@click.option("--no-enable", is_flag=True, help="Write the unit file only; do not enable or start it.")
@output_options
def install(no_enable: bool) -> None:
    """Install Port Daddy as a user service (systemd on Linux, launchd on macOS) so it starts at login."""
    template, target = _unit_target()
    text = resources.files("deploy").joinpath(template).read_text()
    text = text.replace("{python}", sys.executable).replace("{home}", str(options().config.home))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    result = {"unit": str(target), "enabled": False, "message": ""}
    if not no_enable:
        if template.endswith(".plist"):
            ok, msg = _manager("launchctl", "load", "-w", str(target))
        else:
            ok, msg = _manager("systemctl", "--user", "daemon-reload")
            if ok:
                ok, msg = _manager("systemctl", "--user", "enable", "--now", "port-daddy.service")
        result["enabled"], result["message"] = ok, msg
    hint = "" if result["enabled"] or no_enable else f" (not enabled: {result['message']})"
    output(result, f"wrote {target}{hint}", quiet=str(target))


@click.command()
@output_options
def uninstall() -> None:
    """Remove the user service unit written by `pd install` (stops the service first)."""
    template, target = _unit_target()
    if template.endswith(".plist"):
        _manager("launchctl", "unload", "-w", str(target))
    else:
        _manager("systemctl", "--user", "disable", "--now", "port-daddy.service")
    existed = target.exists()
    if existed:
        target.unlink()
    output({"removed": existed, "unit": str(target)}, f"removed {target}" if existed else "no unit installed")


def _dev_config():
    home = os.environ.get("PORT_DADDY_DEV_HOME") or str(Path(options().config.home).with_name(".port-daddy-dev"))
    raw = os.environ.get("PORT_DADDY_DEV_PORT")
    return load_config(home, tcp_port=setting_from_text("tcp_port", raw, "PORT_DADDY_DEV_PORT") if raw else DEV_PORT)


@click.group()
def dev() -> None:
    """An isolated dev daemon on port 9877 with its own home (~/.port-daddy-dev)."""


@dev.command("start")
@output_options
def dev_start() -> None:
    """Start the dev daemon."""
    config = _dev_config()
    try:
        pid = start_daemon(config)
    except RuntimeError as exc:
        fail(str(exc))
    output({"pid": pid, "home": str(config.home), "http": config.base_url},
           f"dev daemon running (pid {pid}) on {config.base_url}, home {config.home}; "
           f"use it with PORT_DADDY_HOME={config.home} PORT_DADDY_PORT={config.tcp_port}", quiet=pid)


@dev.command("stop")
@output_options
def dev_stop() -> None:
    """Stop the dev daemon."""
    try:
        pid = stop_daemon(_dev_config())
    except RuntimeError as exc:
        fail(str(exc))
    output({"stopped": pid is not None}, "dev daemon stopped" if pid else "dev daemon was not running")


@dev.command("status")
@output_options
def dev_status() -> None:
    """Is the dev daemon running? Exit 0 only when it is."""
    config = _dev_config()
    pid = supervisor_running(config)
    output({"running": pid is not None, "pid": pid, "home": str(config.home), "http": config.base_url},
           f"dev daemon running (pid {pid}) on {config.base_url}" if pid else "dev daemon not running",
           quiet="running" if pid else "stopped")
    if pid is None:
        sys.exit(1)


def register(cli: click.Group) -> None:
    for cmd in (install, uninstall, dev):
        cli.add_command(cmd)
