"""Rate limits against real parts: a limited snapshot reads the source at the limit, a limited
repository is written at the limit, and a restore reads at full speed unless asked."""

from __future__ import annotations

import os
import time

import pytest

from backupkit.repo.codec import put_object
from backupkit.repo.targets import RepositorySpec, TargetSpec, open_repository
from backupkit.storage import open_store
from backupkit.strategies.snapshot import SnapshotOptions, take_snapshot
from backupkit.util.ratelimit import BURST_SECONDS
from tests.support import run_cli

pytestmark = pytest.mark.timeout(120)

TOLERANCE = 0.10


def _fill(sb, rows: int) -> None:
    sb.sql("CREATE DATABASE app")
    sb.sql("CREATE TABLE app.t (id INT PRIMARY KEY, c CHAR(128) NOT NULL, pad CHAR(60) NOT NULL)")
    sb.sql(f"INSERT INTO app.t SELECT seq, SHA2(seq, 512), SHA2(-seq, 224) FROM seq_1_to_{rows}",
           database="app")


def test_a_limited_snapshot_reads_the_source_at_the_limit(mariadb, local_url):
    _fill(mariadb, 40_000)  # about 7.5 MB of row text
    rate = 4e6
    opts = SnapshotOptions(parallel=2, checksums=False, max_rate=rate)
    m = take_snapshot(mariadb.spec, open_store(local_url), opts)
    raw, seconds = m.stats["raw_bytes"], m.stats["data_seconds"]
    assert raw > 6e6
    achieved = raw / seconds
    assert abs(achieved / rate - 1) < TOLERANCE, (raw, seconds, achieved)
    assert m.details["options"]["max_rate"] == rate


def test_a_limited_repository_is_written_at_the_limit_and_read_at_full_speed(tmp_path):
    rate = 2e6
    url = f"file://{tmp_path / 'repo'}"
    spec = RepositorySpec((TargetSpec("t", url),), max_rate=rate,
                          rate_file=str(tmp_path / "state" / "storage.bucket"))
    store = open_repository(spec)
    data = os.urandom(4_000_000)
    t0 = time.monotonic()
    obj = put_object(store, "blob", data, level=None)
    wall = time.monotonic() - t0
    expected = (len(data) - rate * BURST_SECONDS) / rate  # a full bucket lets one burst through
    assert abs(wall / expected - 1) < TOLERANCE, (wall, expected)
    t0 = time.monotonic()
    with store.open(obj.key) as fh:
        assert fh.read() == data
    assert time.monotonic() - t0 < 0.5  # reads are not limited
    assert (tmp_path / "state" / "storage.bucket").exists()


def test_restore_max_rate_limits_a_restore_and_bad_rates_are_refused(mariadb_factory, tmp_path):
    src = mariadb_factory(server_id=1)
    _fill(src, 15_000)
    url = f"file://{tmp_path / 'repo'}"
    r = run_cli("--source", src.url, "--storage", url, "--json", "snapshot", "--max-rate", "50 MB/s")
    assert r.returncode == 0, r.stderr
    bad = run_cli("--source", src.url, "--storage", url, "snapshot", "--max-rate", "fast")
    assert bad.returncode == 2 and "--max-rate 'fast'" in bad.stderr and "MB = 10^6" in bad.stderr
    import json

    backup_id = json.loads(r.stdout)["backup_id"]
    dst = mariadb_factory(server_id=2)
    stored = sum(o.size for o in open_store(url).list("") if "/chunks/" in o.key or "chunk" in o.key)
    read_rate = max(stored / 1.5, 200_000)  # about 1.5 s of reading at this limit
    t0 = time.monotonic()
    r = run_cli("--storage", url, "restore", backup_id, "--target", dst.url,
                "--max-rate", str(int(read_rate)))
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert wall >= 1.0  # the reads waited for the limit


def test_a_limited_cold_backup_uploads_its_staging_copy_at_the_limit_at_idle_io(mariadb, tmp_path):
    _fill(mariadb, 2_000)
    url = f"file://{tmp_path / 'repo'}"
    (tmp_path / "stage").mkdir()
    rate = 20e6
    r = run_cli("--source", mariadb.url, "--storage", url, "--json", "cold",
                "--start-command", mariadb.start_command(), "--pid-file", str(mariadb.pid_file),
                "--staging", str(tmp_path / "stage"), "--max-rate", "20MB/s")
    assert r.returncode == 0, r.stderr
    import json

    staged = json.loads(r.stdout)["staging"]
    assert staged["max_rate"] == rate and staged["idle_io"] is True
    # the staged files (about 9 MB: the copy is sparse) are read at the limit, less one burst
    expected = (staged["bytes"] - rate * BURST_SECONDS) / rate
    assert staged["upload_seconds"] >= (1 - TOLERANCE) * expected, staged


def test_a_limited_physical_backup_reads_mariadb_backups_stream_at_the_limit(mariadb, local_url):
    from backupkit.strategies.physical import PhysicalOptions, take_physical_backup

    _fill(mariadb, 5_000)
    rate = 20e6
    t0 = time.monotonic()
    m = take_physical_backup(mariadb.spec, open_store(local_url), PhysicalOptions(max_rate=rate))
    wall = time.monotonic() - t0
    raw = sum(o.raw_size for o in m.objects)
    assert m.details["max_rate"] == rate
    assert wall >= (1 - TOLERANCE) * (raw - rate * BURST_SECONDS) / rate, (raw, wall)


def test_the_storage_limit_of_a_policy_is_shared_through_the_state_folder(tmp_path, monkeypatch):
    from backupkit.settings import Settings

    monkeypatch.setenv("BACKUPKIT_STATE_DIR", str(tmp_path / "state"))
    policy = tmp_path / "p.toml"
    policy.write_text(f'[storage]\nurl = "file://{tmp_path / "repo"}"\nmax_rate = "40MiB/s"\n')
    spec = Settings.resolve(str(policy), None, None).repository_spec()
    assert spec.max_rate == 40 * 2**20
    assert spec.rate_file.startswith(str(tmp_path / "state" / "rate" / "storage-"))
    other = Settings.resolve(str(policy), None, None).repository_spec()
    assert other.rate_file == spec.rate_file  # every job writing there takes from one bucket
