"""Format 2 (the binlog index apart from its data) and `repo migrate` from format 1."""

from __future__ import annotations

import pytest

from backupkit.errors import IntegrityError, UsageError
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, SegmentInfo, encode_manifest
from backupkit.repo.codec import put_object
from backupkit.repo.migrate import migrate_repository
from backupkit.repo.repository import Repository
from backupkit.storage.local import LocalStore

SRC = "db/1"


def _legacy_key(file: str, start: int, end: int, suffix: str) -> str:
    """A format-1 segment key: binlog/<src>/<file>/<start>-<end><suffix>."""
    return f"binlog/{layout.enc(SRC)}/{layout.enc(file)}/{start:012d}-{end:012d}{suffix}"


def _format1(tmp_path, files=(("binlog.000001", 5), ("binlog.000002", 3))):
    """A repository as backupkit wrote format 1: config format 1, entries next to their data."""
    store = LocalStore(tmp_path / "repo")
    cat = Catalog(store)
    cfg = cat.ensure_repo()
    store.put(layout.REPO_CONFIG, encode_manifest({**cfg, "format": 1}))
    want = []
    for f, n in files:
        for i in range(n):
            start, end = 4 + 100 * i, 104 + 100 * i
            obj = put_object(store, _legacy_key(f, start, end, ".binlog.zst"), [b"x" * 10])
            seg = SegmentInfo(SRC, f, start, end, obj, first_commit_time=start, last_commit_time=end,
                              transactions=1, range_id="r1", format=1)
            store.put(_legacy_key(f, start, end, ".json"), encode_manifest(seg.to_dict()))
            want.append(seg.to_dict())
    return store, want


def test_format2_keys_keep_the_index_apart_from_the_data():
    idx = layout.segment_index(SRC, "binlog.000007", 4, 1234)
    data = layout.segment_data(SRC, "binlog.000007", 4, 1234)
    assert idx == "binlog/db%2F1/index/binlog.000007/000000000004-000000001234.json"
    assert data == "binlog/db%2F1/data/binlog.000007/000000000004-000000001234.binlog.zst"
    assert idx.startswith(layout.index_prefix(SRC)) and not data.startswith(layout.index_prefix(SRC))
    assert layout.commit_marker_of(data) == idx and layout.is_commit_marker(idx)
    assert layout.segment_of(idx) == ("binlog.000007", 4, 1234)
    assert layout.segment_of(data) is None and layout.legacy_segment_of(idx) is None
    # the key after a file's entries sorts before the next file's and after its own
    after = layout.index_after_file(SRC, "binlog.000007")
    assert idx < after < layout.segment_index(SRC, "binlog.000008", 4, 5)
    assert layout.segment_index(SRC, "binlog.0000070", 4, 5) > after  # a longer name: after too


def test_new_repositories_are_format_2_and_sources_are_listed_without_a_walk(tmp_path):
    store = LocalStore(tmp_path / "repo")
    cat = Catalog(store)
    assert cat.ensure_repo()["format"] == layout.FORMAT_VERSION == 2
    for sid in ("b", "a", "a-", "a0", "a.b"):
        obj = put_object(store, layout.segment_data(sid, "binlog.000001", 4, 10), [b"x"])
        cat.commit_segment(SegmentInfo(sid, "binlog.000001", 4, 10, obj))
    assert cat.sources() == ["a", "a-", "a.b", "a0", "b"]


def test_a_format1_repository_gets_one_line_naming_the_migration(tmp_path):
    store, _ = _format1(tmp_path)
    cat = Catalog(store)
    assert cat.sources() == [SRC]
    with pytest.raises(UsageError) as exc:
        cat.segments(SRC)
    assert "format 1" in exc.value.message and "repo migrate" in exc.value.hint
    with pytest.raises(UsageError):
        Catalog(store).last_segment(SRC)  # a shipper refuses to start on it too


def test_a_format1_repository_without_binlog_reads_and_becomes_format_2_on_the_first_segment(tmp_path):
    store, _ = _format1(tmp_path, files=())
    cat = Catalog(store)
    assert cat.segments(SRC) == [] and cat.last_segment(SRC) is None
    obj = put_object(store, layout.segment_data(SRC, "binlog.000001", 4, 10), [b"x"])
    cat.commit_segment(SegmentInfo(SRC, "binlog.000001", 4, 10, obj))
    assert Catalog(store).repo_config()["format"] == 2


def test_migrate_rewrites_the_index_keeps_the_data_and_is_idempotent(tmp_path):
    store, want = _format1(tmp_path)
    assert migrate_repository(store, dry_run=True).entries == 8
    assert Catalog(store).repo_config()["format"] == 1  # a dry run changes nothing
    res = migrate_repository(store)
    assert (res.from_format, res.to_format, res.entries, res.copied, res.removed) == (1, 2, 8, 8, 8)
    cat = Catalog(store)
    assert cat.repo_config()["format"] == 2
    assert [s.to_dict() for s in cat.segments(SRC)] == \
        sorted(want, key=lambda d: (d["binlog_file"], d["start_pos"]))
    assert not any(layout.legacy_segment_of(i.key) and i.key.endswith(".json") for i in store.list("binlog/"))
    # the data stayed in place, named by the new entries: no orphan for prune to delete
    assert Repository(store).orphans(older_than=float("inf")) == []
    seg = cat.segments(SRC)[0]
    assert b"".join(Repository(store).open_segment(seg)) == b"x" * 10
    again = migrate_repository(store)
    assert (again.from_format, again.entries, again.copied) == (2, 0, 0)


def test_migrate_finishes_an_interrupted_run_and_refuses_a_misplaced_entry(tmp_path):
    store, want = _format1(tmp_path)
    first = _legacy_key("binlog.000001", 4, 104, ".json")
    store.put(SegmentInfo.from_dict(want[0]).key, store.get_bytes(first))  # copied, then a crash
    res = migrate_repository(store)
    assert (res.entries, res.copied) == (8, 7)
    store2, want2 = _format1(tmp_path / "b")
    store2.put(_legacy_key("binlog.000009", 4, 104, ".json"),
               store2.get_bytes(_legacy_key("binlog.000001", 4, 104, ".json")))
    with pytest.raises(IntegrityError, match="not the segment its key names"):
        migrate_repository(store2)
    assert Catalog(store2).repo_config()["format"] == 1  # nothing removed, still format 1
