"""Incremental verify: a run checks only what no earlier run checked; --all and the full cycle
read everything; what failed is checked again."""

from __future__ import annotations

from backupkit.operations.verify import read_verified, verify_repository
from backupkit.repo import layout
from backupkit.storage.local import LocalStore
from tests.support.scale import SOURCE, CountingStore, add_segment, build_repository


def _repo(tmp_path, n=25):
    store = CountingStore(LocalStore(tmp_path / "repo"))
    return store, build_repository(store, n, per_file=10, with_data=True)


def _new(store, **kw):
    return verify_repository(store, everything=False, **kw)


def test_a_second_run_reads_only_what_is_new(tmp_path):
    store, cat = _repo(tmp_path)
    first = _new(store)  # nothing recorded yet: a full run
    assert first.ok and first.full and first.objects == 25
    record = read_verified(cat)  # the finished files 1 and 2 as one digest each, file 3 per object
    assert len(record.objects) == 5 and sorted(record.groups) == ["scale-src\nbinlog.000001",
                                                                  "scale-src\nbinlog.000002"]
    store.reset()
    second = _new(store)
    assert second.ok and not second.full and second.objects == 0 and second.skipped == 25
    assert store.counts["open"] < 25  # index entries through the roll-ups, no data object
    for i in range(25, 28):
        add_segment(cat, i, 10, with_data=True)
    third = _new(store)
    assert third.ok and third.objects == 3 and third.skipped == 25


def test_all_and_the_full_cycle_read_everything_and_find_old_damage(tmp_path):
    store, cat = _repo(tmp_path)
    assert _new(store).ok
    seg = cat.segments(SOURCE)[3]
    path = tmp_path / "repo" / seg.object.key
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    assert _new(store).ok  # checked before: not read again
    assert _new(store, full_every=3600).ok  # the last full read is recent
    cycle = _new(store, full_every=0)
    assert cycle.full and [p.key for p in cycle.problems] == [seg.object.key]
    again = _new(store)  # what failed is not recorded: checked again
    assert not again.full and [p.key for p in again.problems] == [seg.object.key]
    full = verify_repository(store)  # everything (verify --all)
    assert full.full and full.objects == 25 and not full.ok


def test_a_damaged_record_means_a_full_run(tmp_path):
    store, cat = _repo(tmp_path, n=5)
    assert _new(store).ok
    store.put(layout.verified_record(), b"garbage")
    run = _new(store)
    assert run.full and run.objects == 5 and run.ok
    assert len(read_verified(cat).objects) == 5


def test_a_changed_finished_file_is_checked_again_whole(tmp_path):
    """A group stands for its file's segments as they were: compaction or prune changing them
    changes the digest, so the file is read again (and damage in it is found)."""
    store, cat = _repo(tmp_path)
    assert _new(store).ok
    seg = cat.segments(SOURCE)[3]  # binlog.000001
    path = tmp_path / "repo" / seg.object.key
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    gone = cat.segments(SOURCE)[5]
    cat.forget_rollups(SOURCE, ["binlog.000001"])  # the file's segments change, as prune does it
    store.delete([gone.key])
    run = _new(store)
    assert run.objects == 9 and seg.object.key in [p.key for p in run.problems]  # and the hole
    assert "scale-src\nbinlog.000001" not in read_verified(cat).groups  # not recorded: again next time
