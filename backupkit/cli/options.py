"""Options several commands share, declared once: each one's name, type, default and limits here;
its help, passed in, says what it means for the command at hand."""

from __future__ import annotations

from functools import partial
from typing import Any

import typer

MAX_RATE_HELP = ("At most this many bytes per second, e.g. 50MB/s (MB = 10^6 bytes) or 40MiB/s "
                 "(MiB = 2^20 bytes).")


def flag(name: str, help: str, *aliases: str) -> Any:
    """A switch, off unless given."""
    return typer.Option(False, name, *aliases, help=help)


def text(name: str, help: str, *aliases: str, **limits: Any) -> Any:
    """A value, None unless given."""
    return typer.Option(None, name, *aliases, help=help, **limits)


# each called with its help (and, for --tables, any short alias)
dry_run = partial(flag, "--dry-run")
force = partial(flag, "--force")
source_id = partial(text, "--source-id")
target = partial(text, "--target")
start_command = partial(text, "--start-command")
metrics_listen = partial(text, "--metrics-listen")
tables = partial(text, "--tables")
exclude_tables = partial(text, "--exclude-tables")
compression_level = partial(text, "--compression-level", min=-7, max=22)


def max_rate(limits: str) -> Any:
    """--max-rate RATE; `limits` says what it limits (and the policy key, if any)."""
    return text("--max-rate", f"{MAX_RATE_HELP} {limits}", metavar="RATE")
