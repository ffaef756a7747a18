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
from dataclasses import dataclass, field

import zstandard

from backupkit.errors import IntegrityError, StorageError
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, Chunk, SegmentInfo, chain, chunks_of, encode_manifest
from backupkit.repo.stretches import summarize
from backupkit.storage.base import ObjectInfo

log = logging.getLogger(__name__)

#: Entries in a level-0 chunk (16 seconds at one segment a second).
CHUNK = 16
#: Chunks of one level merged into one of the next: 16, 256, 4,096 and 65,536 entries (18 hours).
FANOUT = 16
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


@dataclass
class OpenFileRollups:
    """The chunks of the file a writer (the shipper, the synthetic repository of the scale test)
    appends to: call add() after each commit; forget() once the file's whole roll-up is named by
    the head. Never raises: a chunk not written costs readers GETs, never a wrong catalog."""

    catalog: Catalog
    source_id: str
    binlog_file: str = ""
    pending: list[SegmentInfo] = field(default_factory=list)  # committed, in no chunk yet
    #: the chain of chunks of binlog_file: (chunk, level, its entries)
    levels: list[tuple[Chunk, int, list[SegmentInfo]]] = field(default_factory=list)
    written: int = 0  # chunks written (for tests and the head's cadence)
    #: the chunk summary's entry of each chunk written or read back (chunk key -> entry)
    summaries: dict[str, dict] = field(default_factory=dict)

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

    def _summarize(self) -> None:
        """Replace the file's chunk summary (layout.chunk_summary): the stretches of each chunk of
        the chain, with the ETag and size of the chunk they were made from, so that the commands
        that only summarize (list, binlog status, report) read one object, not the chunks. A
        cache: a reader uses an entry only while the listed chunk has that ETag and size; a
        failure costs readers the chunks' GETs."""
        chain_keys = {c.key for c, _, _ in self.levels}
        self.summaries = {k: v for k, v in self.summaries.items() if k in chain_keys}
        body = {"type": "chunk_summary", "source_id": self.source_id, "binlog_file": self.binlog_file,
                "updated_at": time.time(), "chunks": self.summaries}
        try:
            self.catalog.store.put(layout.chunk_summary(self.source_id, self.binlog_file),
                                   zstandard.ZstdCompressor(level=3).compress(encode_manifest(body)))
        except StorageError as exc:
            log.warning("chunk summary of %s not written: %s", self.binlog_file, exc.message)

    def _remember(self, c: Chunk, info: ObjectInfo | None, segs: list[SegmentInfo]) -> None:
        if info is not None and info.etag:
            self.summaries[c.key] = {"etag": info.etag, "size": info.size,
                                     "stretches": [st.to_dict() for st in summarize(segs)]}

    def known(self) -> dict[str, SegmentInfo]:
        """Every entry of the open file this writer holds (key -> entry)."""
        out = {s.key: s for _, _, entries in self.levels for s in entries}
        out.update((s.key, s) for s in self.pending)
        return out

    def _flush(self) -> None:
        segs, self.pending = self.pending, []
        self.levels.append((self._write(segs), _level(len(segs)), segs))
        while len(self.levels) >= FANOUT:
            group = self.levels[-FANOUT:]
            level = group[0][1]
            if level < 0 or any(lv != level for _, lv, _ in group):
                break
            # prune or compaction deletes the chunks of a file before editing its entries: a
            # chunk gone means entries may be gone too, so no merge of what this writer holds
            if any(self.catalog.store.stat(c.key) is None for c, _, _ in group):
                self.levels = []  # a new chain from the next chunk on
                break
            entries = [s for _, _, e in group for s in e]
            merged = self._write(entries)
            del self.levels[-FANOUT:]
            self.levels.append((merged, level + 1, entries))
            self.catalog.store.delete([c.key for c, _, _ in group])  # the wider one landed first

    def _write(self, segs: list[SegmentInfo]) -> Chunk:
        start, end = segs[0].start_pos, max(s.end_pos for s in segs)
        key = layout.rollup_chunk(self.source_id, self.binlog_file, start, end)
        info = self.catalog.write_rollup(key, self.source_id, self.binlog_file, segs)
        self.written += 1
        c = Chunk(self.binlog_file, start, end, key)
        self._remember(c, info, segs)
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
            for c in ch:
                entries = self.catalog.read_chunk(c)
                self.levels.append((c, _level(len(entries)), entries))
                self._remember(c, listed[c.key], entries)
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
