"""The Repository facade: typed operations over a real local store, keys built by repo/layout only."""

from __future__ import annotations

import time

import pytest

from backupkit.errors import UsageError
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, BinlogPoint, GapInfo, SegmentInfo, SourceIdentity
from backupkit.repo.codec import put_object
from backupkit.repo.repository import Repository
from backupkit.repo.targets import RepositorySpec, TargetSpec
from backupkit.storage.local import LocalStore

SRC = "src-1"


@pytest.fixture
def repo(tmp_path) -> Repository:
    return Repository.open(RepositorySpec((TargetSpec("t", f"file://{tmp_path / 'r'}"),)))


def _segment(repo: Repository, start: int, end: int, file: str = "binlog.000001") -> SegmentInfo:
    data = b"\xfebin" + bytes(end - start)
    obj = repo.put_segment(SRC, file, start, end, data)
    seg = SegmentInfo(SRC, file, start, end, obj, first_commit_time=start, last_commit_time=end,
                      range_id="r1", transactions=1)
    repo.commit_segment(seg)
    return seg


def test_a_backup_exists_once_committed_and_is_read_back_typed(repo):
    bid = repo.new_backup_id("snapshot", at=1_700_000_000)
    obj = put_object(repo.store, layout.snapshot_chunk(bid, "db", "t", 0), b"row\n" * 10)
    assert repo.backups() == []
    repo.commit_backup(BackupManifest(bid, "snapshot", SourceIdentity(SRC), BinlogPoint("binlog.000001", 4),
                                      1.0, 2.0, objects=[obj]))
    [b] = repo.backups()
    assert (b.id, b.kind, b.objects[0].key) == (bid, "snapshot", obj.key)
    assert repo.backup(bid).source.source_id == SRC
    assert {i.key for i in repo.backup_objects(bid)} == {obj.key, layout.backup_manifest(bid)}
    assert repo.config()["type"] == "repository"
    repo.uncommit_backup(bid)
    assert repo.backups() == []
    with pytest.raises(UsageError):
        repo.backup(bid)


def test_segments_round_trip_and_coverage_breaks_at_a_recorded_gap(repo):
    a = _segment(repo, 4, 100)
    b = _segment(repo, 4, 200, file="binlog.000002")  # the next file from its start: continues a
    assert b"".join(repo.open_segment(a)) == b"\xfebin" + bytes(96)
    assert [s.key for s in repo.segments(SRC)] == [a.key, b.key]
    assert repo.sources() == [SRC]
    assert repo.shipped_position(SRC) == ("binlog.000002", 200)
    assert [r.count for r in repo.coverage(SRC)] == [2]
    repo.record_gap(GapInfo(SRC, "binlog.000001", 100, "binlog.000002", 4, time.time(), "purged"))
    assert [r.count for r in repo.coverage(SRC)] == [1, 1]
    assert repo.forget_gaps(repo.gaps(SRC)) == 1
    assert [r.count for r in repo.coverage(SRC)] == [2]
    repo.uncommit_segment(b)
    assert [s.key for s in repo.segments(SRC)] == [a.key]


def test_orphans_are_old_data_without_a_commit_marker(repo):
    kept = _segment(repo, 4, 50)
    lost = repo.put_segment(SRC, "binlog.000001", 50, 90, b"x" * 40)  # never committed
    assert repo.orphans(older_than=time.time() - 3600) == []  # too recent: maybe still being written
    assert repo.orphans(older_than=time.time() + 1) == [lost.key]
    entry = layout.segment_index(SRC, "binlog.000001", 50, 90)
    assert repo.orphans(time.time() + 1, removing_segments={entry}) == []
    assert kept.object.key not in repo.orphans(time.time() + 1)
    repo.delete([lost.key])
    assert repo.size_of(lost.key) == 0


def test_restore_records_and_the_shipper_lease(repo):
    rid = repo.record_restore({"finished_at": 5.0, "seconds": 1.5})
    assert [r["id"] for r in repo.restores()] == [rid]
    first = repo.shipper_lease(SRC, lease_seconds=30, holder="one")
    assert first.try_acquire()
    assert not repo.shipper_lease(SRC, lease_seconds=30, holder="two").try_acquire()
    first.release()
    assert repo.shipper_lease(SRC, lease_seconds=30, holder="two").try_acquire()
    assert repo.keyring([]) is None  # not encrypted
    assert isinstance(repo.store, LocalStore)


def test_usage_counts_backups_and_segments(repo):
    _segment(repo, 4, 100)
    bid = repo.new_backup_id("cold")
    obj = put_object(repo.store, layout.cold_archive(bid), b"tar" * 100, level=None)
    repo.commit_backup(BackupManifest(bid, "cold", SourceIdentity(SRC), BinlogPoint("binlog.000001", 4),
                                      1.0, 2.0, objects=[obj]))
    u = repo.usage()
    assert (u["backups"], u["segments"]) == (1, 1)
    assert u["backup_bytes"] > obj.size  # the data and the manifest
    assert u["objects"] == 5  # repository record, backup data and manifest, segment data and entry
