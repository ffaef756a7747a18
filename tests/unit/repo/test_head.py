"""The binlog head: the newest committed segment in one GET, checked against the listing."""

from __future__ import annotations

from backupkit.repo import layout
from backupkit.storage.local import LocalStore
from tests.support.scale import SOURCE, CountingStore, build_repository, synthetic_segment


def _repo(tmp_path, n=30, with_head=True):
    store = CountingStore(LocalStore(tmp_path / "repo"))
    return store, build_repository(store, n, per_file=10, with_head=with_head)


def test_shipped_position_from_the_head_costs_three_requests(tmp_path):
    store, cat = _repo(tmp_path)
    store.reset()
    last = cat.last_segment(SOURCE)
    assert last == synthetic_segment(29, 10)
    assert store.counts == {"open": 1, "stat": 1, "list": 1}
    assert cat.head(SOURCE).rollups == ["binlog.000001", "binlog.000002", "binlog.000003"]


def test_a_segment_committed_after_the_head_is_still_found(tmp_path):
    store, cat = _repo(tmp_path)
    newer = synthetic_segment(30, 10)  # in a new file: the head still names segment 29
    cat.commit_segment(newer)
    assert cat.last_segment(SOURCE) == newer
    assert cat.shipped_position(SOURCE) == (newer.binlog_file, newer.end_pos)


def test_a_head_naming_a_removed_entry_falls_back_to_listing(tmp_path):
    store, cat = _repo(tmp_path)
    cat.store.delete([synthetic_segment(29, 10).key, synthetic_segment(28, 10).key])
    assert cat.last_segment(SOURCE) == synthetic_segment(27, 10)


def test_a_damaged_or_missing_head_falls_back_to_listing(tmp_path):
    store, cat = _repo(tmp_path)
    store.put(layout.binlog_head(SOURCE), b"{not json")
    assert cat.head(SOURCE) is None
    assert cat.last_segment(SOURCE) == synthetic_segment(29, 10)
    store2, cat2 = _repo(tmp_path / "old", with_head=False)
    assert cat2.head(SOURCE) is None
    assert cat2.last_segment(SOURCE) == synthetic_segment(29, 10)


def test_the_head_is_no_segment_and_no_commit_marker():
    key = layout.binlog_head(SOURCE)
    assert layout.segment_of(key) is None
    assert not layout.is_commit_marker(key)
    assert layout.commit_marker_of(key) is None
    assert layout.source_of(key) == SOURCE


def test_the_head_works_through_the_encryption_layer(tmp_path):
    from backupkit.repo.keyring import open_encrypted
    from tests.unit.storage.test_crypto import kek

    store = open_encrypted(LocalStore(tmp_path / "repo"), [kek()])
    cat = build_repository(store, 15, per_file=10)
    assert [i.key for i in store.list_after(layout.binlog_prefix(SOURCE),
                                            synthetic_segment(13, 10).key)
            if layout.segment_of(i.key)] == [synthetic_segment(14, 10).key]
    assert cat.head(SOURCE).segment == synthetic_segment(14, 10)
    assert cat.last_segment(SOURCE) == synthetic_segment(14, 10)


# -- the head drives the catalog: roll-ups of the files it names are authoritative ------------
def _listed(cat):
    """The segments as every index entry says, read one by one (no head, no roll-up)."""
    return [s.to_dict() for s in cat._segments_listed(SOURCE)]


def test_files_the_head_names_are_read_from_their_roll_ups_alone(tmp_path):
    store, cat = _repo(tmp_path, n=35)  # files 1-3 finished and named, file 4 open (5 entries)
    want = _listed(cat)
    store.reset()
    assert [s.to_dict() for s in cat.segments(SOURCE)] == want
    # the head, the roll-ups listed, 3 roll-ups, one LIST after the last named file, 5 entries
    assert store.counts == {"open": 1 + 3 + 5, "list": 2}


def test_a_named_file_without_its_roll_up_is_listed(tmp_path):
    store, cat = _repo(tmp_path, n=35)
    want = _listed(cat)
    store.delete([layout.segment_rollup(SOURCE, "binlog.000002")])  # prune or compaction at work
    assert [s.to_dict() for s in cat.segments(SOURCE)] == want
    store.put(layout.segment_rollup(SOURCE, "binlog.000001"), b"damaged")
    assert [s.to_dict() for s in cat.segments(SOURCE)] == want


def test_a_head_that_does_not_hold_up_falls_back_to_listing(tmp_path):
    store, cat = _repo(tmp_path, n=35)
    want = _listed(cat)
    head = cat.head(SOURCE)
    cat.write_head(head.segment, [*head.rollups, "binlog.000009"])  # names a file after its segment
    assert [s.to_dict() for s in cat.segments(SOURCE)] == want
    # a writer that named file 3 while file 2 had no roll-up: file 2's entries would be missed
    store.delete([layout.segment_rollup(SOURCE, "binlog.000002")])
    cat.write_head(synthetic_segment(19, 10), ["binlog.000001"])  # a head older than the entries
    assert [s.to_dict() for s in cat.segments(SOURCE)] == want
    store.delete([synthetic_segment(34, 10).key])  # the head's own segment gone (and no roll-up)
    want = [d for d in want if d["start_pos"] != synthetic_segment(34, 10).start_pos
            or d["binlog_file"] != "binlog.000004"]
    cat.write_head(synthetic_segment(34, 10), head.rollups)
    assert [s.to_dict() for s in cat.segments(SOURCE)] == want


def test_settle_rolls_up_the_finished_files_after_the_named_ones(tmp_path):
    store, cat = _repo(tmp_path, n=35)
    for f in ("binlog.000002", "binlog.000003"):  # a shipper stopped before these landed
        store.delete([layout.segment_rollup(SOURCE, f)])
    cat.write_head(synthetic_segment(34, 10), ["binlog.000001", "binlog.000002", "binlog.000003"])
    assert cat.settle_rollups(SOURCE) == {"binlog.000001", "binlog.000002", "binlog.000003"}
    assert store.stat(layout.segment_rollup(SOURCE, "binlog.000003")) is not None
    assert store.stat(layout.segment_rollup(SOURCE, "binlog.000004")) is None  # still open
