"""Chunks of the open file's roll-up (repo/rollups.py): a file open for long costs a bounded number
of GETs, never a LIST page per 1000 entries, and the catalog stays what the entries say."""

from __future__ import annotations

import random

import pytest

from backupkit.mysql.gtid import BinlogPoint
from backupkit.mysql.server import SourceIdentity
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, Catalog, chain, chunks_of
from backupkit.repo.rollups import CHUNK, OpenFileRollups, Stretches, roll_up_finished
from backupkit.storage.local import LocalStore
from tests.support.scale import (
    SOURCE,
    CountingStore,
    add_segment,
    build_repository,
    no_fsync,
    synthetic_segment,
)

PER_FILE = 100_000  # one file, still open


def _open_file(tmp_path, n: int) -> tuple[CountingStore, Catalog]:
    store = CountingStore(LocalStore(tmp_path / "repo"))
    with no_fsync():
        return store, build_repository(store, n, per_file=PER_FILE)


def _chunks(store) -> list[tuple[int, int]]:
    return sorted((c.start, c.end) for c in chunks_of(
        i.key for i in store.list(layout.rollup_prefix(SOURCE))).get("binlog.000001", []))


def _plain(cat: Catalog) -> list[dict]:
    return [s.to_dict() for s in cat._segments_listed(SOURCE)]


def test_an_open_file_is_read_from_its_chunks(tmp_path):
    store, cat = _open_file(tmp_path, 600)
    want = [(4 + i * 25600, 4 + (i + 1) * 25600) for i in range(2)]
    want += [(4 + 51200 + i * 1600, 4 + 51200 + (i + 1) * 1600) for i in range(5)]
    assert _chunks(store) == want  # the 32 level-0 chunks of the two wide ones are gone
    plain = _plain(cat)
    store.reset()
    assert [s.to_dict() for s in cat.segments(SOURCE)] == plain
    # the head, 7 chunks, 8 entries; LIST: the roll-ups, the index up to the chain, after it
    assert store.counts == {"open": 1 + 7 + 8, "list": 3}


def test_a_file_open_for_a_day_costs_a_bounded_number_of_requests(tmp_path):
    n = 86_400 // 8  # a quarter of the levels' worth at unit-test speed: 10,800 entries
    store, cat = _open_file(tmp_path, n)
    store.reset()
    segs = cat.segments(SOURCE)
    assert len(segs) == n
    # 10,800 = 2 x 4096 + 10 x 256 + 3 x 16 + 0: 15 chunks, one LIST page each side of the chain
    assert store.counts["list"] <= 3 and store.counts["open"] <= 1 + 15 + CHUNK, store.counts
    assert len(chain(chunks_of(i.key for i in store.list(layout.rollup_prefix(SOURCE)))["binlog.000001"],
                     4)) == 15


def test_a_damaged_or_missing_chunk_is_listed_instead(tmp_path):
    store, cat = _open_file(tmp_path, 600)
    plain = _plain(cat)
    wide = layout.rollup_chunk(SOURCE, "binlog.000001", 4, 4 + 25600)
    store.put(wide, b"damaged")
    assert [s.to_dict() for s in cat.segments(SOURCE)] == plain
    store.delete([wide, layout.rollup_chunk(SOURCE, "binlog.000001", 4 + 51200, 4 + 52800)])
    assert [s.to_dict() for s in cat.segments(SOURCE)] == plain


def test_a_writer_continues_the_chain_an_earlier_run_left(tmp_path):
    store, cat = _open_file(tmp_path, 250)  # 15 chunks of 16, 10 entries after them
    later = OpenFileRollups(cat, SOURCE)  # a shipper started anew in the middle of the file
    for i in range(250, 600):
        later.add(add_segment(cat, i, PER_FILE))
    assert _chunks(store)[:2] == [(4, 4 + 25600), (4 + 25600, 4 + 51200)]  # merged across runs
    cat.write_head(synthetic_segment(599, PER_FILE), [])
    assert [s.to_dict() for s in cat.segments(SOURCE)] == _plain(cat)


