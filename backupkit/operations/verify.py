"""Verify a repository: re-read every object against its recorded checksum, check the binlog
coverage for holes no gap record explains, and optionally restore a backup into a throw-away
server (a restore test, whose measured duration becomes the RTO of the loss report).

Incremental by default: a run records what it checked (object key and checksum) in
layout.verified_record(), and the next one re-reads only objects not recorded there, reading the
index entries through the roll-ups. Once per full cycle (``full_every``), or with everything, a
run re-reads every object and every index entry itself.

Every problem names the object (or the stretch of binlog) it concerns; the CLI exits 5 if any.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from backupkit.errors import BackupkitError, IntegrityError, ObjectNotFound, StorageError
from backupkit.mysql.sandbox import Sandbox
from backupkit.repo import layout
from backupkit.repo.catalog import (
    BackupManifest,
    Catalog,
    Chunk,
    GapInfo,
    SegmentInfo,
    binlog_order,
    decode_manifest,
    encode_manifest,
    manifest_at,
)
from backupkit.repo.chain import broken_chains
from backupkit.repo.codec import StoredObject, sha256_bytes, verify_object
from backupkit.repo.coverage import Run, continues, gap_between, in_use
from backupkit.restore.cold import restore_cold
from backupkit.restore.load import RestoreOptions, restore_snapshot
from backupkit.restore.physical import restore_physical, server_checksums
from backupkit.storage.base import ObjectStore
from backupkit.util.progress import NullProgress, Progress
from backupkit.util.units import utc_iso

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """One thing wrong with the repository."""

    kind: str  # checksum | missing | manifest | gap | restore
    key: str  # the object (or the first missing key) it concerns
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "key": self.key, "message": self.message}


@dataclass
class VerifyReport:
    """What verify read and what it found."""

    storage: str
    backups: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    restore_tests: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    full: bool = True  # every object re-read (else only those no earlier run checked)
    skipped: int = 0  # objects an earlier run checked, not read again
    last_full_at: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"storage": self.storage, "verified": self.ok, "backups": self.backups,
                "sources": self.sources, "objects": self.objects, "bytes": self.bytes,
                "problems": [p.to_dict() for p in self.problems], "notes": self.notes,
                "restore_tests": self.restore_tests, "seconds": round(self.seconds, 3),
                "full": self.full, "skipped": self.skipped,
                "last_full_at": utc_iso(self.last_full_at) if self.last_full_at else None}


@dataclass
class Verified:
    """What earlier verify runs checked, as the top record (layout.verified_record()) holds it:
    object key -> sha256 of its stored bytes for the objects outside the binlog (backups), the
    segments of each finished binlog file as one digest of their data keys and checksums
    (``groups``, "<source>\\n<file>" -> digest: grows with files, not segments), which files have
    a record of their own (``files``: layout.verified_file_record, the open file's segments one by
    one, read only when that file is checked) and when a run last read everything.

    A format-1 record (one object, before per-file records) also held the open files' segments in
    ``objects``: honoured as it is, and rewritten per file by the next run."""

    objects: dict[str, str] = field(default_factory=dict)
    full_at: float = 0.0
    groups: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def has(self, obj: StoredObject, group: tuple[str, str] | None,
            own: dict[str, str] | None = None) -> bool:
        """True when obj, as it is now, was checked: itself (in this record, or own: its file's
        record), or as one of its unchanged group."""
        if self.objects.get(obj.key) == obj.sha256 or (own and own.get(obj.key) == obj.sha256):
            return True
        return group is not None and self.groups.get(group[0]) == group[1]


#: the format of the verify records (1: one object holding every open file's segments too)
RECORD_FORMAT = 2


def _group(source_id: str, binlog_file: str) -> str:
    return f"{source_id}\n{binlog_file}"


def _digest(segs: list[SegmentInfo]) -> str:
    """One digest of a file's segments (their data keys and checksums, in key order): it matches
    only while the file's segments are the very same."""
    objs = sorted((s.object for s in segs), key=lambda o: o.key)
    return sha256_bytes("".join(f"{o.key} {o.sha256}\n" for o in objs).encode())


