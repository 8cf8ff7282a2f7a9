"""docs/cli.md is generated from the command tree: it must match the commands that exist."""

from cli.docgen import DOC, render


def test_cli_reference_is_up_to_date():
    assert DOC.read_text() == render(), "run `python -m cli.docgen --write` and commit docs/cli.md"


def test_every_command_has_help_text():
    import click

    from cli.docgen import _walk
    from cli.main import cli

    missing = [" ".join(p) for p, cmd, _ in _walk(cli, [], click.Context(cli, info_name="pd"))
               if p and not (cmd.help or "").strip()]
    assert not missing, f"commands without help: {missing}"


def test_settings_reference_is_up_to_date():
    from pdcore import configdoc

    assert configdoc.current() == configdoc.render(), "run `python -m pdcore.configdoc --write`"
