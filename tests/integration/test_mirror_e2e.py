"""Two regions end to end, with a real mariadbd and two moto_server processes: snapshot and binlog
shipping write to both; one region stops mid-stream and repo sync completes it; the first region is
lost and the restore from the second is exact; a corrupt copy in the first is read from the second."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.repo.codec import verify_object
from backupkit.settings import Settings
from tests.support import run_cli, table_checksums, wait_for
from tests.support.regions import bucket_keys, s3_client, two_region_policy
from tests.support.shipping import stop_proc

pytestmark = pytest.mark.timeout(400)
ENV = {"BACKUPKIT_TARGET_PASSWORD": ""}


def _replicated(keys: dict[str, int]) -> dict[str, int]:
    """Objects every region holds (a lease lives only on the first reachable target)."""
    return {k: v for k, v in keys.items() if layout.is_replicated(k.removeprefix("repo/"))}


@pytest.fixture
def source(mariadb):
    mariadb.sql("CREATE DATABASE shop")
    mariadb.sql("CREATE TABLE shop.orders (id INT PRIMARY KEY AUTO_INCREMENT, item VARCHAR(100), qty INT)")
    mariadb.sql("INSERT INTO shop.orders (item, qty) SELECT CONCAT('item-', seq), seq % 9 "
                "FROM shop.seq_1_to_20000")
    return mariadb


def _with_source(policy: Path, source) -> str:
    policy.write_text(f'[source]\nurl = "{source.url}"\n' + policy.read_text())
    return str(policy)


def _snapshot(policy: str) -> tuple[str, dict]:
    r = run_cli("snapshot", "--policy", policy, "--json")  # a full base: whole-server restores use it
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["backup_id"], r


def _ship_once(policy: str):
    r = run_cli("binlog", "ship", "--once", "--policy", policy, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def _lose(server, bucket: str) -> None:
    """A region is lost: its bucket and every object in it are gone."""
    c = s3_client(server)
    c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in bucket_keys(server, bucket)]})
    c.delete_bucket(Bucket=bucket)


def _commit_markers(server, bucket) -> set[str]:
    return {k for k in bucket_keys(server, bucket) if layout.is_commit_marker(k.removeprefix("repo/"))}


def test_snapshot_and_shipping_reach_both_regions_and_the_second_restores_alone(regions, source,
                                                                                 mariadb_factory, tmp_path):
    east, west = regions
    p, eb, wb = two_region_policy(tmp_path, east, west, quorum="all")
    policy = _with_source(p, source)
    backup_id, _ = _snapshot(policy)
    at_snapshot = table_checksums(source, ["shop"])
    source.sql("UPDATE shop.orders SET qty = qty + 1 WHERE id <= 100")
    _ship_once(policy)
    keys_e, keys_w = bucket_keys(east, eb), bucket_keys(west, wb)
    assert _replicated(keys_e) == keys_w
    assert any(layout.is_segment_index(k.removeprefix("repo/")) for k in keys_w)
    assert "repo/" + layout.backup_manifest(backup_id) in keys_w

    _lose(east, eb)  # the first region is lost entirely
    target = mariadb_factory(server_id=2)
    r = run_cli("restore", backup_id, "--policy", policy, "--target", target.url, "--json", env=ENV)
    assert r.returncode == 0, r.stderr
    assert table_checksums(target, ["shop"]) == at_snapshot
    lst = run_cli("list", "--policy", policy, "--json")
    assert lst.returncode == 0, lst.stderr
    out = json.loads(lst.stdout)
    assert [b["id"] for b in out["backups"]] == [backup_id] and out["binlog_coverage"]
    assert {t["name"]: t["reachable"] for t in out["targets"]} == {"east": False, "west": True}


def test_point_in_time_restore_from_the_second_region(regions, source, mariadb_factory, tmp_path):
    east, west = regions
    p, eb, wb = two_region_policy(tmp_path, east, west, quorum="all")
    policy = _with_source(p, source)
    _snapshot(policy)
    source.sql("UPDATE shop.orders SET qty = 100 WHERE id <= 50")
    time.sleep(1.2)
    wanted = table_checksums(source, ["shop"])
    moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    time.sleep(1.2)
    source.sql("DELETE FROM shop.orders WHERE id > 19000")
    _ship_once(policy)
    _lose(east, eb)
    target = mariadb_factory(server_id=2)
    r = run_cli("restore", "--to-time", moment, "--policy", policy, "--target", target.url, "--json",
                env=ENV)
    assert r.returncode == 0, r.stderr
    assert table_checksums(target, ["shop"]) == wanted


def test_corrupt_object_in_the_first_region_is_restored_from_the_second_and_said(regions, source,
                                                                                  mariadb_factory, tmp_path):
    east, west = regions
    p, eb, wb = two_region_policy(tmp_path, east, west, quorum="all")
    policy = _with_source(p, source)
    backup_id, _ = _snapshot(policy)
    at_snapshot = table_checksums(source, ["shop"])
    chunk = next(k for k in bucket_keys(east, eb) if k.endswith(".tsv.zst"))
    c = s3_client(east)
    data = bytearray(c.get_object(Bucket=eb, Key=chunk)["Body"].read())
    data[len(data) // 2] ^= 0x01
    c.put_object(Bucket=eb, Key=chunk, Body=bytes(data))
    target = mariadb_factory(server_id=2)
    r = run_cli("restore", backup_id, "--policy", policy, "--target", target.url, "--json", env=ENV)
    assert r.returncode == 0, r.stderr
    assert table_checksums(target, ["shop"]) == at_snapshot
    said = [ln for ln in r.stderr.splitlines() if chunk.removeprefix("repo/") in ln]
    assert said and "corrupt" in said[0] and "east" in said[0] and "read from target west" in said[0]
    served = json.loads(r.stdout)["storage_targets"]  # the command's own output says it too
    assert served["objects_served"]["west"] >= 1
    assert [(e["target"], e["key"], e["served_by"]) for e in served["events"]] == \
        [("east", chunk.removeprefix("repo/"), "west")]
    # Each target on its own: verify finds the damaged copy in east and none in west.
    v = run_cli("verify", "--all", "--policy", policy, "--storage", "east")
    assert v.returncode == 5 and chunk.removeprefix("repo/") in v.stdout + v.stderr
    v = run_cli("verify", "--all", "--policy", policy, "--storage", "west")
    assert v.returncode == 0, v.stdout + v.stderr


def _start_shipper(policy: str, log: Path) -> subprocess.Popen:
    exe = shutil.which("backupkit") or str(Path(sys.executable).parent / "backupkit")
    fh = open(log, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([exe, "binlog", "ship", "--policy", policy, "--sync-interval", "0.2",
                             "--heartbeat", "0.5"], stdout=fh, stderr=fh, start_new_session=True)
    proc._log = fh  # type: ignore[attr-defined]
    return proc


def _segments(server, bucket) -> int:
    return sum(1 for k in bucket_keys(server, bucket) if layout.is_segment_index(k.removeprefix("repo/")))


def test_region_stopped_while_shipping_writes_go_on_and_sync_completes_it(regions, source, tmp_path):
    east, west = regions
    p, eb, wb = two_region_policy(tmp_path, east, west, quorum=1)
    policy = _with_source(p, source)
    backup_id, _ = _snapshot(policy)
    log = tmp_path / "shipper.log"
    shipper = _start_shipper(policy, log)
    try:
        wait_for(lambda: _segments(west, wb) >= 1, 60, "the first segment in both regions")
        os.killpg(west.proc.pid, signal.SIGSTOP)  # the west region freezes while shipping goes on
        try:
            before = _segments(east, eb)
            for i in range(6):
                source.sql(f"UPDATE shop.orders SET qty = qty + {i + 1} WHERE id % 7 = {i}")
                time.sleep(0.4)
            wait_for(lambda: _segments(east, eb) >= before + 3, 90, "segments in east while west is stopped")
            source.sql("UPDATE shop.orders SET qty = 0 WHERE id = 1")
            wait_for(lambda: _segments(east, eb) >= before + 4, 60, "the last change shipped")
            assert shipper.poll() is None, log.read_text()
            # stopped before west wakes: a running shipper would complete west in the background
            # (test_coverage_slow_target.py); here west must stay behind for repo sync to complete
            stop_proc(shipper)
        finally:
            os.killpg(west.proc.pid, signal.SIGCONT)
    finally:
        stop_proc(shipper)
    assert _commit_markers(west, wb) < _commit_markers(east, eb)  # west lags, and shows only whole things
    r = run_cli("list", "--policy", policy, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    lag = {t["name"]: t for t in json.loads(r.stdout)["targets"]}
    assert lag["west"]["missing_segments"] > 0 and lag["west"]["lag_s"] > 0
    # The loss window of each strategy if one target is lost: losing east (complete) costs more.
    rep = run_cli("report", "--policy", policy, "--no-count", "--json")
    assert rep.returncode == 0, rep.stderr
    report = json.loads(rep.stdout)
    assert {t["name"]: t["missing_segments"] > 0 for t in report["targets"]} == {"east": False, "west": True}
    by = {r["lost_target"]: {x["strategy"]: x for x in r["strategies"]} for r in report["if_target_lost"]}
    assert by["east"]["binlog"]["loss_seconds"] > by["west"]["binlog"]["loss_seconds"]
    assert by["east"]["snapshot"]["recovery_source"] == by["west"]["snapshot"]["recovery_source"] == backup_id
    tg = run_cli("repo", "targets", "--policy", policy, "--json")
    assert tg.returncode == 0, tg.stderr
    assert [r["lost_target"] for r in json.loads(tg.stdout)["if_lost"]] == ["east", "west"]
    r = run_cli("repo", "sync", "--policy", policy, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(x["complete"] for x in json.loads(r.stdout)["results"])
    assert _commit_markers(west, wb) == _commit_markers(east, eb)
    # West alone now holds the same, readable, verified history.
    west_only = Catalog(Settings.resolve(policy, "west", None).open_store())
    east_only = Catalog(Settings.resolve(policy, "east", None).open_store())
    sid = east_only.sources()[0]
    assert [s.key for s in west_only.segments(sid)] == [s.key for s in east_only.segments(sid)]
    assert west_only.backup(backup_id).id == backup_id
    for seg in west_only.segments(sid):
        verify_object(west_only.store, seg.object)  # every byte checked against its index entry


def test_large_corrupt_chunk_is_loaded_again_from_the_other_region(regions, source, mariadb_factory,
                                                                   tmp_path, monkeypatch):
    """A chunk too big to verify before loading: the load fails on the bad copy, is rolled back, and
    is loaded again from the other region (the snapshot loader retries on another copy)."""
    from backupkit.restore.load import RestoreOptions, restore_snapshot
    from backupkit.storage.mirror import find_mirror

    monkeypatch.setattr("backupkit.repo.failover.BUFFER_LIMIT", 1024)  # every chunk streams
    source.sql("CREATE TABLE shop.blobs (id INT PRIMARY KEY, b VARBINARY(1000))")
    source.sql("INSERT INTO shop.blobs SELECT seq, RANDOM_BYTES(1000) FROM shop.seq_1_to_4000")
    east, west = regions
    p, eb, wb = two_region_policy(tmp_path, east, west, quorum="all")
    policy = _with_source(p, source)
    backup_id, _ = _snapshot(policy)
    at_snapshot = table_checksums(source, ["shop"])
    c = s3_client(east)
    sizes = bucket_keys(east, eb)
    chunk = next(k for k in sizes if "/blobs/" in k and k.endswith(".tsv.zst"))
    assert sizes[chunk] > 2 << 20  # more than the codec reads at once: bytes flow before the end
    data = bytearray(c.get_object(Bucket=eb, Key=chunk)["Body"].read())
    data[len(data) - 1000] ^= 0x01
    c.put_object(Bucket=eb, Key=chunk, Body=bytes(data))
    store = Settings.resolve(policy, None, None).open_store()
    target = mariadb_factory(server_id=2)
    result = restore_snapshot(store, Catalog(store).backup(backup_id), target.spec,
                              RestoreOptions(parallel=2, record=False))
    assert result.rows == 24000
    assert table_checksums(target, ["shop"]) == at_snapshot
    events = find_mirror(store).report()["events"]
    key = chunk.removeprefix("repo/")
    assert any(e["kind"] == "read_failover" and e["target"] == "east" and e["key"] == key for e in events)
