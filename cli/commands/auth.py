"""pd token [rotate | path] | pd dashboard: the home's secret and the browser's way in (docs/security.md)."""

from __future__ import annotations

import os
import sys

import click

from cli.common import call, fail, options, output, output_options
from pdcore.auth import TOKEN_ENV, TokenError, client_token, read_token, rotate_token


@click.group(invoke_without_command=True)
@output_options
@click.pass_context
def token(ctx: click.Context) -> None:
    """Print the token TCP callers send (`curl -H "Authorization: Bearer $(pd token)" ...`).

    PORT_DADDY_TOKEN, when set, is printed instead of the home's auth.token (it is what the
    SDK and CLI send)."""
    if ctx.invoked_subcommand is not None:
        return
    config = options().config
    value = client_token(config.token_path)
    if value is None:
        try:
            read_token(config.token_path)
        except TokenError as exc:
            fail(str(exc))
    source = TOKEN_ENV if os.environ.get(TOKEN_ENV) else str(config.token_path)
    output({"token": value, "source": source}, value, quiet=value)


@token.command("rotate")
@output_options
def token_rotate() -> None:
    """Replace the token with a new one; the old token and dashboard cookies stop working.

    A running daemon honours the new token at once and refuses the old one within a second."""
    config = options().config
    if not config.home.is_dir():
        fail(f"{config.home} does not exist; `pd start` creates the home and its token")
    value = rotate_token(config.token_path)
    note = " (PORT_DADDY_TOKEN is set in this shell: update it)" if os.environ.get(TOKEN_ENV) else ""
    output({"token": value, "path": str(config.token_path)},
           f"new token written to {config.token_path}; the old one no longer works{note}", quiet=value)


@token.command("path")
@output_options
def token_path() -> None:
    """Print where the token file is."""
    path = str(options().config.token_path)
    output({"path": path}, path, quiet=path)


def _graphical_session() -> bool:
    """Is there a browser to open? (On Linux without a display, webbrowser would pick a text
    browser and take over the terminal.)"""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@click.command()
@click.option("--no-open", is_flag=True, help="Print the link only; do not open a browser.")
@output_options
def dashboard(no_open: bool) -> None:
    """Print a one-time link into the browser dashboard and open it (valid once, for a minute)."""
    config = options().config
    if config.no_tcp:
        fail("the dashboard is served on the TCP port, which is off here (PORT_DADDY_NO_TCP / no_tcp)")
    result = call("daemon.dashboard_ticket")
    url = f"{config.base_url}{result['path']}"
    opened = False
    if not no_open and _graphical_session():
        import webbrowser

        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
    seconds = max(1, round(config.dashboard_ticket_ttl_ms / 1000))
    text = (f"{'Opened' if opened else 'Open'} the dashboard: {url}\n"
            f"(the link works once, within {seconds} s; run `pd dashboard` again for a new one)")
    output({"url": url, "expiresAt": result["expiresAt"], "opened": opened}, text, quiet=url)


def register(cli: click.Group) -> None:
    cli.add_command(token)
    cli.add_command(dashboard)
