"""backupkit prune."""

from __future__ import annotations

from backupkit.cli.common import not_yet


def prune() -> None:
    """Not available in this build yet."""
    raise not_yet("prune")
