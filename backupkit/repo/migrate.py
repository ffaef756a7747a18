"""`backupkit repo migrate`: a format-1 repository to format 2 (docs/repository-format.md).

Format 2 keeps the binlog index apart from the data (binlog/<src>/index/<file>/...). The index
entries are copied byte for byte under the new keys (their own checksum is unchanged; their data
objects stay where they are and are still named by the entries), then the old entries are
removed, and the repository config saying format 2 is written last. A crash at any step leaves a
repository the next run finishes; every step is idempotent."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from backupkit.errors import IntegrityError, StorageError
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, SegmentInfo, decode_manifest, encode_manifest
from backupkit.storage.base import ObjectStore


@dataclass
class MigrateResult:
    """What a migration found and did."""

    from_format: int | None
    to_format: int = layout.FORMAT_VERSION
    sources: list[str] = field(default_factory=list)
    entries: int = 0  # format-1 index entries found
    copied: int = 0  # written under their format-2 key (others were there already)
    removed: int = 0  # format-1 index entries deleted after their copy
    dry_run: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def migrate_repository(store: ObjectStore, *, dry_run: bool = False,
                      parallel: int = 8) -> MigrateResult:
    """Bring the repository in store to format 2. Stop the shippers first: a format-1 shipper
    would go on writing format-1 keys (a format-2 one refuses to start until this has run)."""
    started = time.monotonic()
    catalog = Catalog(store, parallel=parallel)
    cfg = catalog.repo_config()
    result = MigrateResult(from_format=int(cfg.get("format") or 1) if cfg else None, dry_run=dry_run)
    if cfg is None:
        return result  # empty: created as format 2 on the first write
    for sid in catalog.sources():
        legacy = [i.key for i in store.list(layout.binlog_prefix(sid))
                  if (leg := layout.legacy_segment_of(i.key)) is not None and leg[4] == "index"]
        if not legacy:
            continue
        result.sources.append(sid)
        result.entries += len(legacy)
        if dry_run:
            continue
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            result.copied += sum(pool.map(_copy_entry, [store] * len(legacy), [sid] * len(legacy), legacy))
        store.delete(legacy)  # every copy is written: the old entries go
        result.removed += len(legacy)
    if not dry_run and result.from_format is not None and result.from_format < layout.FORMAT_VERSION:
        store.put(layout.REPO_CONFIG, encode_manifest({**cfg, "format": layout.FORMAT_VERSION,
                                                       "migrated_at": time.time()}))
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _copy_entry(store: ObjectStore, source_id: str, key: str) -> int:
    """Write one format-1 entry under its format-2 key (the same bytes); 1 when written, 0 when
    the copy was there already (an earlier run); IntegrityError when the entry is damaged or does
    not belong at key."""
    data = store.get_bytes(key)
    seg = SegmentInfo.from_dict(decode_manifest(key, data))
    src, binlog_file, start, end, _ = layout.legacy_segment_of(key) or ("", "", 0, 0, "")
    named = (src, binlog_file, start, end)
    if (seg.source_id, seg.binlog_file, seg.start_pos, seg.end_pos) != named or src != source_id:
        raise IntegrityError(f"index entry {key!r} names {seg.source_id}:{seg.binlog_file}:"
                             f"{seg.start_pos}-{seg.end_pos}, not the segment its key names",
                             "nothing was removed; move the entry aside and run "
                             "'backupkit repo migrate' again")
    if store.put_if_absent(seg.key, data):
        return 1
    if store.get_bytes(seg.key) != data:
        raise StorageError(f"{seg.key} exists and differs from the format-1 entry {key}",
                           "nothing was removed; compare the two entries and keep the right one")
    return 0
