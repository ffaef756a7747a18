"""backupkit cold."""

from __future__ import annotations

from backupkit.cli.common import not_yet


def cold() -> None:
    """Not available in this build yet."""
    raise not_yet("cold")
