"""verify one binlog file at a time: the same result as reading the whole source at once (pinned
below, and passing on the code before the change), the record of what was checked kept per file,
at most one file's segments held at once, and compacted segments that overlap named."""

from __future__ import annotations

import gc
import time

import zstandard

from backupkit.operations import compact as cp
from backupkit.operations import verify as vf
from backupkit.operations.verify import read_verified, verify_repository
from backupkit.repo import layout
from backupkit.repo.catalog import SegmentInfo, encode_manifest
from backupkit.storage.local import LocalStore
from tests.support.scale import SOURCE, CountingStore, add_segment, build_repository
from tests.unit.operations.test_compact import FILE, SRC, T0, Repo


class Recording(CountingStore):
    """Counts as CountingStore does, and remembers which keys were read."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.reads: list[str] = []

    def open(self, key: str):
        self.reads.append(key)
        return super().open(key)


def _damaged(tmp_path):
    """4 files of 10 segments (the 4th open, 5 of them): a data object missing in file 2, a
    flipped byte in file 3, an index entry and its data gone in file 1 (a hole)."""
    store = CountingStore(LocalStore(tmp_path / "repo"))
    cat = build_repository(store, 35, per_file=10, with_data=True)
    segs = cat.segments(SOURCE)
    missing, flipped, hole = segs[13], segs[24], segs[5]
    (tmp_path / "repo" / missing.object.key).unlink()
    path = tmp_path / "repo" / flipped.object.key
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    store.delete([hole.key, hole.object.key])
    return store, cat, missing, flipped, hole, sum(s.object.size for s in segs if s is not hole)


def _result(rep):
    return ([(p.kind, p.key) for p in rep.problems], rep.objects, rep.bytes, rep.skipped, rep.full,
            rep.sources, rep.notes)


def test_the_result_on_a_damaged_multi_file_repository_is_pinned(tmp_path):
    store, cat, missing, flipped, hole, size = _damaged(tmp_path)
    hole_key = layout.segment_index(SOURCE, hole.binlog_file, hole.start_pos, hole.end_pos)
    want_problems = [("missing", missing.object.key), ("checksum", flipped.object.key),
                     ("gap", hole_key)]
    source = {"source_id": SOURCE, "segments": 34, "stored_bytes": size,
              "gaps_recorded": 0, "holes": 1}
    first = verify_repository(store, everything=False)  # nothing recorded: everything read
    assert _result(first) == (want_problems, 34, size, 0, True, [source], [])
    every = verify_repository(store)
    assert _result(every) == _result(first)
    # what failed is checked again; the hole's file (read through its roll-up now, which still
    # names the removed segment) changed, so it is read again whole, its missing object too
    for i in range(35, 38):
        add_segment(cat, i, 10, with_data=True)
    store.reset()
    again = verify_repository(store, everything=False)
    problems = [(p.kind, p.key) for p in again.problems]
    assert problems == [("missing", hole.object.key), ("missing", missing.object.key),
                        ("checksum", flipped.object.key)]
    assert again.objects == 10 + 2 + 3 and again.skipped == 38 - again.objects and not again.full
    third = verify_repository(store, everything=False)
    assert third.objects == 3 and third.skipped == 35  # the failed ones, nothing else


def test_the_record_is_kept_per_file_and_a_run_reads_only_the_open_files(tmp_path):
    store = Recording(LocalStore(tmp_path / "repo"))
    cat = build_repository(store, 35, per_file=10, with_data=True)
    assert verify_repository(store, everything=False).ok
    top = vf._read_top(cat)
    assert top.files == [f"{SOURCE}\nbinlog.000004"] and len(top.groups) == 3 and not top.objects
    assert len(read_verified(cat).objects) == 5  # the open file's, in its own record
    store.reads.clear()
    run = verify_repository(store, everything=False)
    assert run.ok and run.objects == 0 and run.skipped == 35
    reads = [k for k in store.reads if k.startswith(layout.VERIFY)]
    assert reads == [layout.verified_record(), layout.verified_file_record(SOURCE, "binlog.000004")]
    # the file finishes: its record goes, a digest stands for it
    for i in range(35, 41):
        add_segment(cat, i, 10, with_data=True)
    assert verify_repository(store, everything=False).objects == 6
    top = vf._read_top(cat)
    assert top.files == [f"{SOURCE}\nbinlog.000005"] and len(top.groups) == 4
    assert store.stat(layout.verified_file_record(SOURCE, "binlog.000004")) is None


def test_a_format_1_record_still_counts(tmp_path):
    """A record written by the verify before per-file records (one object, every open file's
    segments in it) is read: nothing it names is read again, and it is rewritten per file."""
    store = CountingStore(LocalStore(tmp_path / "repo"))
    cat = build_repository(store, 25, per_file=10, with_data=True)
    segs = cat.segments(SOURCE)
    groups = {}
    for f in ("binlog.000001", "binlog.000002"):
        groups[f"{SOURCE}\n{f}"] = vf._digest([s for s in segs if s.binlog_file == f])
    body = {"type": "verified", "objects": {s.object.key: s.object.sha256 for s in segs[20:]},
            "groups": groups, "full_at": time.time(), "updated_at": time.time()}
    store.put(layout.verified_record(), zstandard.ZstdCompressor().compress(encode_manifest(body)))
    run = verify_repository(store, everything=False)
    assert run.ok and run.objects == 0 and run.skipped == 25 and not run.full
    top = vf._read_top(cat)
    assert top.files == [f"{SOURCE}\nbinlog.000003"] and not top.objects


def test_at_most_one_files_segments_are_held_at_once(tmp_path, monkeypatch):
    """Counted, not timed: the SegmentInfo objects alive whenever a file's objects are checked
    are at most one file's (and a few: the head's), for a full and an incremental run."""
    store = CountingStore(LocalStore(tmp_path / "repo"))
    build_repository(store, 1_005, per_file=100, with_data=True)
    most = [0]
    check_all = vf._Checker.check_all

    def counting(self, items):
        most[0] = max(most[0], sum(1 for o in gc.get_objects() if type(o) is SegmentInfo))
        return check_all(self, items)

    monkeypatch.setattr(vf._Checker, "check_all", counting)
    for everything in (True, False, False):
        gc.collect()  # what earlier tests left alive is not this run's
        before = sum(1 for o in gc.get_objects() if type(o) is SegmentInfo)
        most[0] = 0
        assert verify_repository(store, everything=everything).ok
        assert most[0] >= 100 and most[0] - before <= 110, (most[0], before)


def test_compacted_segments_in_their_grace_are_no_damage_but_an_overlap_is(tmp_path):
    r = Repo(tmp_path, 20)
    r.catalog.roll_up_file(SRC, FILE)
    cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 100)
    segs = r.catalog.segments(SRC)
    wide = next(s for s in segs if s.merged)
    assert [s for s in segs if not s.merged and s is not segs[-1]]  # the last piece, in its grace
    assert verify_repository(r.store).ok
    # a second merged object starting inside the first and ending after it: neither covers the other
    pieces = r.segments[10:]
    bad = cp.merge_group(r.catalog, pieces, now=T0 + 200)
    assert bad.start_pos < wide.end_pos < bad.end_pos
    rep = verify_repository(r.store)
    assert [p.kind for p in rep.problems] == ["overlap"]
    assert wide.key in rep.problems[0].message and bad.key == rep.problems[0].key
    assert "hole" not in rep.problems[0].message
