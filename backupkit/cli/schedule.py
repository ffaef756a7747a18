"""backupkit schedule ..."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("status")
def status() -> None:
    """Not available in this build yet."""
    from backupkit.cli.common import not_yet

    raise not_yet("schedule status")