def _read_body(catalog: Catalog, key: str) -> dict[str, Any]:
    return decode_manifest(key, zstandard.ZstdDecompressor().decompress(catalog.store.get_bytes(key)))


_UNREADABLE = (StorageError, IntegrityError, zstandard.ZstdError, KeyError, TypeError, ValueError,
               AttributeError)


def _read_top(catalog: Catalog) -> Verified:
    """The top record, or an empty one (everything is new) when missing or unreadable."""
    try:
        body = _read_body(catalog, layout.verified_record())
        return Verified({str(k): str(v) for k, v in body["objects"].items()}, float(body["full_at"]),
                        {str(k): str(v) for k, v in body.get("groups", {}).items()},
                        [str(g) for g in body.get("files", [])])
    except _UNREADABLE:
        return Verified()


def _read_file(catalog: Catalog, group: str) -> dict[str, str]:
    """A file's own record (object key -> sha256), empty when missing or unreadable."""
    source_id, _, binlog_file = group.partition("\n")
    key = layout.verified_file_record(source_id, binlog_file)
    try:
        body = _read_body(catalog, key)
        if body.get("source_id") != source_id or body.get("binlog_file") != binlog_file:
            return {}
        return {str(k): str(v) for k, v in body["objects"].items()}
    except _UNREADABLE:
        return {}


def read_verified(catalog: Catalog) -> Verified:
    """Everything the records hold, the files' own records merged into objects (to inspect them;
    a verify run reads only the records of the files it checks)."""
    top = _read_top(catalog)
    for g in top.files:
        top.objects.update(_read_file(catalog, g))
    return top


def _write_top(catalog: Catalog, verified: Verified) -> None:
    body = {"type": "verified", "format": RECORD_FORMAT, "objects": verified.objects,
            "groups": verified.groups, "files": verified.files, "full_at": verified.full_at,
            "updated_at": time.time()}
    catalog.store.put(layout.verified_record(),
                      zstandard.ZstdCompressor(level=3).compress(encode_manifest(body)))


class _Recorder:
    """Builds the records of a run one binlog file at a time. A file is finished once the next
    file of its source comes (all files of a source but its newest): one digest in the top record
    when none of its objects failed; otherwise (the newest file, a finished one with damage) the
    objects that passed go into the file's own record, written as soon as that is known, so the
    run holds one file's entries (and the file before it, as key -> checksum) at a time."""

    def __init__(self, catalog: Catalog, old: Verified) -> None:
        self.catalog = catalog
        self.old = old
        self.notes: list[str] = []
        self.groups: dict[str, str] = {}
        self.files: list[str] = []
        self.pending: tuple[str, str, dict[str, str], bool, dict[str, str]] | None = None
        self.failed = False

    def prior(self, group: str) -> dict[str, str]:
        """What the file's own record holds (one GET, only for a file that has one)."""
        return _read_file(self.catalog, group) if group in self.old.files else {}

    def done(self, group: str, digest: str, ok: dict[str, str], broken: bool,
             prior: dict[str, str]) -> None:
        """A file was checked (ok: its objects that passed; broken: some failed)."""
        self._flush(finished=True)
        self.pending = (group, digest, ok, broken, prior)

    def end_source(self) -> None:
        self._flush(finished=False)

    def _flush(self, finished: bool) -> None:
        if self.pending is None:
            return
        group, digest, ok, broken, prior = self.pending
        self.pending = None
        if finished and not broken:
            self.groups[group] = digest
            return
        if not ok:
            return
        if ok != prior or group not in self.old.files:
            source_id, _, binlog_file = group.partition("\n")
            body = {"type": "verified_file", "format": RECORD_FORMAT, "source_id": source_id,
                    "binlog_file": binlog_file, "objects": ok, "updated_at": time.time()}
            try:
                self.catalog.store.put(layout.verified_file_record(source_id, binlog_file),
                                       zstandard.ZstdCompressor(level=3).compress(encode_manifest(body)))
            except StorageError as exc:
                self._note(exc)
                return
        self.files.append(group)

    def finish(self, objects: dict[str, str], full_at: float) -> None:
        """The top record replaced, then the files' records no longer named deleted."""
        try:
            _write_top(self.catalog, Verified(objects, full_at, self.groups, self.files))
        except StorageError as exc:
            self._note(exc)
            return
        stale = [layout.verified_file_record(*g.partition("\n")[::2])
                 for g in self.old.files if g not in self.files]
        try:
            if stale:
                self.catalog.store.delete(stale)
        except StorageError as exc:  # left behind: named by no record, never read
            log.warning("verify records not deleted: %s", exc.message)

    def _note(self, exc: StorageError) -> None:
        if not self.failed:
            self.failed = True
            self.notes.append(f"the record of what was verified was not written: {exc.message} "
                                     "(the next run reads everything again)")


class _Checker:
    """Re-reads objects in parallel and collects problems (thread-safe)."""

    def __init__(self, store: ObjectStore, parallel: int, on_bytes: Callable[[int], None]) -> None:
        self.store = store
        self.parallel = max(1, parallel)
        self.on_bytes = on_bytes
        self.lock = threading.Lock()
        self.objects = 0
        self.bytes = 0

    def check(self, owner: str, obj: StoredObject) -> Problem | None:
        try:
            verify_object(self.store, obj)
        except ObjectNotFound:
            problem = Problem("missing", obj.key, f"object {obj.key!r} of {owner} is missing")
        except IntegrityError as exc:
            problem = Problem("checksum", obj.key, f"{owner}: {exc.message}")
        else:
            problem = None
        with self.lock:
            self.objects += 1
            self.bytes += obj.size
        self.on_bytes(obj.size)
        return problem

    def check_all(self, items: list[tuple[str, StoredObject]]) -> list[Problem]:
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(items))) as pool:
            results = list(pool.map(lambda it: self.check(*it), items))
        return [p for p in results if p is not None]


def _read_all(catalog: Catalog, keys: list[str], report: VerifyReport, parallel: int,
              keep_order: bool = False) -> list[Any]:
    """Read manifests in parallel; a damaged one is a problem naming it, a vanished one a note
    (with keep_order, None in their place)."""
    def one(key: str) -> dict[str, Any] | None:
        try:
            return catalog.read_manifest(key)
        except IntegrityError as exc:
            report.problems.append(Problem("manifest", key, exc.message))
        except ObjectNotFound:  # listed a moment ago: pruned meanwhile
            report.notes.append(f"{key} disappeared while verify ran (pruned?)")
        return None

    if not keys:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(keys)))) as pool:
        found = list(pool.map(one, keys))
    return found if keep_order else [d for d in found if d is not None]


def _read_backups(catalog: Catalog, ids: list[str] | None, report: VerifyReport,
                  parallel: int) -> list[BackupManifest]:
    if ids is not None:
        return [catalog.backup(bid) for bid in ids]  # an unknown id is a usage error
    keys = [layout.backup_manifest(b) for b in catalog.backup_ids()]
    out = []
    for key, d in zip(keys, _read_all(catalog, keys, report, parallel, keep_order=True), strict=True):
        if d is None:
            continue
        try:
            out.append(manifest_at(key, d))
        except IntegrityError as exc:
            report.problems.append(Problem("manifest", key, exc.message))
    return out


def _listed_files(catalog: Catalog, source_id: str, report: VerifyReport, parallel: int,
                  after: str | None = None) -> Iterator[tuple[str, list[SegmentInfo]]]:
    """Every index entry of a source read itself, one binlog file at a time in binlog order (the
    files are the index's folders: one LIST on S3; then one listing per file), the files up to
    after left out."""
    names = sorted(layout.dec(n) for n in catalog.store.folders(layout.index_prefix(source_id)))
    for f in names:
        if after is not None and binlog_order(f, 0) <= binlog_order(after, 0):
            continue
        keys = [i.key for i in catalog.store.list(layout.segment_file_prefix(source_id, f))
                if layout.is_segment_index(i.key)]
        segs = [SegmentInfo.from_dict(d) for d in _read_all(catalog, keys, report, parallel)]
        if segs:
            yield f, sorted(segs, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos))


def _source_files(catalog: Catalog, source_id: str, report: VerifyReport, parallel: int,
                  full: bool) -> Iterator[tuple[str, list[SegmentInfo]]]:
    """A source's segments one binlog file at a time: a full run reads every index entry itself;
    an incremental one reads them through the roll-ups (Catalog.segments_by_file), and every
    entry itself from where that fails, so that a damaged entry is still a problem naming it."""
    if full:
        yield from _listed_files(catalog, source_id, report, parallel)
        return
    last: str | None = None
    try:
        for f, segs in catalog.segments_by_file(source_id):
            yield f, segs
            last = f
    except (IntegrityError, KeyError, TypeError, ValueError):
        yield from _listed_files(catalog, source_id, report, parallel, after=last)


class _Coverage:
    """Holes between runs of segments (repo/coverage.py build_runs), fed one binlog file at a
    time in binlog order: it keeps the last segment of the current run and its newest commit,
    never the run. Recorded gaps are notes, the other holes problems."""

    def __init__(self, source_id: str, gaps: list[GapInfo]) -> None:
        self.source_id = source_id
        self.gaps = gaps
        self.last: SegmentInfo | None = None
        self.newest = 0.0  # newest commit time of the current run
        self.problems: list[Problem] = []
        self.notes: list[str] = []

    def add(self, segs: list[SegmentInfo]) -> None:
        for s in in_use(segs):  # a segment inside a wider one (compacted) is left out
            last = self.last
            if last is None or not continues(last, s) or gap_between(self.gaps, last, s) is not None:
                if last is not None:
                    self._hole(last, (s.binlog_file, s.start_pos))
                self.newest = 0.0
            self.last = s
            self.newest = max(self.newest, Run([s]).commit_time(0))

    def _hole(self, last: SegmentInfo, start: tuple[str, int]) -> None:
        end = last.next_point()
        source_id = self.source_id
        known = [g for g in self.gaps if (g.resume_file, g.resume_pos) == start]
        if known:
            g = known[0]
            self.notes.append(f"binlog of {source_id}: recorded gap from {end[0]}:{end[1]} to "
                              f"{start[0]}:{start[1]} ({g.reason}, detected {utc_iso(g.detected_at)})")
            return
        if end == start:  # contiguous by position but split by a gap record elsewhere
            return
        if end[0] == start[0] and start[1] < end[1]:
            return  # two segments overlapping: overlap_problems names them
        if end[0] == start[0]:
            key = layout.segment_index(source_id, end[0], end[1], start[1])
            what = f"missing segment {key}"
        else:
            key = layout.segment_index(source_id, end[0], end[1], 0).rsplit("-", 1)[0] + "-..."
            what = f"missing segment(s) from {end[0]}:{end[1]} to {start[0]}:{start[1]}"
        self.problems.append(Problem(
            "gap", key,
            f"binlog of {source_id} has a hole no gap record explains: {what} (after "
            f"{last.key}, commits up to {utc_iso(self.newest or None)})"))


def coverage_problems(source_id: str, segs: list[SegmentInfo], gaps: list[GapInfo]
                      ) -> tuple[list[Problem], list[str]]:
    """Holes between runs of segments: recorded gaps are notes, the others are problems."""
    cover = _Coverage(source_id, gaps)
    cover.add(segs)
    return cover.problems, cover.notes


def overlap_problems(segs: list[SegmentInfo]) -> list[Problem]:
    """Segments of one binlog file whose ranges overlap without one covering the other: damage
    (compaction merges whole runs of segments, so a compacted segment covers the pieces it
    replaced, which stay listed for its grace period, and a higher level's covers the lower
    ones'). Readers take the first and find a hole after it. Each such segment is named with
    the one it overlaps."""
    out: list[Problem] = []
    stack: list[SegmentInfo] = []  # nested ranges holding the current start
    for s in sorted((s for s in segs if s.end_pos > s.start_pos),
                    key=lambda s: (s.binlog_file, s.start_pos, -s.end_pos)):
        while stack and (stack[-1].binlog_file != s.binlog_file or stack[-1].end_pos <= s.start_pos):
            stack.pop()
        if stack and s.end_pos > stack[-1].end_pos:
            w = stack[-1]
            out.append(Problem("overlap", s.key, (
                f"{_what(w)} {w.key} [{w.start_pos}, {w.end_pos}) and {_what(s)} {s.key} "
                f"[{s.start_pos}, {s.end_pos}) of {s.binlog_file} overlap, neither covering the "
                f"other: a restore stops at {w.end_pos} (remove the entry of the one whose events "
                "the other lacks)")))
            continue
        stack.append(s)
    return out


def _what(s: SegmentInfo) -> str:
    return f"compacted segment (of {s.merged})" if s.merged else "segment"


def rollup_problems(catalog: Catalog, source_id: str, repair: bool = False
                    ) -> tuple[list[Problem], list[str]]:
    """Roll-ups of a source that cannot be read or hold an entry that is not a segment entry.

    Readers skip such a roll-up (its segments are read one by one), so nothing is lost, but it
    is damage all the same; with repair it is rebuilt from the index entries (a note then)."""
    problems: list[Problem] = []
    notes: list[str] = []
    for info in catalog.store.list(layout.rollup_prefix(source_id)):
        binlog_file = layout.rollup_file_of(info.key)
        chunk = layout.rollup_chunk_of(info.key)
        if chunk is not None:  # a chunk of an open file's roll-up (repo/rollups.py)
            problem, note = _chunk_problem(catalog, Chunk(*chunk, info.key), repair)
            problems += [problem] if problem else []
            notes += [note] if note else []
            continue
        if layout.chunk_summary_of(info.key) is not None:  # its chunks' summary (repo/rollups.py)
            problem, note = _chunk_summary_problem(catalog, info.key, repair)
            problems += [problem] if problem else []
            notes += [note] if note else []
            continue
        if binlog_file is None:
            continue
        try:  # every entry made a segment as it is decoded, none kept
            catalog.rollup_segments(info.key, lambda s: False)
        except ObjectNotFound:
            continue  # pruned meanwhile
        except (IntegrityError, KeyError, TypeError, ValueError, AttributeError) as exc:
            why = exc.message if isinstance(exc, IntegrityError) else f"{type(exc).__name__}: {exc}"
            if repair:
                catalog.store.delete([info.key])
                rebuilt = catalog.roll_up_file(source_id, binlog_file)
                notes.append(f"roll-up {info.key} was damaged ({why}); "
                             + ("rebuilt from its index entries" if rebuilt else "removed"))
                continue
            problems.append(Problem("rollup", info.key, f"roll-up {info.key!r} of {binlog_file} is "
                                    f"damaged: {why} (run 'backupkit verify --repair' to rebuild it)"))
    return problems, notes


def _chunk_problem(catalog: Catalog, chunk: Chunk, repair: bool) -> tuple[Problem | None, str | None]:
    """A chunk that cannot be read: a problem, or with repair deleted (readers list its entries)."""
    return _removable(catalog, chunk.key, lambda: catalog.read_chunk(chunk),
                      f"roll-up chunk {chunk.key!r} of {chunk.binlog_file}", repair)


def _chunk_summary_problem(catalog: Catalog, key: str, repair: bool
                           ) -> tuple[Problem | None, str | None]:
    """A chunk summary that cannot be read: a problem, or with repair deleted (readers ignore it
    and read the chunks; the shipper writes it again after its next chunk)."""
    return _removable(catalog, key, lambda: catalog.read_rollup(key), f"chunk summary {key!r}", repair)


def _removable(catalog: Catalog, key: str, read: Callable[[], object], what: str, repair: bool
               ) -> tuple[Problem | None, str | None]:
    """read() of an object readers can do without: a problem when it is damaged, or with repair
    the object deleted (a note). Gone meanwhile (merged, pruned, its file finished): nothing."""
    try:
        read()
        return None, None
    except ObjectNotFound:
        return None, None
    except IntegrityError as exc:
        if repair:
            catalog.store.delete([key])
            return None, f"{what} was damaged ({exc.message}); removed"
        return Problem("rollup", key, f"{what} is damaged: {exc.message} (run 'backupkit verify "
                       "--repair' to remove it)"), None


def verify_repository(store: ObjectStore, backup_ids: list[str] | None = None, *,
                      binlog: bool = True, parallel: int = 8,
                      progress: Progress | None = None, repair: bool = False,
                      everything: bool = True, full_every: float | None = None) -> VerifyReport:
    """Check the given backups (all when None) and, with binlog, every shipped segment and
    roll-up (repair: damaged roll-ups are rebuilt).

    The segments are read, checked and recorded one binlog file at a time (memory: one file's
    segments, whatever the source's size). Without everything (a whole-repository run only),
    objects an earlier run checked with the same checksum are not read again, unless the last full
    run is full_every seconds old or more; the records of what was checked are replaced as the
    run goes (each file's) and at the end (the top record)."""
    started = time.monotonic()
    bar = progress or NullProgress()
    task = bar.start("verifying")
    catalog = Catalog(store)
    report = VerifyReport(storage=store.describe())
    whole = backup_ids is None and binlog
    verified = _read_top(catalog) if whole else Verified()
    report.last_full_at = verified.full_at
    report.full = everything or not whole or not verified.full_at or (
        full_every is not None and time.time() - verified.full_at >= full_every)
    backups = _read_backups(catalog, backup_ids, report, parallel)
    items: list[tuple[str, StoredObject]] = []
    for b in backups:
        items += [(f"backup {b.id}", o) for o in b.objects]
        report.backups.append({"id": b.id, "kind": b.kind, "objects": len(b.objects),
                               "stored_bytes": b.stored_bytes, "point_time": utc_iso(b.point.time)})
    considered = items
    if not report.full:
        items = [(o, obj) for o, obj in items if not verified.has(obj, None)]
        report.skipped = len(considered) - len(items)
    total = sum(o.size for _, o in items)
    bar.update(task, total=total)
    checker = _Checker(store, parallel, lambda n: bar.advance(task, n))
    checked = checker.check_all(items)
    bad = {p.key for p in checked}
    kept = {o.key: o.sha256 for _, o in considered if o.key not in bad}
    del items, considered
    recorder = _Recorder(catalog, verified)
    entries = VerifyReport(storage="")  # the index entries' problems, reported before the objects'
    after: list[tuple[list[Problem], list[str]]] = []
    for sid in (catalog.sources() if binlog else []):
        gaps = catalog.gaps(sid)
        cover = _Coverage(sid, gaps)
        overlaps: list[Problem] = []
        count = size = 0
        for f, segs in _source_files(catalog, sid, entries, parallel, report.full):
            count += len(segs)
            size += sum(s.object.size for s in segs)
            cover.add(segs)
            overlaps += overlap_problems(segs)
            group = (_group(sid, f), _digest(segs))
            prior = recorder.prior(group[0]) if whole and not report.full else {}
            mine = [(f"segment {s.key}", s.object) for s in segs]
            del segs
            todo = mine if report.full else [(o, obj) for o, obj in mine
                                              if not verified.has(obj, group, prior)]
            report.skipped += len(mine) - len(todo)
            total += sum(o.size for _, o in todo)
            bar.update(task, total=total)
            found = checker.check_all(todo)
            checked += found
            failed = {p.key for p in found}
            if whole:
                recorder.done(group[0], group[1], {o.key: o.sha256 for _, o in mine
                                                   if o.key not in failed}, bool(failed), prior)
            del mine, todo
        recorder.end_source()
        probs_r, notes_r = rollup_problems(catalog, sid, repair)
        after.append((cover.problems + overlaps + probs_r, cover.notes + notes_r))
        report.sources.append({"source_id": sid, "segments": count, "stored_bytes": size,
                               "gaps_recorded": len(gaps), "holes": len(cover.problems)})
    report.problems += entries.problems + checked
    report.notes += entries.notes
    report.objects, report.bytes = checker.objects, checker.bytes
    if whole:
        recorder.finish(kept, time.time() if report.full else verified.full_at)
        report.notes += recorder.notes
    for probs, notes in after:
        report.problems += probs
        report.notes += notes
    report.problems += chain_problems(catalog, backups)
    bad = {p.key for p in report.problems}
    for b in report.backups:
        b["ok"] = not any(o.key in bad for o in next(x for x in backups if x.id == b["id"]).objects)
    report.seconds = time.monotonic() - started
    return report


def chain_problems(catalog: Catalog, backups: list[BackupManifest]) -> list[Problem]:
    """A physical incremental whose chain back to its full backup is broken, naming the link."""
    by_id = {b.id: b for b in backups}

    def get(bid: str) -> BackupManifest | None:
        if bid not in by_id:
            try:
                by_id[bid] = catalog.backup(bid)
            except (BackupkitError, ObjectNotFound):
                return None
        return by_id[bid]

    return [Problem("chain", layout.backup_manifest(bid), exc.message)
            for bid, exc in broken_chains(backups, get).items()]


# -- restore tests -------------------------------------------------------------------------------
def restore_test(store: ObjectStore, manifest: BackupManifest, parallel: int | None = None,
                 say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Restore a backup into a throw-away private server, check it, record the duration (RTO).

    Snapshot: loaded with row counts and CHECKSUM TABLE compared to the values recorded inside
    the snapshot. Cold: extracted (every file's sha256 checked) and the server started on it.
    Physical: the chain extracted and prepared, the server started on it, and CHECKSUM TABLE of
    every table read there (no checksums are recorded at backup time to compare with).
    The private server and its files are removed afterwards, whatever happens.
    """
    say = say or (lambda m: None)
    catalog = Catalog(store)
    base = Path(tempfile.mkdtemp(prefix="backupkit-verify-"))
    (base / "tmp").mkdir()
    sandbox = Sandbox(base=base, name="verify")
    started = time.time()
    checks: dict[str, Any] = {}
    try:
        if manifest.kind == "snapshot":
            say(f"restore test of {manifest.id}: starting a private server")
            sandbox.start()
            t0 = time.time()
            res = restore_snapshot(store, manifest, sandbox.spec,
                                   RestoreOptions(verify=True, parallel=parallel, record=False))
            checks = {"tables": res.tables, "rows": res.rows, "checksums_compared": res.verified_tables,
                      "load_seconds": round(time.time() - t0, 3)}
        elif manifest.kind == "cold":
            say(f"restore test of {manifest.id}: extracting into a private datadir")
            res = restore_cold(store, manifest, sandbox.datadir, start_command=sandbox.start_command(),
                               conn=sandbox.spec, pid_file=sandbox.pid_file,
                               error_log=sandbox.err_log)
            rows = sandbox.sql("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema "
                               "NOT IN ('mysql','information_schema','performance_schema','sys')")
            checks = {"files": res.files, "bytes": res.bytes, "server_started": res.started,
                      "tables": int(rows[0][0])}
        elif manifest.kind == "physical":
            say(f"restore test of {manifest.id}: extract + prepare into a private datadir")
            res = restore_physical(store, manifest, sandbox.datadir, catalog=catalog,
                                   start_command=sandbox.start_command(), conn=sandbox.spec,
                                   pid_file=sandbox.pid_file, error_log=sandbox.err_log, record=False)
            # No checksums were recorded (a hot copy has no moment for them): CHECKSUM TABLE of
            # every table reads every row of the prepared copy through the started server.
            sums = server_checksums(sandbox.spec)
            checks = {"chain": res.chain, "bytes": res.bytes, "server_started": res.started,
                      "extract_seconds": res.extract_seconds, "prepare_seconds": res.prepare_seconds,
                      "tables": len(sums), "checksums_read": len(sums), "checksums_compared": 0}
        else:
            raise BackupkitError(f"backup {manifest.id} has kind {manifest.kind!r}; "
                                 "no restore test for it")
    except BackupkitError as exc:
        raise IntegrityError(f"restore test of backup {manifest.id} failed: {exc.message}",
                             exc.hint) from exc
    finally:
        try:
            sandbox.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    finished = time.time()
    record = {"kind": manifest.kind, "backup_id": manifest.id, "target": "verify --restore-test",
              "drill": True, "verified": True, "started_at": started, "finished_at": finished,
              "started_at_utc": utc_iso(started), "finished_at_utc": utc_iso(finished),
              "duration": round(finished - started, 3),
              "raw_bytes": int(manifest.details.get("chain_raw_bytes", 0))
              or sum(o.raw_size for o in manifest.objects), "checks": checks}
    record_id = catalog.commit_restore_record(record)
    return {"backup_id": manifest.id, "kind": manifest.kind, "duration_s": record["duration"],
            "record_id": record_id, **checks}
