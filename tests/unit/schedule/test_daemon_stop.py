"""SIGTERM handling of the daemon: running jobs finish, or after the stop timeout are cut with
SIGTERM (real child processes standing in for `backupkit snapshot`)."""

from __future__ import annotations

import json
import stat
import threading
import time
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from backupkit.config import Policy
from backupkit.schedule.daemon import Daemon
from backupkit.schedule.runner import CliRunner
from backupkit.schedule.state import Paths

FAKE = """#!/bin/sh
# Stands in for `python -m backupkit ... snapshot`: works for {secs} s, or stops on SIGTERM.
trap 'kill $! 2>/dev/null; echo cut > {marker}; exit 143' TERM
echo started > {marker}
sleep {secs} &
wait $!
echo '{{"backup_id": "b1", "stored_bytes": 7}}'
echo done > {marker}
"""


def _daemon(tmp_path, secs: float):
    marker = tmp_path / "marker"
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE.format(secs=secs, marker=marker))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    policy = Policy.model_validate({"name": "stop", "strategies": {"snapshot": "0 0 1 1 *"}})
    runner = CliRunner(str(tmp_path / "p.toml"), python=str(fake))
    records = []
    daemon = Daemon(policy, runner, tz=UTC, paths=Paths(tmp_path / "s.json", tmp_path / "l", tmp_path / "g"),
                    emit=lambda n, r: records.append(r), event_log=lambda line: None)
    sched = BackgroundScheduler(timezone=UTC)
    daemon.configure(sched)
    sched.start()
    sched.add_job(daemon._job, "date", run_date=datetime.now(UTC), args=["snapshot"], id="now")
    deadline = time.monotonic() + 10
    while not (marker.exists() and marker.read_text().strip() == "started"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return daemon, runner, marker, records


def test_a_running_job_finishes_before_the_daemon_stops(tmp_path):
    daemon, runner, marker, records = _daemon(tmp_path, secs=1.5)
    t0 = time.monotonic()
    daemon.shutdown(wait_jobs=30, cut=runner.cut)
    assert time.monotonic() - t0 >= 1.0
    assert marker.read_text().strip() == "done"
    (rec,) = records
    assert rec.result == "ok" and rec.backup_id == "b1" and rec.stored_bytes == 7
    assert json.loads((tmp_path / "s.json").read_text())["state"] == "stopped"


def test_a_job_longer_than_the_stop_timeout_is_cut_with_sigterm(tmp_path):
    daemon, runner, marker, records = _daemon(tmp_path, secs=60)
    t0 = time.monotonic()
    stopper = threading.Thread(target=daemon.shutdown, kwargs={"wait_jobs": 0.5, "cut": runner.cut})
    stopper.start()
    stopper.join(20)
    assert not stopper.is_alive() and time.monotonic() - t0 < 15
    assert marker.read_text().strip() == "cut"
    (rec,) = records
    assert rec.result == "failed" and rec.exit_code == 143
