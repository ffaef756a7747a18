"""`schedule cron --install` under a real cron daemon (Debian's cron, started by the test).

Debian's cron reads /etc/cron.d only, so the test writes a uniquely named file there, starts
`cron -f` itself (or uses one already running), waits for the runs of the next minute, and
removes the file and stops its cron whatever happens.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from tests.support import run_cli
from tests.support.daemon import read_status

CRON_D = Path("/etc/cron.d")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("cron") or not CRON_D.is_dir(),
                                reason="needs root and Debian's cron")


def _running_cron() -> int | None:
    for pidfile in ("/run/crond.pid", "/var/run/crond.pid"):
        try:
            pid = int(Path(pidfile).read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            continue
    return None


def test_cron_lines_install_and_run_under_real_cron_each_under_flock(mariadb, tmp_path):
    name = f"crontest-{uuid.uuid4().hex[:8]}"
    repo = tmp_path / "repo"
    status_file = tmp_path / "status.json"
    policy = tmp_path / "p.toml"
    policy.write_text(f"""
name = "{name}"
[source]
url = "{mariadb.url}"
[storage]
url = "file://{repo}"
[strategies]
snapshot = "* * * * *"
verify = "* * * * *"
[schedule]
status_file = "{status_file}"
lock_dir = "{tmp_path / 'locks'}"
log_dir = "{tmp_path / 'log'}"
""")
    mariadb.sql("CREATE DATABASE app")
    mariadb.sql("CREATE TABLE app.t (id INT PRIMARY KEY)")
    mariadb.sql("INSERT INTO app.t VALUES (1), (2), (3)")
    r = run_cli("schedule", "cron", "--policy", str(policy), "--install", "--cron-dir", str(CRON_D),
                "--json")
    assert r.returncode == 0, r.stderr
    installed = Path(json.loads(r.stdout)["installed"])
    assert installed == CRON_D / f"backupkit-{name}"
    cron_proc = None
    try:
        text = installed.read_text()
        assert oct(installed.stat().st_mode & 0o777) == "0o644"
        jobs = [ln for ln in text.splitlines() if ln and not ln.startswith("#") and "=" not in ln[:12]]
        assert len(jobs) == 2 and all(" root flock -n " in ln for ln in jobs)
        # The lock makes runs exclusive: while it is held, the line's command does nothing.
        snap_line = next(ln for ln in jobs if "exec snapshot" in ln)
        command = snap_line.split(None, 6)[6]
        lock = tmp_path / "locks" / f"{name}-snapshot.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            held = subprocess.run(["sh", "-c", command], capture_output=True, timeout=60)
        finally:
            os.close(fd)
        assert held.returncode == 1 and not repo.exists()  # nothing ran

        repo.mkdir()  # an empty repository, so the first verify run has one to read
        if _running_cron() is None:
            cron_proc = subprocess.Popen(["cron", "-f", "-L", "15"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            jobs_st = read_status(status_file).get("jobs", {})
            if all((jobs_st.get(k) or {}).get("last", {}).get("result") == "ok"
                   for k in ("snapshot", "verify")):
                break
            assert cron_proc is None or cron_proc.poll() is None, "cron exited"
            time.sleep(1)
        else:
            logs = {p.name: p.read_text()[-2000:] for p in (tmp_path / "log").glob("*")} \
                if (tmp_path / "log").is_dir() else {}
            raise AssertionError(f"no runs from cron: {read_status(status_file)} {logs}")
    finally:
        installed.unlink(missing_ok=True)
        if cron_proc is not None:
            cron_proc.send_signal(signal.SIGTERM)
            try:
                cron_proc.wait(10)
            except subprocess.TimeoutExpired:
                cron_proc.kill()
                cron_proc.wait()
    # Runs started by cron leave a backup, the log line and the status file.
    for _ in range(120):  # a run may still be finishing
        if not any((j or {}).get("running_since") for j in read_status(status_file).get("jobs", {}).values()):
            break
        time.sleep(0.5)
    backups = Catalog(open_store(f"file://{repo}")).backups()
    assert backups and backups[0].kind == "snapshot"
    log = (tmp_path / "log" / f"{name}-snapshot.log").read_text()
    assert "strategy=snapshot result=ok" in log and "stored=" in log
    st = run_cli("schedule", "status", "--policy", str(policy), "--json")
    assert st.returncode == 0
    out = json.loads(st.stdout)
    assert out["jobs"]["snapshot"]["last"]["result"] == "ok"
    assert out["jobs"]["snapshot"]["last"]["backup_id"] == backups[0].id or len(backups) > 1
