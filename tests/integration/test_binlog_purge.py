"""Safe purging (issue 15, part 3): `binlog purge` never removes a binlog file the repository does
not hold, while writes go on and the shipper is killed and restarted; `binlog status --check`
fails when the server's own expiry could drop unshipped binlog."""

from __future__ import annotations

import json
import signal
import time

import pytest

from backupkit.repo.catalog import Catalog
from backupkit.repo.coverage import build_runs
from backupkit.storage import open_store
from backupkit.strategies.binlog.purge import _closed_files, purge_binlogs
from tests.support import run_cli, table_checksums, wait_for
from tests.support.shipping import cli_env, make_table, shipping_writer, start_shipper, stop_proc

pytestmark = pytest.mark.timeout(300)


def _files(src) -> list[str]:
    return [r[0] for r in src.sql("SHOW BINARY LOGS")]


def test_purge_never_removes_an_unshipped_file_while_the_shipper_dies_and_restarts(
        mariadb_factory, tmp_path):
    src = mariadb_factory(server_id=1)
    url = f"file://{tmp_path / 'repo'}"
    env = cli_env(src, url)
    make_table(src)
    assert run_cli("snapshot", "--json", env=env).returncode == 0
    catalog = Catalog(open_store(url))
    log = tmp_path / "ship.log"
    proc = start_shipper(src, url, log)
    writer = shipping_writer(src, rotate_every=0.3, pause=0.01)
    writer.start()
    sid = wait_for(catalog.sources, 20, "the first segment")[0]
    # a source is listed once its first data object is; its index entry comes a moment later
    wait_for(lambda: catalog.segments(sid), 20, "the first index entry")
    removed_all: list[str] = []
    purges = 0

    def purge_and_check() -> None:
        nonlocal purges
        before = set(_files(src))
        plan = purge_binlogs(catalog, src.spec, sid, 0.0)
        purges += 1
        gone = sorted(before - set(_files(src)))
        segs = catalog.segments(sid)
        closed = _closed_files(segs, catalog.gaps(sid))
        first = min(s.binlog_file for s in segs)
        unshipped = [f for f in gone if f not in closed and f >= first]
        assert not unshipped, (unshipped, plan.to_dict())
        removed_all.extend(gone)

    def purge_and_check_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            purge_and_check()
            time.sleep(0.4)

    try:
        purge_and_check_for(6)
        stop_proc(proc, signal.SIGKILL)  # the shipper dies; writes and rotations go on
        purge_and_check_for(4)
        proc = start_shipper(src, url, log)
        purge_and_check_for(6)
    finally:
        writer.stop()
        # let the shipper catch up, then stop it
        time.sleep(2)
        stop_proc(proc)
    assert removed_all, "nothing was ever purged"
    assert "GAP" not in log.read_text()
    segs = catalog.segments(sid)
    assert not catalog.gaps(sid) and len(build_runs(segs)) == 1
    # the repository still reaches the server's newest state from the snapshot
    tgt = mariadb_factory(server_id=2)
    r = run_cli("restore", "--latest", "--target", tgt.url, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert table_checksums(tgt, ["w"]) == table_checksums(src, ["w"])
    print(f"purge calls: {purges}, files purged: {len(removed_all)}, writer commits: {writer.commits}")


def test_status_check_fails_when_the_server_expiry_could_drop_unshipped_binlog(mariadb_factory, tmp_path):
    src = mariadb_factory(server_id=1, extra_args=["--binlog-expire-logs-seconds=600"])
    url = f"file://{tmp_path / 'repo'}"
    env = cli_env(src, url)
    make_table(src)
    r = run_cli("binlog", "ship", "--once", "--from-current", "--json", env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("binlog", "status", "--check", "--json", env=env)
    assert r.returncode == 1, r.stdout
    st = json.loads(r.stdout)["sources"][0]
    assert any("expiry" in w for w in st["warnings"]), st["warnings"]
    # the dry run shows the plan and changes nothing
    src.sql("FLUSH BINARY LOGS")
    r = run_cli("binlog", "ship", "--once", "--json", env=env)
    assert r.returncode == 0, r.stderr
    before = _files(src)
    r = run_cli("binlog", "purge", "--keep", "0", "--dry-run", "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["files"] == before[:-1] and _files(src) == before
    r = run_cli("binlog", "purge", "--keep", "1d", "--json", env=env)
    assert json.loads(r.stdout)["files"] == [] and "newer than --keep" in r.stdout
