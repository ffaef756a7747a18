"""util.progress: services report to a Progress; the CLI draws it as rich bars."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from backupkit.cli.console import BarProgress, as_progress
from backupkit.util.progress import NullProgress


def test_null_progress_accepts_every_call():
    p = NullProgress()
    task = p.start("anything", total=10)
    p.advance(task, 3, description="relabelled")
    p.update(task, completed=5, total=20)
    p.finish(task)


def test_bar_progress_drives_a_rich_task_and_finish_closes_it_at_what_was_done():
    bar = Progress(console=Console(file=io.StringIO()))
    p = as_progress(bar)
    assert isinstance(p, BarProgress)
    task = p.start("verifying")
    p.update(task, total=100)
    p.advance(task, 30)
    p.advance(task, 12, description="verifying more")
    t = bar.tasks[0]
    assert (t.completed, t.total, t.description) == (42, 100, "verifying more")
    p.finish(task)
    assert (bar.tasks[0].completed, bar.tasks[0].total) == (42, 42)


def test_no_bars_means_null_progress():
    assert isinstance(as_progress(None), NullProgress)
