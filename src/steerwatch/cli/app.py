"""The ``steerwatch`` Typer app. Command modules register on it; :mod:`steerwatch.cli.main`
imports them all (the console entry point)."""
from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(
    name="steerwatch",
    help="Steer and watch language models through their activations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"steerwatch {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Steer and watch language models through their activations."""
