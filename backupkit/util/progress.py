"""How a service says how far it is, without knowing who draws it.

A service starts a task with a total (None when unknown), advances it as work is done, and
finishes it. The CLI passes an implementation that draws bars (cli.console.BarProgress); every
other caller passes nothing and gets NullProgress.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Tasks with a total, advanced as work is done."""

    def start(self, description: str, total: float | None = None) -> int:
        """A new task; returns its id."""
        ...

    def advance(self, task: int, amount: float = 0, *, description: str | None = None) -> None:
        """Add amount to the task's completed work (and relabel it when description is given)."""
        ...

    def update(self, task: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        """Set the task's completed work, total or label."""
        ...

    def finish(self, task: int) -> None:
        """The task is done: its total becomes what was completed."""
        ...


class NullProgress:
    """Progress that goes nowhere."""

    def start(self, description: str, total: float | None = None) -> int:
        return 0

    def advance(self, task: int, amount: float = 0, *, description: str | None = None) -> None:
        pass

    def update(self, task: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        pass

    def finish(self, task: int) -> None:
        pass
