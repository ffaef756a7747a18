"""backupkit demo."""

from __future__ import annotations

from backupkit.cli.common import not_yet


def demo() -> None:
    """Not available in this build yet."""
    raise not_yet("demo")
