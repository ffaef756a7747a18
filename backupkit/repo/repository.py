"""The repository as typed operations: what services use instead of object keys and raw stores.

A Repository wraps the opened store stack (repo/targets.py) and its Catalog (manifests). Every key
it touches comes from repo/layout.py; callers deal in backups, segments, gaps, restore records,
keys and leases. Pure planning (retention, the restore plan) takes what it returns; deleting is
split into the steps prune orders for crash safety (uncommit first, data after).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from backupkit.errors import IntegrityError, ObjectNotFound, StorageError
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, Catalog, GapInfo, SegmentInfo, new_backup_id
from backupkit.repo.codec import DEFAULT_LEVEL, READ_SIZE, StoredObject, iter_object, put_object
from backupkit.repo.coverage import Run, build_runs
from backupkit.repo.keyring import Keyring, rotate_key
from backupkit.repo.lease import Lease
from backupkit.repo.targets import RepositorySpec, open_repository
from backupkit.repo.watermark import read_status
from backupkit.storage.base import ObjectInfo, ObjectStore
from backupkit.storage.crypto import KeyEncryptionKey

log = logging.getLogger(__name__)


class Repository:
    """One backupkit repository: backups, binlog segments, gaps, restore records, keys, leases."""

    def __init__(self, store: ObjectStore, catalog: Catalog | None = None) -> None:
        self.store = store
        self.catalog = catalog or Catalog(store)

    @classmethod
    def open(cls, spec: RepositorySpec, create: bool = True) -> Repository:
        """The repository the spec describes: targets, mirrored if several, encrypted if configured."""
        return cls(open_repository(spec, create=create))

    def describe(self) -> str:
        return self.store.describe()

    def close(self) -> None:
        self.store.close()

    # -- the repository itself -------------------------------------------------------------
    def config(self) -> dict[str, Any] | None:
        """The repository's own record (id, format), or None before the first write."""
        return self.catalog.repo_config()

    def usage(self) -> dict[str, int]:
        """Objects and bytes in the repository, and how many backups and segments they hold."""
        totals = {"objects": 0, "bytes": 0, "backups": 0, "backup_bytes": 0, "segments": 0,
                  "segment_bytes": 0}
        for obj in self.store.list(""):
            totals["objects"] += 1
            totals["bytes"] += obj.size
            if layout.backup_id_of(obj.key):
                totals["backups"] += 1
            if layout.is_backup_key(obj.key):
                totals["backup_bytes"] += obj.size
            if layout.is_segment_index(obj.key):
                totals["segments"] += 1
            elif layout.is_binlog_key(obj.key):
                totals["segment_bytes"] += obj.size
        return totals

    def ensure(self) -> dict[str, Any]:
        """Create the repository's record on first write; returns it."""
        return self.catalog.ensure_repo()

    # -- backups -------------------------------------------------------------------------------
    def backups(self, kind: str | None = None, strict: bool = False) -> list[BackupManifest]:
        """Every committed backup, oldest consistent point first; an unreadable manifest is
        skipped with a warning, or raises with strict."""
        return self.catalog.backups(kind, strict=strict)

    def backup(self, backup_id: str) -> BackupManifest:
        """One committed backup; UsageError when there is none by that id."""
        return self.catalog.backup(backup_id)

    @staticmethod
    def new_backup_id(kind: str, at: float | None = None) -> str:
        return new_backup_id(kind, at)

    def commit_backup(self, manifest: BackupManifest) -> None:
        """Write the manifest last: from this moment the backup exists."""
        self.catalog.commit_backup(manifest)

    def backup_objects(self, backup_id: str) -> list[ObjectInfo]:
        """Everything stored for a backup (its data objects and its manifest)."""
        return list(self.store.list(layout.backup_prefix(backup_id)))

    def uncommit_backup(self, backup_id: str) -> None:
        """Delete a backup's manifest: it stops existing at once, as a unit (its data goes after)."""
        self.store.delete([layout.backup_manifest(backup_id)])

    @staticmethod
    def is_manifest(info: ObjectInfo) -> bool:
        return layout.backup_id_of(info.key) is not None

    # -- binlog segments -------------------------------------------------------------------------
    def sources(self) -> list[str]:
        """Every source with shipped binlog."""
        return self.catalog.sources()

    def segments(self, source_id: str) -> list[SegmentInfo]:
        """Every committed segment of a source, in binlog order."""
        return self.catalog.segments(source_id)

    def put_segment(self, source_id: str, binlog_file: str, start: int, end: int,
                    data: BinaryIO | Iterable[bytes] | bytes, level: int | None = DEFAULT_LEVEL,
                    threads: int = 0) -> StoredObject:
        """Store the data object of a segment (events [start, end) of binlog_file); commit it after."""
        return put_object(self.store, layout.segment_data(source_id, binlog_file, start, end), data,
                          level=level, threads=threads)

    def commit_segment(self, info: SegmentInfo) -> None:
        """Write a segment's index entry after its data object: from then on it exists."""
        self.catalog.commit_segment(info)

    def open_segment(self, seg: SegmentInfo, read_size: int = READ_SIZE) -> Iterator[bytes]:
        """The binlog bytes of a segment, decoded and verified (from another copy when one is bad)."""
        return iter_object(self.store, seg.object, read_size)

    def last_segment(self, source_id: str) -> SegmentInfo | None:
        return self.catalog.last_segment(source_id)

    def shipped_position(self, source_id: str) -> tuple[str, int] | None:
        """Where the newest committed segment ends: a shipper resumes here."""
        return self.catalog.shipped_position(source_id)

    def uncommit_segment(self, seg: SegmentInfo) -> None:
        """Delete a segment's index entry (its data object goes after)."""
        self.store.delete([seg.key])

    def forget_rollups(self, source_id: str, binlog_files: Iterable[str]) -> None:
        """Delete the roll-ups of these files (before their entries are edited: readers list them)."""
        self.catalog.forget_rollups(source_id, binlog_files)

    def roll_up(self, source_id: str) -> dict[str, list[str]]:
        """Bring the index roll-ups of a source up to date (a cache of its index entries)."""
        return self.catalog.roll_up(source_id)

    # -- gaps and coverage -------------------------------------------------------------------------
    def gaps(self, source_id: str) -> list[GapInfo]:
        return self.catalog.gaps(source_id)

    def record_gap(self, gap: GapInfo) -> None:
        """Record a stretch of binlog that was never shipped (reported, never papered over)."""
        self.catalog.record_gap(gap)

    def forget_gaps(self, gaps: Iterable[GapInfo]) -> int:
        """Delete gap records (prune: those before every kept segment); returns how many."""
        keys = [layout.gap_record(g.source_id, g.after_file, g.after_pos) for g in gaps]
        if keys:
            self.store.delete(keys)
        return len(keys)

    def coverage(self, source_id: str, segments: Iterable[SegmentInfo] | None = None,
                 gaps: Iterable[GapInfo] | None = None) -> list[Run]:
        """The unbroken runs of a source's shipped binlog (repo/coverage.py, the one definition)."""
        segs = list(segments) if segments is not None else self.segments(source_id)
        return build_runs(segs, list(gaps) if gaps is not None else self.gaps(source_id))

    def shipper_status(self, source_id: str):
        """The shipper's status object of a source (the confirmed-through watermark), or None."""
        return read_status(self.catalog, source_id)

    # -- restores ----------------------------------------------------------------------------------
    def record_restore(self, record: dict[str, Any]) -> str:
        """Record a measured restore (feeds the RTO of the loss report); returns its id."""
        return self.catalog.commit_restore_record(record)

    def restores(self) -> list[dict[str, Any]]:
        return self.catalog.restore_records()

    # -- keys and leases ---------------------------------------------------------------------------
    def keyring(self, keks: list[KeyEncryptionKey]) -> Keyring | None:
        """The data keys of an encrypted repository opened with keks, or None when it has none."""
        return Keyring.load(self.store, keks)

    def rotate_key(self, current: list[KeyEncryptionKey], new: KeyEncryptionKey, *,
                   retire_old: bool = False, new_data_key: bool = False) -> dict[str, Any]:
        """Re-wrap every data key with new (the store must be the one under the encryption layer)."""
        return rotate_key(self.store, current, new, retire_old=retire_old, new_data_key=new_data_key)

    def shipper_lease(self, source_id: str, lease_seconds: float = 15.0, holder: str | None = None,
                      **kw: Any) -> Lease:
        """The lease that lets one shipper at a time write a source."""
        return Lease(self.store, source_id, lease_seconds, holder, **kw)

    # -- maintenance -------------------------------------------------------------------------------
    def delete(self, keys: Iterable[str]) -> None:
        """Remove objects this repository named (data of uncommitted backups and segments, orphans)."""
        self.store.delete(keys)

    def size_of(self, key: str) -> int:
        info = self.store.stat(key)
        return info.size if info else 0

    def _compacted_pieces(self, keys: list[str]) -> tuple[set[str], set[str]]:
        """The data objects compaction records name (their pieces' data, kept for the grace), and
        the binlog folders of records that cannot be read (nothing of theirs is an orphan while
        in doubt)."""
        named: set[str] = set()
        doubt: set[str] = set()
        for key in keys:
            try:
                named |= {str(p["data"]) for p in self.catalog.read_manifest(key)["pieces"]}
            except ObjectNotFound:
                continue  # swept meanwhile
            except (StorageError, IntegrityError, KeyError, TypeError) as exc:
                log.warning("compaction record %s cannot be read (%s): no orphan of its source "
                            "is removed", key, exc)
                doubt.add(key.split(layout.COMPACTED_DIR + "/")[0])
        return named, doubt

    def orphans(self, older_than: float, removing_backups: Iterable[str] = (),
                removing_segments: Iterable[str] = ()) -> list[str]:
        """Data objects whose manifest or index entry does not exist, last written before older_than.

        Objects of backups and segments named in removing_* are left out (deleted as their data),
        and so is the data of small segments a compacted one replaced: their entries go at once,
        their data only after the grace period (a compaction record names it; compaction deletes
        it)."""
        removing_backups, removing_segments = set(removing_backups), set(removing_segments)
        present = set()
        candidates: dict[str, list[tuple[str, float]]] = defaultdict(list)
        records: list[str] = []
        for prefix in (layout.BACKUPS, layout.BINLOG):
            for info in self.store.list(prefix):
                if layout.is_commit_marker(info.key):
                    present.add(info.key)
                    continue
                if layout.is_compaction_record(info.key):
                    records.append(info.key)
                    continue
                marker = layout.commit_marker_of(info.key)
                if marker is not None:
                    candidates[marker].append((info.key, info.mtime))
        waiting, doubt = self._compacted_pieces(records)
        out: list[str] = []
        for marker, objs in candidates.items():
            if marker in present or any(k in waiting or k.startswith(tuple(doubt)) for k, _ in objs):
                continue
            bid = layout.backup_id_of(marker)
            if bid is not None and bid in removing_backups:
                continue  # removed with the backup's data
            if marker in removing_segments:
                continue
            # A backup still being written has recent objects: leave the whole group alone.
            if max(m for _, m in objs) >= older_than:
                continue
            out.extend(k for k, _ in objs)
        return sorted(out)
