"""A slow or dead target must not widen the loss window (issue 15, part 5 of the brief / 4 of
the issue): two targets (a local folder first, the lease authority; an S3 region second) with
write_quorum = 1; the S3 server is frozen (SIGSTOP) for a minute while writes go on. The loss
window read from the healthy target stays small, `binlog status` answers within 5 s, and the
frozen target catches up in the background afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.repo.watermark import read_status
from backupkit.storage import open_store
from tests.support import run_cli, wait_for
from tests.support.regions import bucket_keys
from tests.support.shipping import make_table, shipping_writer

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

#: The issue's outage is 70 s and asks for 60 s; BACKUPKIT_TEST_BLACKHOLE shortens it locally.
BLACKHOLE = float(os.environ.get("BACKUPKIT_TEST_BLACKHOLE", "60"))


def _policy(tmp_path: Path, west, bucket: str, s3_first: bool = False) -> Path:
    p = tmp_path / "two-targets.toml"
    local = f"""
[[storage.targets]]
name = "local"
url = "file://{tmp_path / 'local'}"
"""
    s3 = f"""
[[storage.targets]]
name = "west"
url = "s3://{bucket}/repo"
endpoint_url = "{west.endpoint}"
region = "us-west-2"
connect_timeout = 2
read_timeout = 4
max_attempts = 1
"""
    p.write_text("[storage]\nwrite_quorum = 1\nstall_timeout = 3\n"
                 + (s3 + local if s3_first else local + s3))
    return p


def test_a_frozen_target_never_widens_the_loss_window(mariadb_factory, regions, tmp_path):
    _, west = regions
    bucket = f"slow-{os.getpid()}-{int(time.time())}"
    west.create_bucket(bucket)
    src = mariadb_factory(server_id=1)
    make_table(src)
    policy = _policy(tmp_path, west, bucket)
    env = {"BACKUPKIT_SOURCE": src.url}
    r = run_cli("--policy", str(policy), "snapshot", "--json", env=env)
    assert r.returncode == 0, r.stderr
    log = tmp_path / "ship.log"
    exe = str(Path(sys.executable).parent / "backupkit")
    with open(log, "ab") as fh:
        proc = subprocess.Popen([exe, "--policy", str(policy), "binlog", "ship", "--sync-interval", "0.2",
                                 "--heartbeat", "0.5", "--confirm-interval", "1"],
                                stdout=fh, stderr=fh, env={**os.environ, **env}, start_new_session=True)
    try:
        _blackhole_run(src, west, bucket, policy, env, proc, log)
    finally:
        if proc.poll() is None:  # a failed run never leaves its shipper behind
            proc.kill()
            proc.wait(30)


def _blackhole_run(src, west, bucket, policy, env, proc, log) -> None:
    healthy = Catalog(open_store(f"file://{policy.parent / 'local'}"))
    writer = shipping_writer(src, pause=0.05)
    writer.start()
    sid = wait_for(healthy.sources, 30, "the first segment")[0]

    def loss_window() -> float:
        """Now minus the newest moment the healthy target proves shipped (commit or watermark)."""
        last = healthy.last_segment(sid)
        st = read_status(healthy, sid)
        newest = max(last.last_commit_time if last else 0.0, st.confirmed_at if st else 0.0)
        return time.time() - newest

    windows, status_times = [], []
    frozen = False

    def timed_status() -> float:
        t0 = time.monotonic()
        st = run_cli("--policy", str(policy), "binlog", "status", "--json", env=env, timeout=60)
        assert st.returncode == 0, st.stderr
        return time.monotonic() - t0

    try:
        baseline = timed_status()  # process start and imports: seconds on a loaded machine
        time.sleep(1)
        os.killpg(west.proc.pid, signal.SIGSTOP)  # the west region freezes: a blackhole
        frozen = True
        t_end = time.monotonic() + BLACKHOLE
        next_status = time.monotonic() + 5
        while time.monotonic() < t_end:
            windows.append(loss_window())
            if time.monotonic() >= next_status:
                status_times.append(timed_status())
                next_status = time.monotonic() + 15
            time.sleep(0.5)
        t0 = time.monotonic()
        tg = run_cli("--policy", str(policy), "repo", "targets", "--json", env=env, timeout=120)
        targets_time = time.monotonic() - t0
        rows = {t["name"]: t for t in json.loads(tg.stdout)["targets"]}
        assert rows["west"]["reachable"] is False and rows["local"]["reachable"] is True
    finally:
        if frozen:
            os.killpg(west.proc.pid, signal.SIGCONT)
        writer.stop()
    # the frozen target catches up in the background (the shipper keeps running)
    def caught_up() -> bool:
        have = {k.removeprefix("repo/") for k in bucket_keys(west, bucket)}
        want = {i.key for i in healthy.store.list(layout.binlog_prefix(sid))
                if layout.is_segment_index(i.key)}
        return want <= have
    wait_for(caught_up, 60, "the west target to catch up")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()
    text = log.read_text()
    print(f"loss window from the healthy target during a {BLACKHOLE:g} s blackhole: "
          f"max {max(windows):.2f} s, median {sorted(windows)[len(windows) // 2]:.2f} s; "
          f"binlog status took {', '.join(f'{t:.1f}' for t in status_times)} s "
          f"({baseline:.1f} s before the outage); "
          f"repo targets took {targets_time:.1f} s")
    assert "taken by another shipper" not in text
    assert max(windows) < 2.5, windows
    # within 5 s; on a loaded machine process start alone can take longer, so the outage may add
    # at most the interactive deadline (2 s) and a second to what status took before it
    assert max(status_times) < max(5.0, baseline + 3.0), (baseline, status_times)


def test_a_frozen_first_target_does_not_cost_the_shipper_its_lease(mariadb_factory, regions, tmp_path):
    """Leases live on the first reachable target. With S3 listed first and frozen, the holder
    moves its still valid lease to the local target and keeps shipping: no standby, no lost
    lease. A commit marker waits for the frozen first target only LAG_GRACE (the local target
    then decides and S3 lags), so the loss window is bounded as with S3 second: under 2 s."""
    _, west = regions
    bucket = f"first-{os.getpid()}-{int(time.time())}"
    west.create_bucket(bucket)
    src = mariadb_factory(server_id=1)
    make_table(src)
    policy = _policy(tmp_path, west, bucket, s3_first=True)
    env = {"BACKUPKIT_SOURCE": src.url}
    assert run_cli("--policy", str(policy), "snapshot", "--json", env=env).returncode == 0
    log = tmp_path / "ship.log"
    exe = str(Path(sys.executable).parent / "backupkit")
    healthy = Catalog(open_store(f"file://{tmp_path / 'local'}"))
    writer = shipping_writer(src, pause=0.05)
    with open(log, "ab") as fh:
        proc = subprocess.Popen([exe, "--policy", str(policy), "binlog", "ship", "--sync-interval", "0.2",
                                 "--heartbeat", "0.5"],
                                stdout=fh, stderr=fh, env={**os.environ, **env}, start_new_session=True)
    frozen = False
    try:
        writer.start()
        sid = wait_for(healthy.sources, 30, "the first segment")[0]
        time.sleep(1)
        os.killpg(west.proc.pid, signal.SIGSTOP)
        frozen = True
        windows = []
        t_end = time.monotonic() + min(BLACKHOLE, 25)
        while time.monotonic() < t_end:
            last = healthy.last_segment(sid)
            windows.append(time.time() - (last.last_commit_time if last else 0.0))
            time.sleep(0.5)
        os.killpg(west.proc.pid, signal.SIGCONT)
        frozen = False
        time.sleep(3)
        writer.stop()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if frozen:
            os.killpg(west.proc.pid, signal.SIGCONT)
        writer.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text()
    print(f"S3 first and frozen: loss window from the local target max {max(windows):.2f} s, "
          f"median {sorted(windows)[len(windows) // 2]:.2f} s")
    assert "moved to the storage target that holds leases now" in text, text
    assert "standing by" not in text and "taken over" not in text and "lost" not in text, text
    assert max(windows) < 2.0, windows
