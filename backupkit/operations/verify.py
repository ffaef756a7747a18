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

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
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
    decode_manifest,
    encode_manifest,
    manifest_at,
)
from backupkit.repo.chain import broken_chains
from backupkit.repo.codec import StoredObject, sha256_bytes, verify_object
from backupkit.repo.coverage import build_runs
from backupkit.restore.cold import restore_cold
from backupkit.restore.load import RestoreOptions, restore_snapshot
from backupkit.restore.physical import restore_physical, server_checksums
from backupkit.storage.base import ObjectStore
from backupkit.util.progress import NullProgress, Progress
from backupkit.util.units import utc_iso


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
    """What earlier verify runs checked: object key -> sha256 of its stored bytes, and when a run
    last read everything."""

    objects: dict[str, str] = field(default_factory=dict)
    full_at: float = 0.0
    #: the segments of a finished binlog file, recorded as one digest of their keys and checksums
    #: ("<source>\n<file>" -> digest): the record grows with files, not with segments
    groups: dict[str, str] = field(default_factory=dict)

    def has(self, obj: StoredObject, group: tuple[str, str] | None) -> bool:
        """True when obj, as it is now, was checked: itself, or as one of its unchanged group."""
        if self.objects.get(obj.key) == obj.sha256:
            return True
        return group is not None and self.groups.get(group[0]) == group[1]


def segment_groups(per_source: dict[str, list[SegmentInfo]]) -> dict[str, tuple[str, str]]:
    """object key -> (group, digest) for the segments of every finished binlog file (all files of
    a source but its newest, which still grows): the digest covers each segment's data key and
    checksum, so a group matches only while its file's segments are the very same."""
    out: dict[str, tuple[str, str]] = {}
    for sid, segs in per_source.items():
        files: dict[str, list[StoredObject]] = {}
        for seg in segs:
            files.setdefault(seg.binlog_file, []).append(seg.object)
        for f in sorted(files)[:-1]:
            objs = sorted(files[f], key=lambda o: o.key)
            digest = sha256_bytes("".join(f"{o.key} {o.sha256}\n" for o in objs).encode())
            for o in objs:
                out[o.key] = (f"{sid}\n{f}", digest)
    return out


def read_verified(catalog: Catalog) -> Verified:
    """The verify record, or an empty one (everything is new) when missing or unreadable."""
    key = layout.verified_record()
    try:
        raw = zstandard.ZstdDecompressor().decompress(catalog.store.get_bytes(key))
        body = decode_manifest(key, raw)
        return Verified({str(k): str(v) for k, v in body["objects"].items()}, float(body["full_at"]),
                        {str(k): str(v) for k, v in body.get("groups", {}).items()})
    except (StorageError, IntegrityError, zstandard.ZstdError, KeyError, TypeError, ValueError,
            AttributeError):
        return Verified()


def write_verified(catalog: Catalog, verified: Verified) -> None:
    """Replace the verify record (one PUT)."""
    body = {"type": "verified", "objects": verified.objects, "groups": verified.groups,
            "full_at": verified.full_at, "updated_at": time.time()}
    catalog.store.put(layout.verified_record(),
                      zstandard.ZstdCompressor(level=3).compress(encode_manifest(body)))


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


def _read_segments(catalog: Catalog, source_id: str, report: VerifyReport,
                   parallel: int) -> list[SegmentInfo]:
    keys = [i.key for i in catalog.store.list(layout.index_prefix(source_id))
            if layout.is_segment_index(i.key)]
    segs = [SegmentInfo.from_dict(d) for d in _read_all(catalog, keys, report, parallel)]
    return sorted(segs, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos))


def coverage_problems(source_id: str, segs: list[SegmentInfo], gaps: list[GapInfo]
                      ) -> tuple[list[Problem], list[str]]:
    """Holes between runs of segments: recorded gaps are notes, the others are problems."""
    problems: list[Problem] = []
    notes: list[str] = []
    runs = build_runs(segs, gaps)
    for a, b in zip(runs, runs[1:], strict=False):
        end, start = a.end, b.start
        last = a.segments[-1]
        known = [g for g in gaps if (g.resume_file, g.resume_pos) == start]
        if known:
            g = known[0]
            notes.append(f"binlog of {source_id}: recorded gap from {end[0]}:{end[1]} to "
                         f"{start[0]}:{start[1]} ({g.reason}, detected {utc_iso(g.detected_at)})")
            continue
        if end == start:  # contiguous by position but split by a gap record elsewhere
            continue
        if end[0] == start[0]:
            key = layout.segment_index(source_id, end[0], end[1], start[1])
            what = f"missing segment {key}"
        else:
            key = layout.segment_index(source_id, end[0], end[1], 0).rsplit("-", 1)[0] + "-..."
            what = f"missing segment(s) from {end[0]}:{end[1]} to {start[0]}:{start[1]}"
        problems.append(Problem(
            "gap", key,
            f"binlog of {source_id} has a hole no gap record explains: {what} (after "
            f"{last.key}, commits up to {utc_iso(a.end_time() or None)})"))
    return problems, notes


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
        try:
            for d in catalog.read_rollup(info.key).get("segments", []):
                SegmentInfo.from_dict(d)
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


