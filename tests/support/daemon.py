"""Helpers of the scheduler daemon tests: `schedule run` as a process, a fleet's policies and
environment, and how long a source's binlog takes to reach its repository."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from backupkit.mysql.server import master_status, server_facts
from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store


class Daemon:
    """`python -m backupkit <args>` (a `schedule run`) in its own session, its output in log."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "backupkit", *args], stdout=self.fh,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the daemon alone (it stops its shipper and jobs itself); its exit code.
        A daemon still running after timeout seconds is killed with its group and fails the test."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"the daemon did not stop within {timeout:g} s: "
                                 f"{self.text()[-3000:]}") from None
        finally:
            self.fh.close()


def read_status(path: Path) -> dict:
    """A status file's JSON; {} while it does not exist (or is being replaced)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def fleet_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fleet daemon: no single source, storage or policy from the caller's
    environment; state under tmp_path/state."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("BACKUPKIT_STORAGE", "BACKUPKIT_SOURCE", "BACKUPKIT_POLICY")}
    env["BACKUPKIT_STATE_DIR"] = str(tmp_path / "state")
    return env


def fleet_policy(tmp_path: Path, name: str, sb, snapshot: str = "* * * * *", backoff_max: float = 5,
                 more: str = "") -> str:
    """The policy text of source name in a fleet: sb shipped continuously to tmp_path/repos/name,
    snapshots on the cron snapshot; more: TOML appended at the end."""
    return f"""
name = "{name}"
[source]
url = "{sb.url}"
source_id = "{name}"
[storage]
url = "file://{tmp_path / 'repos' / name}"
[strategies]
snapshot = "{snapshot}"
binlog = "continuous"
[binlog]
sync_interval = 0.2
heartbeat = 0.5
[schedule]
shipper_backoff_min = 0.5
shipper_backoff_max = {backoff_max:g}
{more}"""


def seconds_until_shipped(sb, url: str, source_id: str, timeout: float = 5.0) -> float:
    """Seconds until the repository at url holds sb's binlog up to its position now (inf after
    timeout): the loss window at this moment."""
    with sb.connect() as conn:
        file, pos = master_status(conn, server_facts(conn))
    t0 = time.monotonic()
    cat = Catalog(open_store(url))
    while time.monotonic() - t0 < timeout:
        got = cat.shipped_position(source_id)
        if got is not None and (got[0], got[1]) >= (file, pos):
            return time.monotonic() - t0
        time.sleep(0.05)
    return float("inf")
