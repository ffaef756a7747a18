"""`schedule run` for real: a private mariadbd, a local repository, the daemon as a process.

The daemon starts the binlog shipper at once, runs a snapshot at the next minute, restarts the
shipper after kill -9, and on SIGTERM stops cleanly: the shipper flushes what it has, so the
repository ends exactly at the server's binlog position.
"""

from __future__ import annotations

import json
import os
import signal
import time

from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from tests.support import run_cli
from tests.support.daemon import Daemon, read_status


def _wait(what: str, cond, timeout: float, daemon: Daemon) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        rc = daemon.proc.poll()
        assert rc is None, f"the daemon exited ({rc}): {daemon.text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {daemon.text()[-3000:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_daemon_runs_snapshots_supervises_the_shipper_and_stops_cleanly(mariadb, tmp_path):
    sb = mariadb
    sb.sql("CREATE DATABASE app")
    sb.sql("CREATE TABLE app.events (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    repo = tmp_path / "repo"
    status_file = tmp_path / "state" / "status.json"
    policy = tmp_path / "daemon.toml"
    policy.write_text(f"""
name = "daemon-test"
[source]
url = "{sb.url}"
[storage]
url = "file://{repo}"
[strategies]
snapshot = "* * * * *"
binlog = "continuous"
[binlog]
sync_interval = 0.2
heartbeat = 0.5
[schedule]
status_file = "{status_file}"
lock_dir = "{tmp_path / 'locks'}"
log_dir = "{tmp_path / 'log'}"
shipper_backoff_min = 0.5
shipper_backoff_max = 5
""")
    daemon = Daemon(["schedule", "run", "--policy", str(policy)], tmp_path / "daemon.log")
    try:
        st = _wait("the shipper to start", lambda: (read_status(status_file).get("shipper") or {}).get("pid"),
                   30, daemon)
        first_pid = int(st)
        for i in range(20):
            sb.sql(f"INSERT INTO app.events (v) VALUES ({i})")
        # the snapshot of the next minute
        _wait("a snapshot run", lambda: ((read_status(status_file).get("jobs") or {}).get("snapshot") or {})
              .get("last", {}).get("result") == "ok", 90, daemon)
        r = run_cli("schedule", "status", "--policy", str(policy), "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["daemon"]["alive"] and out["daemon"]["pid"] == daemon.proc.pid
        snap = out["jobs"]["snapshot"]
        assert snap["last"]["result"] == "ok" and snap["last"]["stored_bytes"] > 0
        assert snap["next_run"] and snap["last"]["backup_id"]
        assert out["healthy"] is True
        assert run_cli("schedule", "status", "--policy", str(policy), "--check").returncode == 0
        # kill -9 the shipper: the daemon starts a new one
        os.kill(first_pid, signal.SIGKILL)
        new_pid = _wait("a new shipper", lambda: (
            (s := read_status(status_file).get("shipper") or {}).get("restarts", 0) >= 1
            and s.get("pid") not in (None, first_pid) and s["pid"]), 30, daemon)
        assert _alive(int(new_pid)) and not _alive(first_pid)
        for i in range(20, 40):
            sb.sql(f"INSERT INTO app.events (v) VALUES ({i})")
        # the new shipper ships them: it runs (its SIGTERM handler is set) before the daemon stops;
        # a fixed sleep was shorter than a loaded machine's Python start-up, and the SIGTERM
        # then found the shipper still importing (exit -15)
        end = tuple(sb.sql("SHOW MASTER STATUS")[0][:2])
        shipped = Catalog(open_store(f"file://{repo}"))
        _wait("the new shipper to ship the new rows", lambda: any(
            shipped.shipped_position(s) == (end[0], int(end[1])) for s in shipped.sources()), 60, daemon)
    finally:
        rc = daemon.stop()
    text = daemon.text()
    assert rc == 0, text[-3000:]
    final = read_status(status_file)
    assert final["state"] == "stopped" and final["shipper"]["state"] == "stopped"
    assert final["shipper"]["last_exit"] == 0, "SIGTERM: the shipper flushed and exited 0"
    down = run_cli("schedule", "status", "--policy", str(policy), "--check")
    assert down.returncode == 1 and "unhealthy: the daemon is not running" in down.stdout
    assert not _alive(int(new_pid))
    # One log line per run, with start, end, result, sizes and duration.
    runs = [ln for ln in text.splitlines() if "strategy=snapshot" in ln]
    assert runs and all(p in runs[0] for p in ("result=ok", "start=", "end=", "duration=", "stored=",
                                               "id="))
    assert "strategy=binlog event=exit" in text and "event=stopped" in text
    # Everything the server wrote was shipped before the shipper stopped.
    cat = Catalog(open_store(f"file://{repo}"))
    (sid,) = cat.sources()
    master = sb.sql("SHOW MASTER STATUS")[0]
    assert cat.shipped_position(sid) == (master[0], int(master[1]))
    assert run_cli("verify", "--all", "--storage", f"file://{repo}").returncode == 0