def _segments_cheaply(catalog: Catalog, source_id: str, report: VerifyReport,
                      parallel: int) -> list[SegmentInfo]:
    """The segments through the roll-ups (an incremental run); every entry read itself when that
    fails, so a damaged entry is still a problem naming it."""
    try:
        return catalog.segments(source_id)
    except (IntegrityError, KeyError, TypeError, ValueError):
        return _read_segments(catalog, source_id, report, parallel)


def verify_repository(store: ObjectStore, backup_ids: list[str] | None = None, *,
                      binlog: bool = True, parallel: int = 8,
                      progress: Progress | None = None, repair: bool = False,
                      everything: bool = True, full_every: float | None = None) -> VerifyReport:
    """Check the given backups (all when None) and, with binlog, every shipped segment and
    roll-up (repair: damaged roll-ups are rebuilt).

    Without everything (a whole-repository run only), objects an earlier run checked with the
    same checksum are not read again, unless the last full run is full_every seconds old or more;
    the record of what was checked is replaced at the end."""
    started = time.monotonic()
    bar = progress or NullProgress()
    task = bar.start("verifying")
    catalog = Catalog(store)
    report = VerifyReport(storage=store.describe())
    whole = backup_ids is None and binlog
    verified = read_verified(catalog) if whole else Verified()
    report.last_full_at = verified.full_at
    report.full = everything or not whole or not verified.full_at or (
        full_every is not None and time.time() - verified.full_at >= full_every)
    backups = _read_backups(catalog, backup_ids, report, parallel)
    items: list[tuple[str, StoredObject]] = []
    for b in backups:
        items += [(f"backup {b.id}", o) for o in b.objects]
        report.backups.append({"id": b.id, "kind": b.kind, "objects": len(b.objects),
                               "stored_bytes": b.stored_bytes, "point_time": utc_iso(b.point.time)})
    per_source: dict[str, tuple[list[SegmentInfo], list[GapInfo]]] = {}
    if binlog:
        for sid in catalog.sources():
            segs = (_read_segments if report.full else _segments_cheaply)(catalog, sid, report,
                                                                          parallel)
            gaps = catalog.gaps(sid)
            per_source[sid] = (segs, gaps)
            items += [(f"segment {s.key}", s.object) for s in segs]
    considered = items
    groups = segment_groups({sid: segs for sid, (segs, _) in per_source.items()})
    if not report.full:
        items = [(o, obj) for o, obj in items if not verified.has(obj, groups.get(obj.key))]
        report.skipped = len(considered) - len(items)
    bar.update(task, total=sum(o.size for _, o in items))
    checker = _Checker(store, parallel, lambda n: bar.advance(task, n))
    checked = checker.check_all(items)
    report.problems += checked
    report.objects, report.bytes = checker.objects, checker.bytes
    if whole:
        bad = {p.key for p in checked}
        broken = {groups[k][0] for k in bad if k in groups}  # a group is recorded whole or not
        whole_groups = {g: d for g, d in groups.values() if g not in broken}
        record = Verified({o.key: o.sha256 for _, o in considered if o.key not in bad
                           and groups.get(o.key, ("", ""))[0] not in whole_groups},
                          time.time() if report.full else verified.full_at, whole_groups)
        try:
            write_verified(catalog, record)
        except StorageError as exc:
            report.notes.append(f"the record of what was verified was not written: {exc.message} "
                                "(the next run reads everything again)")
    for sid, (segs, gaps) in per_source.items():
        probs, notes = coverage_problems(sid, segs, gaps)
        report.problems += probs
        report.notes += notes
        probs_r, notes_r = rollup_problems(catalog, sid, repair)
        report.problems += probs_r
        report.notes += notes_r
        report.sources.append({"source_id": sid, "segments": len(segs),
                               "stored_bytes": sum(s.object.size for s in segs),
                               "gaps_recorded": len(gaps), "holes": len(probs)})
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
