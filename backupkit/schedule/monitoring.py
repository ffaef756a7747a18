"""The monitoring of a policy on this machine: its MonitorState (the repository read now and then,
the daemon's status file, the shipper's state file), the notifier, and the HTTP endpoint of
`schedule run --metrics-listen` (monitor/ holds the model, the metrics, the page)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backupkit.errors import UsageError
from backupkit.monitor.local import policy_state
from backupkit.monitor.metrics import MonitorState
from backupkit.monitor.notify import Notifier, notifier_for
from backupkit.monitor.server import MetricsServer
from backupkit.monitor.status import ShipperLive
from backupkit.schedule.cron import policy_timezone, worst_interval
from backupkit.schedule.state import Paths

if TYPE_CHECKING:
    from backupkit.config import Policy

log = logging.getLogger(__name__)

def policy_monitor(policy: Policy, open_store: Callable[[], Any] | None, *,
                   status_file: Path | None = None, targets: bool = True,
                   shipper_fn: Callable[[], ShipperLive | None] | None = None) -> MonitorState:
    """The MonitorState of a policy: objectives from its schedules, state from its local files."""
    tz = policy_timezone(policy)
    intervals: dict[str, float | None] = {}

    def interval_of(expr: str) -> float | None:
        if expr not in intervals:
            intervals[expr] = worst_interval(expr, tz, datetime.now(tz))
        return intervals[expr]

    if status_file is None and policy.path:
        status_file = Paths.of(policy).status_file
    return policy_state(policy, status_file, open_store, interval_of, targets=targets,
                        shipper_fn=shipper_fn)


class Monitoring:
    """The daemon's monitoring: the state refreshed in the background, notifications on its
    changes, and /metrics and / served when an address is given. Never stops a backup: every
    failure here is logged and skipped."""

    def __init__(self, policy: Policy, open_store: Callable[[], Any] | None, status_file: Path,
                 listen: str | None = None, notifier: Notifier | None = None,
                 refresh: bool = False) -> None:
        """refresh: keep the state fresh although nothing is served here (the fleet serves it)."""
        self.state = policy_monitor(policy, open_store, status_file=status_file)
        self.refresh = refresh
        self.notifier = notifier if notifier is not None else notifier_for(policy)
        self.listen = listen
        self.server: MetricsServer | None = None
        if self.notifier is not None:
            self.state.listeners.append(self.notifier.observe)

    def start(self) -> Monitoring:
        """Serve and refresh; without an address nor a notifier there is nothing to do."""
        if self.listen:
            try:
                self.server = MetricsServer(self.listen, self.state.status).start()
            except UsageError as exc:  # a busy port never stops the backups
                log.warning("%s; running without serving metrics", exc.one_line())
        if self.listen or self.refresh or self.notifier is not None:
            self.state.start()
        return self

    def touch(self) -> None:
        """A run finished: read the repository again soon."""
        self.state.touch()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.state.stop()
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()
        if self.notifier is not None:
            self.notifier.close(10)
