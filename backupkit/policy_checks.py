"""Checks of a policy that go beyond types: cron expressions, durations, storage URLs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backupkit.config import Policy


def semantic_problems(policy: Policy, path: Path) -> list[str]:
    """One line per problem: file, key, what was expected, what was found."""
    problems: list[str] = []
    for name in ("cold", "snapshot", "binlog", "verify", "prune"):
        expr = getattr(policy.strategies, name)
        if expr is None:
            continue
        if name == "binlog" and expr in ("continuous", "off"):
            continue
        try:
            from apscheduler.triggers.cron import CronTrigger

            CronTrigger.from_crontab(expr)
        except ValueError as exc:
            problems.append(f"{path}: key 'strategies.{name}': expected a cron expression like "
                            f"'0 3 * * 0', found {expr!r} ({exc})")
    return problems
