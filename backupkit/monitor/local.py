"""The MonitorState of a policy on this machine, from the local files (monitor/live.py names
them) and the repository (used by the daemon, `backupkit status`, `backupkit metrics` and
`schedule status --check`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backupkit.monitor.collect import read_repository
from backupkit.monitor.live import history_file, shipper_state_file
from backupkit.monitor.metrics import MonitorState
from backupkit.monitor.status import ShipperLive, objectives_for
from backupkit.mysql.process import pid_alive
from backupkit.repo.catalog import Catalog

if TYPE_CHECKING:
    from backupkit.config import Policy


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_shipper(path: Path) -> ShipperLive | None:
    """The shipper's live state, or None when no shipper ever wrote one.

    A shipper whose process is gone is reported as stopped, whatever its file says."""
    d = read_json(path)
    if not d:
        return None
    live = ShipperLive.from_dict(d)
    if live.pid and not pid_alive(int(live.pid)):
        live.state = "stopped"
    return live


def daemon_reader(status_file: Path) -> Callable[[], tuple[dict[str, Any], bool]]:
    """Reads the daemon's status file and whether the daemon that wrote it still runs."""

    def read() -> tuple[dict[str, Any], bool]:
        d = read_json(status_file)
        pid = d.get("pid")
        alive = bool(pid) and d.get("state") in ("running", "stopping") and pid_alive(int(pid))
        return d, alive

    return read


def policy_state(policy: Policy, status_file: Path | None, open_store: Callable[[], Any] | None,
                 interval_of: Callable[[str], float | None], *, targets: bool = True,
                 shipper_fn: Callable[[], ShipperLive | None] | None = None,
                 daemon_fn: Callable[[], tuple[dict[str, Any], bool | None]] | None = None
                 ) -> MonitorState:
    """The MonitorState of a policy on this machine: the repository through open_store(), the
    daemon's status file, the shipper's state file (or shipper_fn, in the shipper itself)."""
    repo_fn = None
    if open_store is not None:
        cache: dict[str, Any] = {}

        def repo_fn():
            if "store" not in cache:
                cache["store"] = open_store()
            return read_repository(Catalog(cache["store"]), targets=targets)

    if status_file is None:  # no policy file: nothing runs here that we could know of
        return MonitorState(policy.name, repository_fn=repo_fn,
                            objectives_fn=lambda repo: objectives_for(policy, interval_of, repo),
                            daemon_fn=daemon_fn, shipper_fn=shipper_fn,
                            refresh_interval=policy.metrics.refresh_interval)
    ship_path = shipper_state_file(status_file)
    return MonitorState(
        policy.name, repository_fn=repo_fn,
        objectives_fn=lambda repo: objectives_for(policy, interval_of, repo),
        daemon_fn=daemon_fn or daemon_reader(status_file),
        shipper_fn=shipper_fn or (lambda: read_shipper(ship_path)),
        refresh_interval=policy.metrics.refresh_interval, history_file=history_file(status_file))