def test_no_merge_over_a_chunk_prune_or_compaction_removed(tmp_path):
    store, cat = _open_file(tmp_path, 0)
    writer = OpenFileRollups(cat, SOURCE)
    for i in range(16 * 15):
        writer.add(add_segment(cat, i, PER_FILE))
    cat.forget_rollups(SOURCE, ["binlog.000001"])  # an editor at work on the file
    assert _chunks(store) == []
    for i in range(240, 256):
        writer.add(add_segment(cat, i, PER_FILE))
    assert _chunks(store) == [(4 + 240 * 100, 4 + 256 * 100)]  # a new chain, no wide chunk
    cat.write_head(synthetic_segment(255, PER_FILE), [])
    assert [s.to_dict() for s in cat.segments(SOURCE)] == _plain(cat)


def test_no_merge_beyond_the_widest_level(tmp_path):
    store, cat = _open_file(tmp_path, 0)
    writer = OpenFileRollups(cat, SOURCE, top=1)  # as TOP_LEVEL, at a unit test's size
    for i in range(17 * 256 + 15 * 16):
        writer.add(add_segment(cat, i, PER_FILE))
    # 17 chunks of 256 (never merged: the widest level), 15 of 16
    assert [(b - a) // 100 for a, b in _chunks(store)] == [256] * 17 + [16] * 15
    cat.write_head(synthetic_segment(17 * 256 + 15 * 16 - 1, PER_FILE), [])
    assert [s.to_dict() for s in cat.segments(SOURCE)] == _plain(cat)


def test_chunks_of_a_finished_file_go_once_the_head_names_it(tmp_path):
    cat2 = build_repository(CountingStore(LocalStore(tmp_path / "two")), 1_050, per_file=1_000)
    keys = [i.key for i in cat2.store.list(layout.rollup_prefix(SOURCE))]
    assert layout.segment_rollup(SOURCE, "binlog.000001") in keys
    assert not [k for k in keys if layout.rollup_chunk_of(k) and "binlog.000001" in k]
    assert [k for k in keys if layout.rollup_chunk_of(k)]  # the open file's
    assert [s.to_dict() for s in cat2.segments(SOURCE)] == _plain(cat2)


def test_verify_names_a_damaged_chunk_and_repair_removes_it(tmp_path):
    from backupkit.operations.verify import rollup_problems

    store, cat = _open_file(tmp_path, 100)
    key = layout.rollup_chunk(SOURCE, "binlog.000001", 4, 4 + 1600)
    assert rollup_problems(cat, SOURCE) == ([], [])
    store.put(key, b"damaged")
    problems, _ = rollup_problems(cat, SOURCE)
    assert [p.key for p in problems] == [key] and "verify --repair" in problems[0].message
    problems, notes = rollup_problems(cat, SOURCE, repair=True)
    assert problems == [] and "removed" in notes[0] and store.stat(key) is None
    assert [s.to_dict() for s in cat.segments(SOURCE)] == _plain(cat)
    # a damaged chunk summary: named, and removed with --repair (readers ignore it meanwhile)
    summary = layout.chunk_summary(SOURCE, "binlog.000001")
    store.put(summary, b"damaged")
    problems, _ = rollup_problems(cat, SOURCE)
    assert [p.key for p in problems] == [summary] and "verify --repair" in problems[0].message
    assert _stretches(cat) == _want(cat)
    problems, notes = rollup_problems(cat, SOURCE, repair=True)
    assert problems == [] and "removed" in notes[0] and store.stat(summary) is None


# -- the chunk summary: what list, binlog status and report read of the open file ---------------
def _stretches(cat: Catalog, cuts=()) -> list[dict]:
    return [st.to_dict() for st in cat.stretches(SOURCE, cuts)]


def _want(cat: Catalog, cuts=()) -> list[dict]:
    from backupkit.repo.stretches import summarize
    return [st.to_dict() for st in summarize(cat._segments_listed(SOURCE), cuts)]


def test_the_summarizing_commands_read_the_chunk_summary_not_the_chunks(tmp_path):
    store, cat = _open_file(tmp_path, 600)  # 7 chunks in the chain, 8 entries after it
    assert store.stat(layout.chunk_summary(SOURCE, "binlog.000001")) is not None
    store.reset()
    got = _stretches(cat)
    # the head, the chunk summary, the 8 entries after the chain (no chunk read)
    assert store.counts["open"] == 1 + 1 + 8, store.counts
    assert got == _want(cat)
    # a cut (a base's point) inside a chunk's stretch: that chunk is read, the point located
    cut = [("binlog.000001", 4 + 100 * 300 + 50)]
    store.reset()
    got = _stretches(cat, cut)
    assert store.counts["open"] == 1 + 1 + 1 + 8, store.counts
    assert got == _want(cat, cut) and len(got) == 3
    # a file open for longer: the same GETs whatever its chunks
    store2, cat2 = _open_file(tmp_path / "bigger", 5_000)
    store2.reset()
    got = _stretches(cat2)
    assert store2.counts["open"] == 1 + 1 + 8, store2.counts
    assert got == _want(cat2)


def test_a_stale_or_damaged_chunk_summary_is_ignored(tmp_path):
    store, cat = _open_file(tmp_path, 600)
    want = _want(cat)
    summary = layout.chunk_summary(SOURCE, "binlog.000001")
    good = store.get_bytes(summary)
    # a chunk rewritten after the summary was made (another ETag): that chunk is read itself
    wide = layout.rollup_chunk(SOURCE, "binlog.000001", 4, 4 + 25600)
    store.put(wide, store.get_bytes(wide))
    store.reset()
    assert _stretches(cat) == want
    assert store.counts["open"] == 1 + 1 + 1 + 8, store.counts  # and that chunk
    # a summary whose entries lie (a checksummed body naming other entries): not trusted beyond
    # its chunk's interval; a damaged one: every chunk is read
    store.put(summary, good[:-7] + b"damaged")
    store.reset()
    assert _stretches(cat) == want
    assert store.counts["open"] == 1 + 1 + 7 + 8, store.counts
    store.delete([summary])
    assert _stretches(cat) == want


def test_a_compacted_entry_reaching_into_a_chunk_has_that_chunk_read(tmp_path):
    """Compaction merges entries the writer still holds (not in a chunk yet) and removes the
    chunks; the writer's next chunk starts inside the merged entry, which the reader lists before
    it: only the chunk's entries tell which of them the merged one hides."""
    store, cat = _open_file(tmp_path, 0)
    writer = OpenFileRollups(cat, SOURCE)
    segs = []
    for i in range(40):  # chunks of entries 0-15 and 16-31; 32-39 held by the writer
        segs.append(add_segment(cat, i, PER_FILE))
        writer.add(segs[-1])
    merged = synthetic_segment(0, PER_FILE)
    merged.end_pos, merged.merged = segs[35].end_pos, 36  # entries 0-35, small ones still listed
    merged.last_commit_time, merged.gtid_last = segs[35].last_commit_time, segs[35].gtid_last
    merged.gtid_state = segs[35].gtid_state
    cat.commit_segment(merged)
    cat.forget_chunks(SOURCE, ["binlog.000001"])  # as compaction does after a merge
    for i in range(40, 60):  # the next chunk: entries 32-47, from inside the merged entry
        segs.append(add_segment(cat, i, PER_FILE))
        writer.add(segs[-1])
    assert _chunks(store) == [(4 + 3200, 4 + 4800)]
    cat.write_head(segs[-1], [])
    want = _want(cat)
    assert want[0]["merged"] == 36 and want[0]["hidden"] == 36  # the merged entry hides 0-35
    store.reset()
    assert _stretches(cat) == want
    assert store.counts["open"] >= 1 + 1 + 1  # the chunk was read after all
    cut = [("binlog.000001", segs[40].start_pos + 50)]  # inside the chunk, and the merged entry
    assert _stretches(cat, cut) == _want(cat, cut)


def test_the_tail_is_exact_when_its_first_entry_starts_no_chain(tmp_path):
    """The tail asks for one key first when a chain starts a file; a finished file the head does
    not name (its roll-up not landed) lies before it: the whole listing is read after all."""
    store = CountingStore(LocalStore(tmp_path / "repo"))
    with no_fsync():
        cat = build_repository(store, 1_050, per_file=1_000)
    assert _chunks(store) == []  # binlog.000001's are gone; binlog.000002's start at 4:
    assert [c.start for c in chunks_of(i.key for i in store.list(layout.rollup_prefix(SOURCE)))
            ["binlog.000002"]] == [4, 4 + 1600, 4 + 3200]
    cat.write_head(synthetic_segment(1_049, 1_000), [])  # names no file
    want = _want(cat)
    assert _stretches(cat) == want and sum(st["count"] for st in want) == 1_050
    assert [s.to_dict() for s in cat.segments(SOURCE)] == _plain(cat)


@pytest.mark.parametrize("seed", range(12))
def test_chunk_summaries_change_nothing_the_chunks_would_say(tmp_path, seed):
    """Random open files written by the shipper's writer, with compaction merging random runs of
    committed entries (forgetting the chunks, deleting the small entries or not) and random cut
    points: the stretches read through the chunk summaries equal those read from the chunks."""
    rng = random.Random(seed)
    store, cat = _open_file(tmp_path, 0)
    writer = OpenFileRollups(cat, SOURCE)
    segs: list = []
    for i in range(rng.randint(40, 400)):
        segs.append(add_segment(cat, i, PER_FILE))
        writer.add(segs[-1])
        if rng.random() < 0.03 and len(segs) > 3:
            a = rng.randrange(0, len(segs) - 2)
            # up to the newest entry half the time: entries the writer holds in no chunk yet,
            # which its next chunk starts with (inside the merged entry)
            b = len(segs) if rng.random() < 0.5 else rng.randrange(a + 2, len(segs) + 1)
            merged = synthetic_segment(a, PER_FILE)
            merged.end_pos, merged.merged = segs[b - 1].end_pos, b - a
            merged.last_commit_time, merged.gtid_last = segs[b - 1].last_commit_time, segs[b - 1].gtid_last
            merged.gtid_state, merged.level = segs[b - 1].gtid_state, 1
            if store.stat(merged.key) is not None:
                continue
            cat.commit_segment(merged)
            cat.forget_chunks(SOURCE, ["binlog.000001"])
            if rng.random() < 0.5:
                store.delete([s.key for s in segs[a:b] if s.key != merged.key])
    for i in range(len(segs), len(segs) + rng.randint(17, 40)):  # a chunk after the last merge
        segs.append(add_segment(cat, i, PER_FILE))
        writer.add(segs[-1])
    cat.write_head(segs[-1], [])
    ends = [s.end_pos for s in segs]
    for cuts in ([], [("binlog.000001", rng.choice(ends))],
                 [("binlog.000001", rng.choice(ends) - 50), ("binlog.000001", rng.choice(ends))]):
        with_summaries = _stretches(cat, cuts)
        store.delete([layout.chunk_summary(SOURCE, "binlog.000001")])
        assert with_summaries == _stretches(cat, cuts), (seed, cuts)
        writer._summarize()  # written again, as after the next chunk
    # the file's whole roll-up made from its chunks, the entries the writer holds and the others
    # read: what roll_up_file makes from every entry listed (the object and the summary entry)
    _same_roll_up(cat, writer)


def _same_roll_up(cat: Catalog, writer: OpenFileRollups) -> None:
    key = layout.segment_rollup(SOURCE, "binlog.000001")
    assert roll_up_finished(cat, SOURCE, "binlog.000001", writer.tail("binlog.000001")) == key
    streamed = [s.to_dict() for s in cat.rollup_segments(key)]
    summary = cat._summary_new[SOURCE].pop("binlog.000001")["stretches"]
    cat.roll_up_file(SOURCE, "binlog.000001", finished=True)
    assert streamed == [s.to_dict() for s in cat.rollup_segments(key)] == _plain(cat)
    assert summary == cat._summary_new[SOURCE]["binlog.000001"]["stretches"]


def test_a_finished_file_is_rolled_up_from_its_chunks(tmp_path):
    store, cat = _open_file(tmp_path, 0)
    writer = OpenFileRollups(cat, SOURCE)
    for i in range(1_000):  # 3 chunks of 256, 14 of 16, 8 entries held
        writer.add(add_segment(cat, i, PER_FILE))
    base = synthetic_segment(500, PER_FILE)  # a base taken inside the file: the summary cuts there
    cat.commit_backup(BackupManifest(id="20231114T230000Z-snapshot-0002", kind="snapshot",
                                     source=SourceIdentity(SOURCE, version="10.11", server_id=1),
                                     point=BinlogPoint(base.binlog_file, base.start_pos, "", 1.0),
                                     started_at=1.0, finished_at=2.0))
    store.reset()
    assert roll_up_finished(cat, SOURCE, "binlog.000001", writer.tail("binlog.000001"))
    # no index entry read one by one: the chunks, the backups, and the head
    assert store.counts["open"] == 3 + 14 + 2 + 1, store.counts
    _same_roll_up(cat, writer)
    # entries listed that no chunk holds (one inside a chunk's interval), a chunk's entry gone
    wide = synthetic_segment(100, PER_FILE)
    wide.end_pos, wide.merged = synthetic_segment(101, PER_FILE).end_pos, 2
    cat.commit_segment(wide)
    store.delete([synthetic_segment(101, PER_FILE).key])
    _same_roll_up(cat, writer)
    store.put(layout.rollup_chunk(SOURCE, "binlog.000001", 4, 4 + 25600), b"damaged")
    _same_roll_up(cat, writer)  # a damaged chunk: made again from the entries read
    store.delete([layout.rollup_chunk(SOURCE, "binlog.000001", 4 + 25600, 4 + 51200)])
    _same_roll_up(cat, OpenFileRollups(cat, SOURCE))  # a chunk gone, nothing held


@pytest.mark.parametrize("seed", range(8))
def test_stretches_folded_a_batch_at_a_time_are_summarize(seed):
    """Entries of several files in key order, with wide (compacted) entries covering or reaching
    over others and empty anchors, cut at random points: folded in batches of 2 they give
    what summarize() gives of them all."""
    from backupkit.repo.stretches import summarize

    rng = random.Random(seed)
    segs = []
    for f in range(3):
        pos = 4
        for i in range(rng.randint(5, 60)):
            seg = synthetic_segment(i, PER_FILE)
            seg.binlog_file = f"binlog.{f + 1:06d}"
            width = rng.choice([0, 100, 100, 100, 250, 600]) if i else 100
            seg.start_pos, seg.end_pos = pos, pos + width
            segs.append(seg)
            pos += rng.choice([0, 100, 100, width]) if width else 0
    segs.sort(key=lambda s: (s.binlog_file, s.start_pos, s.end_pos))  # as keys list them
    cuts = [(s.binlog_file, s.end_pos) for s in rng.sample(segs, 3)]
    folded = Stretches(cuts)
    folded.BATCH = 2
    for s in segs:
        folded.add(s)
    assert [st.to_dict() for st in folded.done()] == [st.to_dict() for st in summarize(segs, cuts)]
