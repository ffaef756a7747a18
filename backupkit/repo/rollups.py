"""Roll-ups of a binlog file while it is still open: chunks in levels, so that reading a file open
for days costs a bounded number of GETs (docs/repository-format.md, "Chunks of the open file").

A chunk `_rollup/<file>/<a>-<b>.rollup.zst` holds every index entry of the file that starts in
[a, b), written once those entries are committed. Every CHUNK entries make a level-0 chunk; every
FANOUT chunks of one level in a row are merged into one chunk of the next level, and then
deleted. A reader follows the widest chunk from each position (catalog.chain), so it reads at
most FANOUT - 1 chunks per level and fewer than CHUNK entries one by one. Writers that edit the
entries of a file (prune, compaction) delete its chunks first (Catalog.forget_rollups).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zstandard

from backupkit.errors import IntegrityError, ObjectNotFound, StorageError
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, Chunk, SegmentInfo, chain, chunks_of, encode_manifest
from backupkit.repo.failover import read_checked
from backupkit.repo.streamed import NotCanonical, iter_list
from backupkit.repo.stretches import Stretch, summarize
from backupkit.storage.base import ObjectInfo

log = logging.getLogger(__name__)

#: Entries in a level-0 chunk (16 seconds at one segment a second).
CHUNK = 16
#: Chunks of one level merged into one of the next: 16, 256, 4,096 and 65,536 entries (18 hours).
FANOUT = 16
#: The widest level: chunks of 65,536 entries are not merged further, so that writing a chunk
#: (its text held compressed until its checksum is known, repo/streamed.py) costs the same
#: memory in a file open for a month as in one open for a day; a reader reads one more chunk per
#: 18 hours beyond the first 18.
TOP_LEVEL = 4
#: Entries of the open file a writer reads back at its start to continue the chunks (beyond that
#: it starts a new chain where it is, and readers list the stretch before it).
RESUME_READ_MAX = 4096


def _level(n: int) -> int:
    """The level of a chunk of n entries; -1 for a size no level has (never merged)."""
    level, size = 0, CHUNK
    while size < n:
        size *= FANOUT
        level += 1
    return level if size == n else -1


class Stretches:
    """summarize() of entries arriving in binlog order, holding a batch of them at a time: the
    batch is folded into the stretches so far only where nothing before it reaches past the next
    entry's start (no entry on one side covers or overlaps one on the other), where folding
    stretches gives what summarize() of every entry gives (tests/unit/repo/test_stretches.py)."""

    BATCH = 1024

    def __init__(self, cuts: Iterable[tuple[str, int]] = ()) -> None:
        self.cuts = list(cuts)
        self.out: list[Stretch] = []
        self.batch: list[SegmentInfo] = []
        self.reach: tuple[str, int] = ("", 0)  # the file and the furthest end of the entries held

    def add(self, seg: SegmentInfo) -> SegmentInfo:
        clean = seg.binlog_file != self.reach[0] or seg.start_pos >= self.reach[1]
        if len(self.batch) >= self.BATCH and clean:
            self.out = summarize([*self.out, *self.batch], self.cuts)
            self.batch = []
        self.reach = (seg.binlog_file, max(seg.end_pos, self.reach[1]) if seg.binlog_file == self.reach[0]
                      else seg.end_pos)
        self.batch.append(seg)
        return seg

    def done(self) -> list[Stretch]:
        self.out, self.batch = summarize([*self.out, *self.batch], self.cuts), []
        return self.out


def chunk_entries(catalog: Catalog, c: Chunk) -> Iterator[SegmentInfo]:
    """The entries of a chunk (those of its file and interval) one at a time, decoded as they come
    (repo/streamed.py): only the chunk's compressed bytes and one entry are held. Its checks come
    at the end: IntegrityError after the entries yielded when it is damaged, so a caller uses
    nothing of them until it is exhausted (encode_list, then one PUT)."""
    data = read_checked(catalog.store, c.key, lambda b: b)

    def one(d: dict[str, Any]) -> SegmentInfo | None:
        try:
            seg = SegmentInfo.from_dict(d)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"roll-up {c.key!r} holds a malformed entry ({type(exc).__name__})",
                                 "the stored copy is damaged") from None
        return seg if seg.binlog_file == c.binlog_file and c.start <= seg.start_pos < c.end else None

    try:
        yield from iter_list(c.key, data, "segments", one, layout.FORMAT_VERSION)
    except NotCanonical:
        raise IntegrityError(f"roll-up {c.key!r} is not in its canonical form", "it was not written "
                             "by this writer; its entries are read one by one") from None


@dataclass
class OpenFileRollups:
    """The chunks of the file a writer (the shipper, the synthetic repository of the scale test)
    appends to: call add() after each commit; forget() once the file's whole roll-up is named by
    the head. Never raises: a chunk not written costs readers GETs, never a wrong catalog.

    It holds the entries of no chunk written, only those not in a chunk yet (pending: one chunk's
    worth, CHUNK, unless an empty anchor or the file's end delays the cut): chunks are merged
    from the stored ones, read one at a time, so a file open for a day costs no more memory
    than one open for a minute."""

    catalog: Catalog
    source_id: str
    binlog_file: str = ""
    pending: list[SegmentInfo] = field(default_factory=list)  # committed, in no chunk yet
    #: the chain of chunks of binlog_file: (chunk, level)
    levels: list[tuple[Chunk, int]] = field(default_factory=list)
    written: int = 0  # chunks written (for tests and the head's cadence)
    #: the chunk summary's entry of each chunk written or read back (chunk key -> entry)
    summaries: dict[str, dict] = field(default_factory=dict)
    top: int = TOP_LEVEL  # the widest level written

    def add(self, seg: SegmentInfo) -> bool:
        """seg was just committed; True when a chunk was written."""
        if seg.binlog_file != self.binlog_file:
            self._resume(seg)
        self.pending.append(seg)
        # never end a chunk with an empty anchor [p, p): the entry after it starts at p too
        if len(self.pending) < CHUNK or seg.end_pos == seg.start_pos or seg.file_closed:
            return False
        try:
            self._flush()
        except (StorageError, IntegrityError) as exc:
            log.warning("chunk of %s not written: %s", self.binlog_file, exc.message)
            self.levels = []  # a new chain from the next chunk on; readers list the stretch
            return False
        self._summarize()
        return True

    def held(self) -> int:
        """The entries this writer holds (those in no chunk yet)."""
        return len(self.pending)

    def tail(self, binlog_file: str) -> list[SegmentInfo]:
        """The entries of binlog_file this writer holds (in no chunk yet): what a roll-up of the
        file made from its chunks (roll_up_finished) takes from here rather than read again."""
        return list(self.pending) if binlog_file == self.binlog_file else []

    def _summarize(self) -> None:
        """Replace the file's chunk summary (layout.chunk_summary): the stretches of each chunk of
        the chain, with the ETag and size of the chunk they were made from, so that the commands
        that only summarize (list, binlog status, report) read one object, not the chunks. A
        cache: a reader uses an entry only while the listed chunk has that ETag and size; a
        failure costs readers the chunks' GETs."""
        chain_keys = {c.key for c, _ in self.levels}
        self.summaries = {k: v for k, v in self.summaries.items() if k in chain_keys}
        body = {"type": "chunk_summary", "source_id": self.source_id, "binlog_file": self.binlog_file,
                "updated_at": time.time(), "chunks": self.summaries}
        try:
            self.catalog.store.put(layout.chunk_summary(self.source_id, self.binlog_file),
                                   zstandard.ZstdCompressor(level=3).compress(encode_manifest(body)))
        except StorageError as exc:
            log.warning("chunk summary of %s not written: %s", self.binlog_file, exc.message)

    def _remember(self, c: Chunk, info: ObjectInfo | None, stretches: list[Stretch]) -> None:
        if info is not None and info.etag:
            self.summaries[c.key] = {"etag": info.etag, "size": info.size,
                                     "stretches": [st.to_dict() for st in stretches]}

    def _flush(self) -> None:
        segs, self.pending = self.pending, []
        self.levels.append((self._write(segs, segs[0].start_pos, max(s.end_pos for s in segs)),
                            _level(len(segs))))
        while len(self.levels) >= FANOUT:
            group = self.levels[-FANOUT:]
            level = group[0][1]
            if level < 0 or level >= self.top or any(lv != level for _, lv in group):
                break
            # prune or compaction deletes the chunks of a file before editing its entries: a
            # chunk gone means entries may be gone too, so no merge of what was written
            if any(self.catalog.store.stat(c.key) is None for c, _ in group):
                self.levels = []  # a new chain from the next chunk on
                break
            # the chunks' entries read back one chunk at a time (each chunk starts at its first
            # entry and ends at its furthest end, as written)
            merged = self._write((s for c, _ in group for s in chunk_entries(self.catalog, c)),
                                 group[0][0].start, max(c.end for c, _ in group))
            del self.levels[-FANOUT:]
            self.levels.append((merged, level + 1))
            self.catalog.store.delete([c.key for c, _ in group])  # the wider one landed first

    def _write(self, segs: Iterable[SegmentInfo], start: int, end: int) -> Chunk:
        """Store entries (in binlog order, read once) as the chunk [start, end) of binlog_file."""
        sums = Stretches()
        key = layout.rollup_chunk(self.source_id, self.binlog_file, start, end)
        info = self.catalog.write_rollup(key, self.source_id, self.binlog_file, (sums.add(s) for s in segs))
        self.written += 1
        c = Chunk(self.binlog_file, start, end, key)
        self._remember(c, info, sums.done())
        return c

    def _resume(self, seg: SegmentInfo) -> None:
        """A new file, or the first commit of this run: continue the chain an earlier run left in
        seg's file (its chunks, then the entries after them), up to RESUME_READ_MAX entries."""
        self.binlog_file, self.pending, self.levels = seg.binlog_file, [], []
        self.summaries = {}
        if seg.start_pos <= 4:
            return  # the file starts here: nothing before it
        try:
            listed = {i.key: i for i in self.catalog.store.list(
                layout.rollup_chunk_prefix(self.source_id, seg.binlog_file))}
            chunks = chunks_of(listed).get(seg.binlog_file, [])
            first = min((c.start for c in chunks), default=None)
            ch = chain(chunks, first) if first is not None else []
            pos = ch[-1].end if ch else 0
            keys = [i.key for i in self.catalog.store.list_after(
                layout.segment_file_prefix(self.source_id, seg.binlog_file),
                layout.index_from(self.source_id, seg.binlog_file, pos))
                if layout.is_segment_index(i.key) and i.key != seg.key]
            if len(keys) > RESUME_READ_MAX:
                return
            for c in ch:  # read one at a time for their level and summary, not held
                sums, n = Stretches(), 0
                for s in chunk_entries(self.catalog, c):
                    sums.add(s)
                    n += 1
                self.levels.append((c, _level(n)))
                self._remember(c, listed[c.key], sums.done())
            self.pending = [SegmentInfo.from_dict(d) for d in self.catalog._read_many(keys)]
            self.pending.sort(key=lambda s: (s.start_pos, s.end_pos))
        except (StorageError, IntegrityError) as exc:
            log.warning("chunks of %s not resumed (a new chain starts): %s", seg.binlog_file,
                        exc.message)
            self.pending, self.levels = [], []

    def forget(self, binlog_file: str) -> None:
        """binlog_file is finished and its whole roll-up named by the head: its chunks go."""
        try:
            keys = [i.key for i in self.catalog.store.list(
                layout.rollup_chunk_prefix(self.source_id, binlog_file))]
            if keys:
                self.catalog.store.delete(keys)
        except StorageError as exc:
            log.warning("chunks of %s not removed: %s", binlog_file, exc.message)
        if binlog_file == self.binlog_file:
            self.binlog_file, self.pending, self.levels, self.summaries = "", [], [], {}


class _Unordered(Exception):
    """The store listed a file's index entries out of key order."""


#: Entries held at most while the entries before them wait for a batch of index entries read.
_QUEUE = 1024
#: Index entries read together (in parallel) when neither a chunk nor the writer holds them.
_READ_BATCH = 64


def roll_up_finished(catalog: Catalog, source_id: str, binlog_file: str,
                     tail: Iterable[SegmentInfo] = ()) -> str | None:
    """Catalog.roll_up_file(finished=True) of a finished binlog file, streamed: the same object
    and source summary entry, made from its index entries listed now, each taken from the file's
    chunk holding it (a chain of them followed from the entry where one starts, read one at a
    time), else from tail (the entries the writer holds in no chunk), else read itself (in
    batches). Whatever the file's size it holds one chunk's compressed bytes, a thousand entries
    and the roll-up's text compressed (repo/streamed.py), never an entry per segment. A chunk
    that cannot be read (damaged, or removed by prune or compaction meanwhile) gets the file
    rolled up again without chunks; a store listing out of key order gets roll_up_file. Returns
    the roll-up's key, or None when the file has no entry."""
    held = list(tail)
    try:
        try:
            return _roll_up_streamed(catalog, source_id, binlog_file, held, use_chunks=True)
        except (IntegrityError, ObjectNotFound) as exc:
            log.warning("roll-up of %s made without its chunks: %s", binlog_file, exc.message)
            return _roll_up_streamed(catalog, source_id, binlog_file, held, use_chunks=False)
    except _Unordered:
        return catalog.roll_up_file(source_id, binlog_file, {s.key: s for s in held}, finished=True)


def _roll_up_streamed(catalog: Catalog, source_id: str, binlog_file: str, tail: list[SegmentInfo],
                      use_chunks: bool) -> str | None:
    store = catalog.store
    widest: dict[int, Chunk] = {}  # the widest chunk starting at each position
    if use_chunks:
        for c in chunks_of(i.key for i in store.list(
                layout.rollup_chunk_prefix(source_id, binlog_file))).get(binlog_file, []):
            if c.end > c.start and (c.start not in widest or c.end > widest[c.start].end):
                widest[c.start] = c
    keys = (i.key for i in store.list(layout.segment_file_prefix(source_id, binlog_file))
            if layout.is_segment_index(i.key))
    first = next(keys, None)
    if first is None:
        return None
    sums = Stretches(catalog._base_points(binlog_file))
    held = {s.key: s for s in tail}

    def listed() -> Iterator[str]:
        last = ""
        for k in _prepend(first, keys):
            if k <= last:
                raise _Unordered(k)
            last = k
            yield k

    def entries() -> Iterator[SegmentInfo]:
        chunk: Chunk | None = None
        inside: Iterator[SegmentInfo] = iter(())
        ahead: SegmentInfo | None = None  # the chunk's next entry not yet matched
        queue: list[SegmentInfo | str] = []  # in key order: entries, and keys still to read
        missing = 0

        def flush() -> Iterator[SegmentInfo]:
            nonlocal queue, missing
            read = iter(SegmentInfo.from_dict(d) for d in catalog._read_many(
                [k for k in queue if isinstance(k, str)]))
            for item in queue:
                yield sums.add(next(read) if isinstance(item, str) else item)
            queue, missing = [], 0

        for k in listed():
            pos = layout.segment_of(k)
            assert pos is not None
            if chunk is None or not chunk.start <= pos[1] < chunk.end:
                for _ in inside:  # the rest of the chunk left: read to its end for its checks
                    pass
                chunk = widest.get(pos[1])
                inside, ahead = (chunk_entries(catalog, chunk) if chunk else iter(())), None
            while chunk is not None and (ahead is None or ahead.key < k):
                ahead = next(inside, None)
                if ahead is None:
                    break
            got = ahead if ahead is not None and ahead.key == k else held.get(k)
            if got is None:
                missing += 1
            queue.append(got if got is not None else k)
            if missing >= _READ_BATCH or len(queue) >= _QUEUE:
                yield from flush()
        for _ in inside:
            pass
        yield from flush()

    key = layout.segment_rollup(source_id, binlog_file)
    info = catalog.write_rollup(key, source_id, binlog_file, entries())
    catalog.finish_rollup(source_id, binlog_file, info, sums.done())
    return key


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest
