"""Manifests and the catalog that reads and commits them: backups, binlog segments, gaps."""

from __future__ import annotations

import functools
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import zstandard

from backupkit import __version__
from backupkit.errors import IntegrityError, KeyMismatch, ObjectNotFound, StorageError, UsageError
from backupkit.mysql.gtid import BinlogPoint
from backupkit.mysql.server import SourceIdentity  # manifest parts; re-exported
from backupkit.repo import layout
from backupkit.repo.codec import StoredObject, sha256_bytes
from backupkit.repo.failover import read_checked
from backupkit.repo.scope import Scope, scope_of
from backupkit.repo.streamed import NotCanonical, decode_list, encode_list
from backupkit.repo.stretches import Stretch, inside, summarize
from backupkit.storage.base import ObjectInfo, ObjectStore
from backupkit.util.units import utc_iso, utc_stamp

log = logging.getLogger(__name__)


def new_backup_id(kind: str, at: float | None = None) -> str:
    """A sortable, unique backup id: 20261126T101500Z-snapshot-1a2b."""
    stamp = utc_stamp(at or time.time())
    return f"{stamp}-{kind}-{uuid.uuid4().hex[:4]}"


# -- manifest envelope -----------------------------------------------------------
def encode_manifest(body: dict[str, Any]) -> bytes:
    """Canonical JSON with a format version and its own checksum."""
    body = dict(body)
    body.pop("checksum", None)
    body.setdefault("format", layout.FORMAT_VERSION)
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    body["checksum"] = "sha256:" + sha256_bytes(canon.encode())
    return (json.dumps(body, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def decode_manifest(key: str, data: bytes) -> dict[str, Any]:
    """Parse a manifest and verify its own checksum and format version."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"manifest {key!r} is not valid JSON", "the stored copy is damaged") from exc
    if not isinstance(body, dict):
        raise IntegrityError(f"manifest {key!r} is not a JSON object")
    got = body.pop("checksum", None)
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if got != "sha256:" + sha256_bytes(canon.encode()):
        raise IntegrityError(f"checksum mismatch in manifest {key!r}", "the stored copy is damaged")
    fmt = body.get("format")
    if not isinstance(fmt, int) or fmt > layout.FORMAT_VERSION:
        raise IntegrityError(f"manifest {key!r} has format {fmt!r}; this backupkit reads up to "
                             f"{layout.FORMAT_VERSION}", "upgrade backupkit")
    return body


def manifest_at(key: str, body: dict[str, Any]) -> BackupManifest:
    """The backup manifest read from key: a well-formed backup manifest whose id is the one its
    key names (a manifest copied under another id would list the same backup twice)."""
    try:
        manifest = BackupManifest.from_dict(body)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"manifest {key!r} is not a backup manifest ({type(exc).__name__}: {exc})",
                             "the stored copy is damaged") from None
    if manifest.id != layout.backup_id_of(key):
        raise IntegrityError(f"manifest {key!r} names backup {manifest.id!r}, not the one its key names",
                             "a manifest copied or moved under another id; remove the copy")
    return manifest


@functools.cache
def _field_names(cls) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _from_dict(cls, d: dict[str, Any]):
    names = _field_names(cls)  # once per class: a catalog reads millions of entries
    return cls(**{k: v for k, v in d.items() if k in names})


# -- records ---------------------------------------------------------------------
@dataclass
class BackupManifest:
    """The commit marker of a snapshot or cold backup; written after all its objects."""

    id: str
    kind: str  # snapshot | cold
    source: SourceIdentity
    point: BinlogPoint
    started_at: float
    finished_at: float
    objects: list[StoredObject] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    format: int = layout.FORMAT_VERSION
    tool_version: str = ""

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    @property
    def stored_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def scope(self) -> Scope:
        """What this base covers: the whole server, or some databases or tables (repo/scope.py)."""
        return scope_of(self.kind, self.details)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["type"] = "backup"
        d["started_at_utc"] = utc_iso(self.started_at)
        d["finished_at_utc"] = utc_iso(self.finished_at)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackupManifest:
        d = dict(d)
        d["source"] = _from_dict(SourceIdentity, d.get("source", {}))
        d["point"] = _from_dict(BinlogPoint, d.get("point", {}))
        d["objects"] = [StoredObject.from_dict(o) for o in d.get("objects", [])]
        return _from_dict(cls, d)


@dataclass(slots=True)  # a catalog holds one per segment: no per-object __dict__
class SegmentInfo:
    """Index entry of one shipped binlog segment: events [start_pos, end_pos) of binlog_file.

    binlog_file is the file's identity in the repository: the server's file name, prefixed by
    the server's epoch after a switchover (repo/servers.py)."""

    source_id: str
    binlog_file: str
    start_pos: int
    end_pos: int
    object: StoredObject
    first_event_time: float = 0.0
    last_event_time: float = 0.0
    first_commit_time: float = 0.0
    last_commit_time: float = 0.0
    gtid_first: str = ""
    gtid_last: str = ""
    gtid_state: str = ""  # GTID position after the last transaction of the segment
    gtid_start: str = ""  # GTID position at start_pos (links a new server's first segment)
    events: int = 0
    transactions: int = 0
    next_file: str = ""  # set when the segment ends with a rotation to this file
    file_closed: bool = False  # the segment holds the file's last event (ROTATE or STOP)
    range_id: str = ""  # a continuous range; a new one begins after a gap
    server_id: int = 0  # the server whose binlog this is (0: not recorded, older entries)
    created_at: float = 0.0
    #: a compacted segment (operations/compact.py): how many shipped segments it holds; 0 for one
    #: the shipper wrote. Readers prefer it over the small ones it covers (repo/coverage.py).
    merged: int = 0
    #: a compacted segment's level (1-based, [binlog] compact_levels; 0: one pass without levels,
    #: or an entry written before levels were recorded: compact.level_of infers it then)
    level: int = 0
    format: int = layout.FORMAT_VERSION

    @property
    def key(self) -> str:
        return layout.segment_index(self.source_id, self.binlog_file, self.start_pos, self.end_pos)

    def next_point(self) -> tuple[str, int]:
        """Where the following segment must start to be contiguous."""
        if self.next_file:
            return (self.next_file, 4)
        return (self.binlog_file, self.end_pos)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["type"] = "segment"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentInfo:
        d = dict(d)
        d["object"] = StoredObject.from_dict(d["object"])
        # the same few names on millions of entries: one string each, not one per entry
        for k in _SHARED:
            v = d.get(k)
            if type(v) is str:
                d[k] = sys.intern(v)
        return _from_dict(cls, d)


#: SegmentInfo fields that repeat across entries (interned on decode)
_SHARED = ("source_id", "binlog_file", "range_id", "next_file")


@dataclass
class GapInfo:
    """A stretch of binlog that was never shipped (for example purged before it could be)."""

    source_id: str
    after_file: str
    after_pos: int
    resume_file: str
    resume_pos: int
    detected_at: float
    reason: str
    last_time_before: float = 0.0
    format: int = layout.FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["type"] = "gap"
        return d


@dataclass
class BinlogHead:
    """A source's head object: its newest committed segment (when written) and the binlog files
    whose roll-up is written. A cache: a reader checks it against the listed index entries."""

    segment: SegmentInfo
    rollups: list[str]
    updated_at: float = 0.0


@dataclass(frozen=True)
class Chunk:
    """A stored chunk of an open file's roll-up: the entries of binlog_file starting in
    [start, end) (repo/rollups.py writes them)."""

    binlog_file: str
    start: int
    end: int
    key: str


def chunks_of(keys: Iterable[str]) -> dict[str, list[Chunk]]:
    """The chunks among listed roll-up keys, by binlog file."""
    out: dict[str, list[Chunk]] = {}
    for key in keys:
        pos = layout.rollup_chunk_of(key)
        if pos is not None:
            out.setdefault(pos[0], []).append(Chunk(pos[0], pos[1], pos[2], key))
    return out


def chain(chunks: Iterable[Chunk], start: int) -> list[Chunk]:
    """From start on, the widest chunk starting there, then the widest starting where it ends, and
    so on: the chunks a reader reads instead of the entries they hold."""
    by_start: dict[int, Chunk] = {}
    for c in chunks:
        if c.end > c.start and (c.start not in by_start or c.end > by_start[c.start].end):
            by_start[c.start] = c
    out: list[Chunk] = []
    pos = start
    while pos in by_start:
        out.append(by_start[pos])
        pos = by_start[pos].end
    return out


#: Roll-ups read at once (the work is decoding them, under one interpreter lock, so more
#: threads only hold more decoded JSON at the same time).
ROLLUP_READERS = 4


def binlog_order(file: str, pos: int) -> tuple[str, int]:
    """Sort key for binlog coordinates (files are zero-padded, so names order correctly)."""
    return (file, pos)


def _named_files(head: BinlogHead, source_id: str) -> list[str] | None:
    """The files a head names as rolled up, in binlog order; None when it names one after its
    newest segment (the caller lists everything then)."""
    rolled = sorted(set(head.rollups), key=lambda f: binlog_order(f, 0))
    if rolled and binlog_order(rolled[-1], 0) > binlog_order(head.segment.binlog_file, 0):
        log.warning("head of %s names roll-ups after its newest segment: listing", source_id)
        return None
    return rolled


def _holds_newest(head: BinlogHead, items: Iterable[Any], source_id: str) -> bool:
    """True when what was read holds the head's own segment. False when a writer broke the rule
    that the named files are all the finished files before the newest one: list everything."""
    newest = head.segment
    if any(s.binlog_file == newest.binlog_file and s.start_pos <= newest.start_pos
           and s.end_pos >= newest.end_pos for s in items):
        return True
    log.warning("head of %s names %s, which its roll-ups and listing lack: listing",
                source_id, newest.key)
    return False


def _entry_matches(entry: Any, listed: ObjectInfo | None) -> bool:
    """True when a summary entry was made from the roll-up listed (same ETag and size)."""
    return (isinstance(entry, dict) and listed is not None and bool(listed.etag)
            and entry.get("etag") == listed.etag and entry.get("size") == listed.size)


def _summary_of(entry: Any, listed: ObjectInfo | None, source_id: str, binlog_file: str
                ) -> list[Stretch] | None:
    """The stretches of a file from its summary entry, or None when the entry does not hold up:
    none, made from another roll-up than the listed one (ETag, size), or malformed."""
    if not _entry_matches(entry, listed):
        return None
    try:
        out = [Stretch.from_dict(d, SegmentInfo.from_dict) for d in entry["stretches"]]
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        log.warning("ignoring the summary entry of %s (malformed): its roll-up is read", binlog_file)
        return None
    if any(st.source_id != source_id or st.binlog_file != binlog_file
           or st.tail.binlog_file != binlog_file for st in out):
        log.warning("ignoring the summary entry of %s (another file's): its roll-up is read",
                    binlog_file)
        return None
    return out


def _parse_rollup(key: str, data: bytes) -> dict[str, Any]:
    """A roll-up's (or summary's) stored bytes decoded whole; IntegrityError when damaged."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"roll-up {key!r} is not valid zstd", "the stored copy is damaged") from exc
    return decode_manifest(key, raw)


def inner_hole(segs: Iterable[Any]) -> bool:
    """True when, inside one binlog file, listed segments leave positions uncovered between two of
    them. The shipper never leaves one (it resumes where the last committed segment ends); a
    listing does when it passed a compacted entry's key before the merge was committed and
    reached the small entries it replaces after they were deleted (operations/compact.py keeps
    the last of them until the grace ends, so such a listing always shows a hole here)."""
    end: dict[str, int] = {}
    for s in sorted(segs, key=lambda s: (s.binlog_file, s.start_pos, -s.end_pos)):
        if s.binlog_file in end and s.start_pos > end[s.binlog_file]:
            return True
        end[s.binlog_file] = max(end.get(s.binlog_file, 0), s.end_pos)
    return False


#: Reads of a listing with a hole inside a file (inner_hole) before it is taken as it is.
SETTLE_READS = 3


class _Moved(Exception):
    """A listed index entry was gone when read: compaction (or prune) changed the entries."""


def _settled(read: Callable[[bool], list[Any]]) -> list[Any]:
    """read(strict), again (up to SETTLE_READS times) while a listed entry is gone when read
    (strict: _Moved) or the result has a hole inside a file: a reader racing compaction then
    sees the merged entry, never neither. A hole that stays is real (damage): the last read
    returns it, and what was gone, for coverage to report."""
    for _ in range(SETTLE_READS - 1):
        try:
            got = read(True)
        except _Moved:
            got = None
        if got is not None and not inner_hole(got):
            return got
        log.info("index entries changed while they were read (compaction): reading again")
    return read(False)


def _present_only(bodies: list[dict[str, Any] | None], strict: bool) -> list[SegmentInfo]:
    """The entries read, those gone since they were listed left out (strict: _Moved)."""
    if strict and any(d is None for d in bodies):
        raise _Moved
    return [SegmentInfo.from_dict(d) for d in bodies if d is not None]


class Catalog:
    """Reads and commits the repository's manifests."""

    def __init__(self, store: ObjectStore, parallel: int = 16) -> None:
        self.store = store
        self.parallel = parallel
        self._partitioned = False  # the config says format 2 or later (see check_format)
        self._no_legacy = False  # a format-1 config, but no format-1 segment key stored
        # summary entries a writer made and has not published yet (see finish_rollup)
        self._summary_lock = threading.Lock()
        self._summary_new: dict[str, dict[str, dict[str, Any]]] = {}

    # -- repository config -----------------------------------------------------
    def repo_config(self) -> dict[str, Any] | None:
        try:
            data = self.store.get_bytes(layout.REPO_CONFIG)
        except ObjectNotFound:
            return None
        return decode_manifest(layout.REPO_CONFIG, data)

    def ensure_repo(self) -> dict[str, Any]:
        """Create the repository config on first write; returns it."""
        cfg = self.repo_config()
        if cfg is not None:
            return cfg
        body = {"type": "repository", "format": layout.FORMAT_VERSION,
                "repository_id": uuid.uuid4().hex, "created_at": time.time(),
                "created_by": f"backupkit {__version__}"}
        self.store.put_if_absent(layout.REPO_CONFIG, encode_manifest(body))
        return self.repo_config() or body

    # -- reading manifests -----------------------------------------------------
    def read_manifest(self, key: str) -> dict[str, Any]:
        # From another target when this copy is missing or damaged (a mirror); else just this one.
        return read_checked(self.store, key, lambda data: decode_manifest(key, data))

    def _read_many(self, keys: list[str], missing_ok: bool = False) -> list[dict[str, Any]]:
        """The manifests at keys, read in parallel; with missing_ok, None for one deleted since it
        was listed (a segment compaction superseded, a pruned one)."""
        def one(key: str) -> dict[str, Any] | None:
            try:
                return self.read_manifest(key)
            except ObjectNotFound:
                if missing_ok:
                    return None
                raise

        if len(keys) <= 2:
            return [one(k) for k in keys]
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            return list(pool.map(one, keys))

    # -- backups ------------------------------------------------------------------
    def backup_ids(self) -> list[str]:
        ids = []
        for info in self.store.list(layout.BACKUPS):
            bid = layout.backup_id_of(info.key)
            if bid:
                ids.append(bid)
        return sorted(ids)

    def backups(self, kind: str | None = None, strict: bool = False) -> list[BackupManifest]:
        """Every committed backup, oldest consistent point first.

        A manifest that cannot be read (damaged, not a backup manifest, or naming another id
        than its key) is skipped with a warning naming it; with strict it raises instead
        (prune: nothing is deleted while any manifest is in doubt; verify reports them)."""
        keys = [layout.backup_manifest(b) for b in self.backup_ids()]

        def one(key: str) -> BackupManifest | None:
            try:
                return manifest_at(key, self.read_manifest(key))
            except ObjectNotFound:
                return None  # listed a moment ago: pruned meanwhile
            except IntegrityError as exc:
                if strict or isinstance(exc, KeyMismatch):  # a wrong key is no damaged manifest
                    raise
                log.warning("skipping backup manifest %s: %s", key, exc.one_line())
                return None

        if len(keys) <= 2:
            found = [one(k) for k in keys]
        else:
            with ThreadPoolExecutor(max_workers=self.parallel) as pool:
                found = list(pool.map(one, keys))
        out = [b for b in found if b is not None and (not kind or b.kind == kind)]
        return sorted(out, key=lambda b: (b.point.time, b.id))

    def backup(self, backup_id: str) -> BackupManifest:
        key = layout.backup_manifest(backup_id)
        try:
            return manifest_at(key, self.read_manifest(key))
        except ObjectNotFound:
            raise UsageError(f"no backup {backup_id!r} in {self.store.describe()}",
                             "run 'backupkit list' to see the backups") from None

    def commit_backup(self, manifest: BackupManifest) -> None:
        """Write the manifest last: from this moment the backup exists."""
        self.ensure_repo()
        key = layout.backup_manifest(manifest.id)
        if not self.store.put_if_absent(key, encode_manifest({**manifest.to_dict(), **self._encryption()})):
            raise StorageError(f"backup {manifest.id} already committed")

    def _encryption(self) -> dict[str, Any]:
        """{"encryption": key ids} when the repository is encrypted (never the key itself)."""
        info = self.store.encryption_info()
        return {"encryption": info} if info is not None else {}

    # -- binlog ---------------------------------------------------------------------
    def check_format(self, writing: bool = False) -> None:
        """Refuse the binlog of a format-1 repository (its segment keys are not where this
        backupkit looks) with one line naming `backupkit repo migrate`. A format-1 repository with
        no binlog yet is fine; writing, its config is raised to format 2 first. One GET of the
        config, once per catalog; readers call it only when they found nothing."""
        if self._partitioned:
            return
        cfg = self.repo_config()
        if cfg is None or int(cfg.get("format") or 1) >= layout.PARTITIONED_FORMAT:
            self._partitioned = True
            return
        if not self._no_legacy and self.legacy_binlog():
            raise UsageError(f"{self.store.describe()} holds binlog in repository format "
                             f"{cfg.get('format')}; this backupkit reads format {layout.FORMAT_VERSION}",
                             "run 'backupkit repo migrate' once (it rewrites the binlog index in place)")
        self._no_legacy = True
        if writing:
            self.store.put(layout.REPO_CONFIG, encode_manifest({**cfg, "format": layout.FORMAT_VERSION}))
            self._partitioned = True

    def legacy_binlog(self) -> bool:
        """True when a format-1 segment key is stored (first keys of each source only)."""
        for sid in self.sources():
            if any(layout.legacy_segment_of(i.key) is not None
                   for i in self.store.list(layout.binlog_prefix(sid))):
                return True
        return False

    def sources(self) -> list[str]:
        """Every source with binlog keys: the folders under binlog/ (ObjectStore.folders: one
        LIST request on S3; elsewhere one per source, each skipping past the source before it),
        never a walk over every key."""
        return sorted(layout.dec(name) for name in self.store.folders(layout.BINLOG))

    def segments(self, source_id: str, since_file: str | None = None) -> list[SegmentInfo]:
        """Every committed segment of a source, in binlog order.

        With a head naming finished files (format 2), their roll-ups are authoritative: only the
        files after the last of them are listed (_segments_from_head). Otherwise, or when the
        head does not hold up, every index entry is listed (_segments_listed). since_file: the
        named files before it may be left out (a restore plan that starts replaying there)."""
        head = self.head(source_id)
        if head is not None:
            found = self._segments_from_head(source_id, head, since_file)
            if found is not None:
                return found
        return self._segments_listed(source_id)

    def stretches(self, source_id: str, cuts: Iterable[tuple[str, int]] = ()) -> list[Stretch]:
        """Every committed segment of a source as stretches (repo/stretches.py), in binlog order:
        what the commands that only summarize coverage read (list, binlog status, report, the
        status page). The same runs as segments() gives, held in a few objects per binlog file.

        With a head (format 2): each named file from the source summary when its entry there
        was made from the roll-up now listed (same ETag and size), else from its roll-up (or
        listing), folded as it is read; the files after them as segments() reads them. Without
        a head, or when it does not hold up: every index entry listed, then folded.

        cuts: binlog points that must be stretch boundaries or lie in a stretch of one segment
        (stretches.summarize): a base's point, the watermark's. A file whose summary has one
        strictly inside a stretch is read from its roll-up instead."""
        cuts = list(cuts)
        head = self.head(source_id)
        if head is not None:
            found = self._stretches_from_head(source_id, head, cuts)
            if found is not None:
                return found
        return summarize(self._segments_listed(source_id), cuts)

    def _stretches_from_head(self, source_id: str, head: BinlogHead, cuts: list[tuple[str, int]]
                             ) -> list[Stretch] | None:
        rolled = _named_files(head, source_id)
        if rolled is None:
            return None
        listed = {i.key: i for i in self.store.list(layout.rollup_prefix(source_id))}
        present = {k: i.mtime for k, i in listed.items()}
        summary = layout.binlog_summary(source_id)
        entries = self.summary_entries(source_id) if summary in listed else {}
        items: list[SegmentInfo | Stretch] = []
        todo: list[str] = []
        for f in rolled:
            got = _summary_of(entries.get(f), listed.get(layout.segment_rollup(source_id, f)),
                              source_id, f)
            if got is None or (cuts and inside(got, cuts)):
                todo.append(f)
            else:
                items += got

        def one(f: str) -> list[Stretch]:
            got = self._rollup_entries(source_id, f, present)
            return summarize(got if got is not None else self._file_listed(source_id, f), cuts)

        if todo:  # no usable summary entry: read the roll-up, few at once, folded as read
            with ThreadPoolExecutor(max_workers=max(1, min(ROLLUP_READERS, len(todo)))) as pool:
                for got in pool.map(one, todo):
                    items += got
        items += self._tail(source_id, layout.index_after_file(source_id, rolled[-1]) if rolled else None,
                            present, self._chunk_summaries(source_id, rolled, listed, cuts))
        if not _holds_newest(head, items, source_id):
            return None
        return summarize(items, cuts)

    def _chunk_summaries(self, source_id: str, rolled: list[str], listed: dict[str, ObjectInfo],
                         cuts: list[tuple[str, int]]) -> dict[str, list[Stretch]]:
        """The stretches of the open files' chunks (chunk key -> stretches) from their chunk
        summaries (repo/rollups.py): one GET per file after the named ones that has one. A chunk
        is left out (read itself) unless its entry was made from the chunk listed now (same ETag
        and size), lies in the chunk's interval and has no cut strictly inside."""
        out: dict[str, list[Stretch]] = {}
        last = binlog_order(rolled[-1], 0) if rolled else None
        for key in listed:
            f = layout.chunk_summary_of(key)
            if f is None or (last is not None and binlog_order(f, 0) <= last):
                continue
            try:
                body = self._read_rollup(key)
                chunks = body.get("chunks")
                if body.get("source_id") != source_id or body.get("binlog_file") != f \
                        or not isinstance(chunks, dict):
                    raise IntegrityError(f"chunk summary {key!r} is not the summary of {f}")
            except ObjectNotFound:
                continue
            except (IntegrityError, StorageError) as exc:
                log.warning("ignoring chunk summary %s (its chunks are read): %s", key, exc.message)
                continue
            for c in chunks_of(listed).get(f, []):
                got = _summary_of(chunks.get(c.key), listed[c.key], source_id, f)
                if got and all(c.start <= st.start_pos and st.end_pos <= c.end for st in got) \
                        and not (cuts and inside(got, cuts)):
                    out[c.key] = got
        return out

    def file_segments(self, source_id: str, binlog_file: str) -> list[SegmentInfo]:
        """Every listed segment of one binlog file (covered ones included), in binlog order: what
        a restore planned over stretches reads when it reaches that file (restore/plan.py), so it
        holds one file's segments at a time. A finished file the head names: its roll-up (one
        GET; the file's entries listed when it is missing or damaged). Any other file (the open
        one): its entries listed from the file's first key on, through the open file's chunks."""
        head = self.head(source_id)
        named = _named_files(head, source_id) if head is not None else None
        present = {i.key: i.mtime for i in self.store.list(layout.rollup_prefix(source_id))}
        return self._file_segments(source_id, binlog_file, named, present)

    def _file_segments(self, source_id: str, binlog_file: str, named: list[str] | None,
                       present: dict[str, float]) -> list[SegmentInfo]:
        if named and binlog_file in named:
            got = self._rollup_entries(source_id, binlog_file, present)
            segs = got if got is not None else self._file_listed(source_id, binlog_file)
        else:
            segs = [s for s in self._tail(source_id, layout.segment_file_prefix(source_id, binlog_file),
                                          present) if s.binlog_file == binlog_file]
        return sorted(segs, key=lambda s: (s.start_pos, s.end_pos))

    def segments_by_file(self, source_id: str) -> Iterator[tuple[str, list[SegmentInfo]]]:
        """Every listed segment of a source (covered ones included), one binlog file at a time
        in binlog order: (file, its segments as file_segments gives them). What a command that
        must see each segment (verify, prune, purge, undo, compaction) iterates, so it holds one
        file's segments at a time, not the source's. The files come from stretches() (the
        summary: a few objects per file), the head and roll-up listing are read once."""
        files = list(dict.fromkeys(st.binlog_file for st in self.stretches(source_id)))
        head = self.head(source_id)
        named = _named_files(head, source_id) if head is not None else None
        present = {i.key: i.mtime for i in self.store.list(layout.rollup_prefix(source_id))}
        for f in files:
            yield f, self._file_segments(source_id, f, named, present)

    # -- the summary of finished files (repo/stretches.py) --------------------------------------
    def summary_entries(self, source_id: str) -> dict[str, dict[str, Any]]:
        """The stored summary's entries (binlog file -> {"etag", "size", "stretches"}); empty
        when there is none or it cannot be read (readers read the roll-ups then)."""
        key = layout.binlog_summary(source_id)
        try:
            body = self._read_rollup(key)
            files = body.get("files", {})
            if body.get("source_id") != source_id or not isinstance(files, dict):
                raise IntegrityError(f"summary {key!r} is not this source's summary")
            return files
        except ObjectNotFound:
            return {}
        except (IntegrityError, StorageError) as exc:
            log.warning("ignoring summary %s (the roll-ups are read): %s", key, exc.message)
            return {}

    def finish_rollup(self, source_id: str, binlog_file: str, info: ObjectInfo,
                      stretches: list[Stretch]) -> None:
        """A finished file's roll-up was written (info: as the store returned it): its entry in
        the source summary, published with the next head that names the file (now when the head
        names it already: prune and compaction rewrite such files). stretches: summarize() of its
        entries cut at _base_points(binlog_file): readers cut there (restore, report, the status
        page), and a cut strictly inside a stretch makes them read the roll-up instead."""
        if info.etag:  # else nothing to check it against: readers read the roll-up
            entry = {"etag": info.etag, "size": info.size, "stretches": [st.to_dict() for st in stretches]}
            with self._summary_lock:
                self._summary_new.setdefault(source_id, {})[binlog_file] = entry
        head = self.head(source_id)
        if head is not None and binlog_file in head.rollups:
            self._publish_summary(source_id, head.rollups)

    def _base_points(self, binlog_file: str) -> list[tuple[str, int]]:
        """The binlog points of the committed backups (summarize keeps those in the file; a
        point of another source's backup only cuts a stretch in two, which is never wrong). Best
        effort: without them the entry is still right, a reader cutting inside a stretch of it
        reads the roll-up instead."""
        try:
            backups = self.backups()
        except (IntegrityError, StorageError) as exc:
            log.warning("summary of %s made without the bases' points: %s", binlog_file, exc.message)
            return []
        return [(b.point.file, b.point.pos) for b in backups if b.point.file]

    def _publish_summary(self, source_id: str, named: Iterable[str]) -> None:
        """Add the entries this process made for files now named (by the head) to the source
        summary. The entries kept are those matching the roll-ups listed now (so a writer never
        puts back an entry that another one, prune or compaction, made stale), replaced with a
        conditional write (retried when another writer got there first). One GET, one LIST and
        one PUT per finished file, none while nothing new is named; a failure only costs readers
        the roll-ups' GETs."""
        named = set(named)
        with self._summary_lock:
            pending = self._summary_new.get(source_id, {})
            ready = {f: pending.pop(f) for f in sorted(pending) if f in named}
        if not ready:
            return
        key = layout.binlog_summary(source_id)
        for _ in range(3):
            try:
                try:
                    data, etag = self.store.read_small(key)
                    stored = self._summary_body(key, data)
                except ObjectNotFound:
                    etag, stored = "", {}
                listed = {f: i for i in self.store.list(layout.rollup_prefix(source_id))
                          if (f := layout.rollup_file_of(i.key)) is not None}
                want = {f: e for f in sorted(named)
                        if (e := next((x for x in (ready.get(f), stored.get(f))
                                       if _entry_matches(x, listed.get(f))), None)) is not None}
                body = {"type": "binlog_summary", "source_id": source_id, "files": want,
                        "updated_at": time.time()}
                blob = zstandard.ZstdCompressor(level=3).compress(encode_manifest(body))
                if (self.store.replace_if_match(key, blob, etag) if etag
                        else self.store.put_if_absent(key, blob)):
                    return
            except StorageError as exc:
                log.warning("summary of %s not written: %s", source_id, exc.message)
                return
        log.warning("summary of %s not written: other writers kept replacing it", source_id)

    def _summary_body(self, key: str, data: bytes) -> dict[str, Any]:
        """The files of a stored summary ({} when it is damaged: it is rewritten whole)."""
        try:
            files = decode_manifest(key, zstandard.ZstdDecompressor().decompress(data)).get("files")
        except (zstandard.ZstdError, IntegrityError):
            return {}
        return files if isinstance(files, dict) else {}

    def _segments_from_head(self, source_id: str, head: BinlogHead,
                            since_file: str | None = None) -> list[SegmentInfo] | None:
        """The segments through the head: every file the head names as rolled up is read from its
        roll-up alone (a file whose roll-up is missing or damaged is listed); the files after the
        last of them are listed, their entries read through any partial roll-up. None when the
        result lacks the head's own segment (a writer broke the rule that the named files are all
        the finished files before the newest one): the caller lists everything then."""
        rolled = _named_files(head, source_id)
        if rolled is None:
            return None
        present = {i.key: i.mtime for i in self.store.list(layout.rollup_prefix(source_id))}

        def one(f: str) -> list[SegmentInfo] | None:
            return self._rollup_entries(source_id, f, present)

        wanted = [f for f in rolled if since_file is None
                  or binlog_order(f, 0) >= binlog_order(since_file, 0)]
        segs: list[SegmentInfo] = []
        # few at once: a decoded roll-up holds ~5 KB per entry until it is made into segments
        with ThreadPoolExecutor(max_workers=max(1, min(ROLLUP_READERS, len(wanted)))) as pool:
            for f, got in zip(wanted, pool.map(one, wanted), strict=True):
                segs += got if got is not None else self._file_listed(source_id, f)
        # the files after the last rolled-up one: their chunks, the entries after those listed
        segs += self._tail(source_id, layout.index_after_file(source_id, rolled[-1]) if rolled else None,
                           present)
        if not _holds_newest(head, segs, source_id):
            return None
        return sorted(segs, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos))

    def _rollup_entries(self, source_id: str, f: str, present: dict[str, float]
                        ) -> list[SegmentInfo] | None:
        """The entries of file f from its roll-up (made here, so that only the roll-ups in flight
        are held as parsed JSON), or None: list that file. present: the listed roll-up keys."""
        key = layout.segment_rollup(source_id, f)
        if key not in present:
            return None  # being rewritten by prune (or pruned whole): that file is listed
        try:
            return self.rollup_segments(key, lambda x: x.source_id == source_id and x.binlog_file == f)
        except ObjectNotFound:
            return None
        except (IntegrityError, StorageError) as exc:
            log.warning("ignoring roll-up %s (its file is listed): %s", key, exc.message)
            return None
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("ignoring roll-up %s (a malformed entry): its file is listed", key)
            return None

    def _tail(self, source_id: str, after: str | None, present: dict[str, float],
              summaries: dict[str, list[Stretch]] | None = None) -> list[Any]:
        """_tail_once, read again while what it read has a hole inside one binlog file (see
        inner_hole): a listing made while compaction replaced small entries by a merged one."""
        return _settled(lambda strict: self._tail_once(source_id, after, present, summaries, strict))

    def _tail_once(self, source_id: str, after: str | None, present: dict[str, float],
                   summaries: dict[str, list[Stretch]] | None = None, strict: bool = False
                   ) -> list[Any]:
        """The entries after key after (all when None): from each listed entry where a chain of
        chunks starts, the chunks (GETs) and a new LIST from where the chain ends; the entries no
        chunk holds are read through a partial whole-file roll-up, else one by one. A chunk that
        cannot be read is dropped and its entries listed. summaries: stretches standing for
        chunks (chunk key -> stretches, _chunk_summaries), used instead of reading those chunks,
        unless an entry read reaches into the chunk (a compacted one: only its entries tell
        which of them it covers)."""
        chunks = chunks_of(present)
        segs: list[Any] = []
        used: list[Chunk] = []
        start = after
        pending: dict[str, float] = {}
        # a chain starting a file (no compaction since): the first entry listed is likely where
        # it starts, and one key is all the first LIST needs (a page of 1000 cost moto 0.1-0.2 s)
        probe = any(c.start <= 4 for cs in chunks.values() for c in cs)
        while True:
            found: tuple[str, list[Chunk]] | None = None
            if probe:
                probe = False
                first = self.store.first_after(layout.index_prefix(source_id), after or "")
                if first is None:
                    break
                pos = layout.segment_of(first.key)
                ch = chain(chunks.get(pos[0], ()), pos[1]) if pos is not None else []
                found = (pos[0], ch) if pos is not None and ch else None
            listing = (iter(()) if found is not None
                       else self.store.list_after(layout.index_prefix(source_id), after) if after
                       else self.store.list(layout.index_prefix(source_id)))
            for info in listing:
                pos = layout.segment_of(info.key)
                if pos is None:
                    continue
                ch = chain(chunks.get(pos[0], ()), pos[1])
                if ch:
                    found = (pos[0], ch)
                    break
                pending[info.key] = info.mtime
            close = getattr(listing, "close", None)
            if close is not None:
                close()
            if found is None:
                break
            f, ch = found
            stand = {c: summaries[c.key] for c in ch if summaries and c.key in summaries}
            read = [c for c in ch if c not in stand]
            with ThreadPoolExecutor(max_workers=max(1, min(self.parallel, len(read)))) as pool:
                got = dict(zip(read, pool.map(self._read_chunk_or_none, read), strict=True))
            bad = {c for c, entries in got.items() if entries is None}
            if bad:
                chunks[f] = [c for c in chunks[f] if c not in bad]
                continue  # list again from the same place, without them
            for c in ch:
                segs += stand[c] if c in stand else got[c] or []
            used += stand
            after = layout.index_from(source_id, f, ch[-1].end)
        if pending:
            files = {pos[0] for k in pending if (pos := layout.segment_of(k)) is not None}
            partial = [(k, m) for k, m in present.items() if layout.rollup_file_of(k) in files]
            known = self._rolled_up(partial, pending)
            segs += [known[k] for k in pending if k in known]
            segs += _present_only(self._read_many([k for k in pending if k not in known],
                                                  missing_ok=True), strict)
        reaching = {c.key for c in used if any(
            s.binlog_file == c.binlog_file and s.start_pos < c.start < s.end_pos for s in segs)}
        if reaching:  # read those chunks after all (a LIST again; rare: compaction removes chunks)
            return self._tail_once(source_id, start, present,
                                   {k: v for k, v in (summaries or {}).items() if k not in reaching},
                                   strict)
        return segs

    def read_chunk(self, c: Chunk) -> list[SegmentInfo]:
        """The entries of a chunk (only those of its file and interval); IntegrityError when it is
        damaged."""
        try:
            return self.rollup_segments(c.key, lambda s: s.binlog_file == c.binlog_file
                                        and c.start <= s.start_pos < c.end)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"roll-up {c.key!r} holds a malformed entry ({type(exc).__name__})",
                                 "the stored copy is damaged") from None

    def rollup_segments(self, key: str, keep: Callable[[SegmentInfo], bool] = lambda s: True
                        ) -> list[SegmentInfo]:
        """The entries of a roll-up (a file's or a chunk's) that keep accepts, made one at a time as
        the roll-up is decoded (repo/streamed.py: a roll-up of 65,536 entries parsed whole is about
        300 MiB of dicts). IntegrityError when it is damaged; a malformed entry raises what
        SegmentInfo.from_dict raises (KeyError, TypeError, ValueError, AttributeError)."""
        def one(d: dict[str, Any]) -> SegmentInfo | None:
            seg = SegmentInfo.from_dict(d)
            return seg if keep(seg) else None

        def parse(data: bytes) -> list[SegmentInfo]:
            try:
                return decode_list(key, data, "segments", one, layout.FORMAT_VERSION)[1]
            except NotCanonical:  # not written by encode_manifest: decoded whole
                return [s for d in _parse_rollup(key, data).get("segments", [])
                        if (s := one(d)) is not None]

        return read_checked(self.store, key, parse)

    def _read_chunk_or_none(self, c: Chunk) -> list[SegmentInfo] | None:
        try:
            return self.read_chunk(c)
        except ObjectNotFound:
            return None
        except (IntegrityError, StorageError) as exc:
            log.warning("ignoring roll-up %s (its entries are listed): %s", c.key, exc.message)
            return None

    def forget_rollups(self, source_id: str, binlog_files: Iterable[str]) -> None:
        """Delete the roll-up and the chunks of these files: done before their entries are edited
        (prune, compaction), so that readers list those files meanwhile."""
        files = sorted(set(binlog_files))
        if files:
            self.store.delete([layout.segment_rollup(source_id, f) for f in files])
            self.forget_chunks(source_id, files)

    def forget_chunks(self, source_id: str, binlog_files: Iterable[str]) -> None:
        """Delete the chunks of these files' roll-ups (repo/rollups.py) before their entries are
        edited: readers list those entries meanwhile, and a writer merges no chunk that is gone."""
        keys = [i.key for f in sorted(set(binlog_files))
                for i in self.store.list(layout.rollup_chunk_prefix(source_id, f))]
        if keys:
            self.store.delete(keys)

    def write_rollup(self, key: str, source_id: str, binlog_file: str,
                     segs: Iterable[SegmentInfo]) -> ObjectInfo:
        """Store entries as one roll-up object at key (a file's or a chunk's)."""
        body = {"type": "segment_rollup", "source_id": source_id, "binlog_file": binlog_file,
                "created_at": time.time(), "format": layout.FORMAT_VERSION}
        return self.store.put(key, encode_list(body, "segments", (s.to_dict() for s in segs)))

    def _file_listed(self, source_id: str, binlog_file: str) -> list[SegmentInfo]:
        """The segments of one binlog file, every index entry listed and read."""
        keys = [i.key for i in self.store.list(layout.segment_file_prefix(source_id, binlog_file))
                if layout.is_segment_index(i.key)]
        return [SegmentInfo.from_dict(d) for d in self._read_many(keys)]

    def _segments_listed(self, source_id: str) -> list[SegmentInfo]:
        """_segments_listed_once, read again while it has a hole inside one file (inner_hole)."""
        return _settled(lambda strict: self._segments_listed_once(source_id, strict))

    def _segments_listed_once(self, source_id: str, strict: bool = False) -> list[SegmentInfo]:
        """Every committed segment, by listing every index entry of the source.

        The listed index entries decide which segments exist; roll-ups (one object per finished
        binlog file) only save reading those entries one by one. An entry a roll-up lacks is read
        itself; a roll-up entry without a listed index entry (pruned) is ignored; a damaged or
        unreadable roll-up is skipped with a warning."""
        listed: dict[str, float] = {}  # index entry -> its mtime
        for info in self.store.list(layout.index_prefix(source_id)):
            if layout.is_segment_index(info.key):
                listed[info.key] = info.mtime
        if not listed:
            self.check_format()
            return []
        rollups = [(i.key, i.mtime) for i in self.store.list(layout.rollup_prefix(source_id))
                   if layout.rollup_file_of(i.key) is not None]
        keys = list(listed)
        known = self._rolled_up(rollups, listed)
        segs = [known[k] for k in keys if k in known]
        segs += _present_only(self._read_many([k for k in keys if k not in known], missing_ok=True),
                              strict)
        return sorted(segs, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos))

    def read_rollup(self, key: str) -> dict[str, Any]:
        """The body of a roll-up; IntegrityError when it is damaged."""
        return self._read_rollup(key)

    def _read_rollup(self, key: str) -> dict[str, Any]:
        return read_checked(self.store, key, lambda data: _parse_rollup(key, data))

    def _rolled_up(self, rollups: list[tuple[str, float]], wanted: dict[str, float]
                   ) -> dict[str, SegmentInfo]:
        """Index entries found in roll-ups (key, mtime), for the wanted keys (key -> mtime) only,
        and only where the entry is older than the roll-up: an entry written again after it (its
        file pruned, then shipped anew under the same name) is read itself."""
        if not rollups or not wanted:
            return {}

        def one(rollup: tuple[str, float]) -> list[SegmentInfo]:
            key, written = rollup

            def keep(seg: SegmentInfo) -> bool:
                # the key is computed from the entry itself, so it must be a listed one
                return seg.key in wanted and wanted[seg.key] <= written

            try:
                return self.rollup_segments(key, keep)
            except (IntegrityError, StorageError) as exc:
                log.warning("ignoring roll-up %s (its segments are read one by one): %s", key,
                            exc.message)
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("ignoring roll-up %s (a malformed entry): its segments are read one "
                            "by one", key)
            return []

        with ThreadPoolExecutor(max_workers=min(self.parallel, len(rollups))) as pool:
            return {seg.key: seg for segs in pool.map(one, rollups) for seg in segs}

    def roll_up_file(self, source_id: str, binlog_file: str,
                     known: dict[str, SegmentInfo] | None = None,
                     keys: Iterable[str] | None = None, finished: bool = False) -> str | None:
        """Write the roll-up of one binlog file from its current index entries (keys: as just
        listed, else listed here); known entries (key -> SegmentInfo, e.g. what a shipper just
        committed) are not read again. Returns the roll-up's key, or None when the file has
        no segment (a file still open: fewer than two)."""
        if keys is None:
            keys = (i.key for i in self.store.list(layout.segment_file_prefix(source_id, binlog_file))
                    if layout.is_segment_index(i.key))
        keys = sorted(keys)
        if len(keys) < (1 if finished else 2):
            return None
        listed = set(keys)
        have = {k: v for k, v in (known or {}).items() if k in listed}
        missing = [k for k in keys if k not in have]
        for d in self._read_many(missing):
            seg = SegmentInfo.from_dict(d)
            have[seg.key] = seg
        key = layout.segment_rollup(source_id, binlog_file)
        entries = [have[k] for k in keys if k in have]
        info = self.write_rollup(key, source_id, binlog_file, entries)
        if finished:
            cut = summarize(entries, self._base_points(binlog_file)) if info.etag else []
            self.finish_rollup(source_id, binlog_file, info, cut)
        return key

    def roll_up(self, source_id: str) -> dict[str, list[str]]:
        """Bring the roll-ups of a source up to date: every finished binlog file (one with a later
        file after it) whose roll-up is missing or lacks an entry gets one; a roll-up whose file
        has no segment left (pruned) is deleted. The newest file is left alone: it still grows."""
        by_file: dict[str, dict[str, float]] = {}  # file -> index entry -> mtime
        rollups: dict[str, tuple[str, float]] = {}
        for info in self.store.list(layout.index_prefix(source_id)):
            pos = layout.segment_of(info.key)
            if pos is not None:
                by_file.setdefault(pos[0], {})[info.key] = info.mtime
        for info in self.store.list(layout.rollup_prefix(source_id)):
            if (f := layout.rollup_file_of(info.key)) is not None:
                rollups[f] = (info.key, info.mtime)
        out: dict[str, list[str]] = {"written": [], "deleted": []}
        gone = [k for f, (k, _) in rollups.items() if f not in by_file]
        if gone:
            self.store.delete(gone)
            out["deleted"] = gone
        if len(by_file) < 2:
            return out
        newest = max(by_file, key=lambda f: binlog_order(f, 0))
        for f in sorted(by_file):
            if f == newest:
                continue
            covered = self._rolled_up([rollups[f]], by_file[f]) if f in rollups else {}
            if set(covered) == set(by_file[f]):
                continue
            key = self.roll_up_file(source_id, f, known=covered, keys=by_file[f], finished=True)
            if key:
                out["written"].append(key)
        return out

    def commit_segment(self, info: SegmentInfo) -> None:
        """Write a segment's index entry after its data object."""
        if not info.created_at:
            info.created_at = time.time()
        self.check_format(writing=True)
        if not self.store.put_if_absent(info.key, encode_manifest({**info.to_dict(), **self._encryption()})):
            raise StorageError(f"segment {info.key} already committed")

    def gaps(self, source_id: str) -> list[GapInfo]:
        keys = [i.key for i in self.store.list(layout.gaps_prefix(source_id)) if i.key.endswith(".json")]
        out = []
        for d in self._read_many(keys):
            out.append(_from_dict(GapInfo, d))
        return sorted(out, key=lambda g: (g.after_file, g.after_pos))

    def record_gap(self, gap: GapInfo) -> None:
        key = layout.gap_record(gap.source_id, gap.after_file, gap.after_pos)
        self.store.put_if_absent(key, encode_manifest(gap.to_dict()))

    def settle_rollups(self, source_id: str) -> set[str]:
        """The finished files a head may name as rolled up, for a shipper starting: the files the
        current head names whose roll-up is still stored, plus every finished file after the
        last of them, rolled up now (a run that stopped before its roll-up landed). The newest
        file is left alone: it may still grow. Costs one LIST of the roll-ups and one LIST of
        the index after the last rolled-up file."""
        head = self.head(source_id)
        present = {layout.rollup_file_of(i.key) for i in self.store.list(layout.rollup_prefix(source_id))}
        rolled = {f for f in (head.rollups if head else []) if f in present}
        after = max(rolled, key=lambda f: binlog_order(f, 0)) if rolled else None
        listing = (self.store.list_after(layout.index_prefix(source_id),
                                         layout.index_after_file(source_id, after))
                   if after is not None else self.store.list(layout.index_prefix(source_id)))
        by_file: dict[str, list[str]] = {}
        for info in listing:
            pos = layout.segment_of(info.key)
            if pos is not None:
                by_file.setdefault(pos[0], []).append(info.key)
        files = sorted(by_file, key=lambda f: binlog_order(f, 0))
        for f in files[:-1]:
            if self.roll_up_file(source_id, f, keys=by_file[f], finished=True):
                rolled.add(f)
            else:
                break  # never name a file after one that is not rolled up
        return rolled

    # -- the head: the newest entry in one GET --------------------------------------------
    def write_head(self, newest: SegmentInfo, rollups: Iterable[str] = ()) -> None:
        """Replace the source's head (one PUT) after newest was committed; rollups: the binlog
        files whose roll-up is written."""
        body = {"type": "binlog_head", "source_id": newest.source_id, "segment": newest.to_dict(),
                "rollups": sorted(set(rollups)), "updated_at": time.time()}
        self.store.put(layout.binlog_head(newest.source_id), encode_manifest(body))
        self._publish_summary(newest.source_id, body["rollups"])

    def head(self, source_id: str) -> BinlogHead | None:
        """The source's head, or None when there is none or it cannot be read (readers list then)."""
        key = layout.binlog_head(source_id)
        try:
            body = self.read_manifest(key)
            seg = SegmentInfo.from_dict(body["segment"])
            rollups = [str(f) for f in body.get("rollups", [])]
        except (StorageError, IntegrityError) as exc:
            log.debug("no usable head %s: %s", key, exc.message)
            return None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("ignoring head %s (not a head: %s)", key, exc)
            return None
        if seg.source_id != source_id:
            log.warning("ignoring head %s: it names source %r", key, seg.source_id)
            return None
        return BinlogHead(seg, rollups, float(body.get("updated_at") or 0))

    def _newest_from(self, source_id: str, seg: SegmentInfo) -> SegmentInfo | None:
        """The newest committed segment, given the head's entry seg: seg when its index entry is
        listed and no later one is (one HEAD and one LIST from seg's key on), the later one when
        there is one, None when seg's entry is gone (the caller lists everything then)."""
        if self.store.stat(seg.key) is None:
            return None
        best: tuple[str, int, int, str] = (seg.binlog_file, seg.start_pos, seg.end_pos, seg.key)
        for info in self.store.list_after(layout.index_prefix(source_id), seg.key):
            pos = layout.segment_of(info.key)
            if pos is not None and pos > best[:3]:
                best = (*pos, info.key)
        if best[3] == seg.key:
            return seg
        return SegmentInfo.from_dict(self.read_manifest(best[3]))

    def last_segment(self, source_id: str) -> SegmentInfo | None:
        """The newest committed segment: from the head (one GET, one HEAD, one LIST page from its
        key on), or by listing every key of the source when the head is missing or names an
        entry that is gone. The listed index entries decide in both cases."""
        head = self.head(source_id)
        if head is not None:
            found = self._newest_from(source_id, head.segment)
            if found is not None:
                return found
        return self._last_segment_listed(source_id)

    def _last_segment_listed(self, source_id: str) -> SegmentInfo | None:
        """The newest committed segment by a full listing, reading only its own index entry."""
        best: tuple[str, int, int, str] | None = None
        for info in self.store.list(layout.index_prefix(source_id)):
            pos = layout.segment_of(info.key)
            if pos is not None and (best is None or pos > best[:3]):
                best = (*pos, info.key)
        if best is None:
            self.check_format()
            return None
        return SegmentInfo.from_dict(self.read_manifest(best[3]))

    def shipped_position(self, source_id: str) -> tuple[str, int] | None:
        """Where the newest committed segment ends: the shipper resumes here."""
        last = self.last_segment(source_id)
        return last.next_point() if last else None

    # -- restore records --------------------------------------------------------------
    def commit_restore_record(self, record: dict[str, Any]) -> str:
        rid = record.setdefault("id", new_backup_id("restore"))
        self.store.put(layout.restore_record(rid), encode_manifest({"type": "restore", **record}))
        return rid

    def restore_records(self) -> list[dict[str, Any]]:
        keys = [i.key for i in self.store.list(layout.RESTORES) if i.key.endswith(".json")]
        return sorted(self._read_many(keys), key=lambda r: r.get("finished_at", 0))
