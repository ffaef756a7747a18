"""What each storage target of a mirrored repository lacks compared with the others.

`target_status` compares the targets' listings side by side, key by key, in key order (each read
by a thread of its own a few pages ahead), so memory holds a few pages per target whatever the
repository's size. What it lists:

- full (`repo targets`): every key of every target, one LIST page per 1,000 objects per target;
- quick (`list`, `status`, the monitor's collections): everything except the segments of the
  shipped binlog in full (backups, keyring, config, roll-ups, compaction and gap records, heads,
  restore and verify records: a few objects per backup and per binlog file), and the segments
  (index entries and data) only from the oldest of the targets' newest index entries on. Each
  target's newest entry comes from its head (one GET, one HEAD, one LIST page), so a target
  that is up to date costs a few requests per source, not a listing of its segments; one that
  lags is compared over everything after the point it reached. Segments missing further back
  (damage, a deletion by hand) are what the full comparison and `verify --storage <target>` find.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from backupkit.errors import BackupkitError
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.storage.base import ObjectInfo, ObjectStore
from backupkit.util.workers import Stalled, prefetched

Named = tuple[str, ObjectStore]


@dataclass(frozen=True, order=True)
class _Range:
    """Keys under prefix that sort after ``after`` (all of them when it is empty); a key of its
    own when single."""

    prefix: str
    after: str = ""
    single: bool = False

    def listing(self, store: ObjectStore) -> Iterator[ObjectInfo]:
        if self.single:
            info = store.stat(self.prefix)
            if info is not None:
                yield info
        elif self.after:
            yield from store.list_after(self.prefix, self.after)
        else:
            yield from store.list(self.prefix)


def children(store: ObjectStore, prefix: str) -> tuple[list[str], list[str]]:
    """(the folders right under prefix, the keys right under it): one request per entry."""
    folders: list[str] = []
    plain: list[str] = []
    after = ""
    while (first := store.first_after(prefix, after)) is not None:
        name, sep, _ = first.key[len(prefix):].partition("/")
        if sep:
            folders.append(name)
            after = f"{prefix}{name}0"  # "0" follows "/": after every key of that folder
        else:
            plain.append(first.key)
            after = first.key
    return folders, plain


def _newest_entry(store: ObjectStore, source_id: str) -> str:
    """The newest index entry a target holds for a source ("" when none): from its head when
    the head's entry is there (one GET, one HEAD, one LIST page from it on), else the last key
    of its newest binlog file's entries."""
    idx = layout.index_prefix(source_id)
    head = Catalog(store).head(source_id)
    if head is not None and store.stat(head.segment.key) is not None:
        best = head.segment.key
        for info in store.list_after(idx, best):
            best = info.key
        return best
    for f in reversed(store.folders(idx)):
        last = ""
        for info in store.list(f"{idx}{f}/"):
            last = info.key
        if last:
            return last
    return ""


def _data_after(index_key: str) -> str:
    """The data key of an index entry: data of that segment and later sort after it."""
    pos = layout.segment_of(index_key)
    src = layout.source_of(index_key)
    if pos is None or src is None:
        return ""
    return layout.segment_data(src, *pos)


def _within(calls: dict[str, Callable[[], Any]], deadline: float | None
            ) -> tuple[dict[str, Any], dict[str, str]]:
    """Each call in a daemon thread of its own: (name -> result, name -> error) once all are
    done or the deadline has passed (a call still running is an error then; its thread is left
    behind, so the answer never hangs)."""
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def one(name: str, fn: Callable[[], Any]) -> None:
        try:
            results[name] = fn()
        except BackupkitError as exc:
            errors[name] = exc.message

    threads = {n: threading.Thread(target=one, args=(n, fn), daemon=True, name=f"status-{n}")
               for n, fn in calls.items()}
    for th in threads.values():
        th.start()
    end = None if deadline is None else time.monotonic() + deadline
    for name, th in threads.items():
        th.join(None if end is None else max(0.0, end - time.monotonic()))
        if th.is_alive():
            errors[name] = f"did not answer within {deadline:g} s"
            results.pop(name, None)
    return results, errors


def _quick_ranges(targets: list[Named], deadline: float | None) -> tuple[list[_Range], dict[str, str]]:
    """What the quick comparison lists (module docstring), found on every target that answers."""
    def probe(store: ObjectStore) -> tuple[list[_Range], dict[str, str]]:
        out: list[_Range] = []
        newest: dict[str, str] = {}
        top, plain = children(store, "")
        out += [_Range(k, single=True) for k in plain]
        for name in top:
            folder = f"{name}/"
            if folder == layout.LEASES:
                continue
            if folder != layout.BINLOG:
                out.append(_Range(folder))
                continue
            sources, loose = children(store, folder)
            out += [_Range(k, single=True) for k in loose]
            for src in sources:
                sp = f"{folder}{src}/"
                subs, keys = children(store, sp)
                out += [_Range(k, single=True) for k in keys]
                out += [_Range(f"{sp}{d}/") for d in subs if d not in (layout.INDEX_DIR, layout.DATA_DIR)]
                if layout.INDEX_DIR in subs or layout.DATA_DIR in subs:
                    newest[sp] = _newest_entry(store, layout.dec(src))
        return out, newest

    found, errors = _within({n: (lambda s=s: probe(s)) for n, s in targets}, deadline)
    ranges: set[_Range] = set()
    reached: dict[str, list[str]] = {}
    for name, _ in targets:
        if name in found:
            got, newest = found[name]
            ranges.update(got)
            for sp, key in newest.items():
                reached.setdefault(sp, []).append(key)
    for name, _ in targets:
        if name in found:  # a target without a source's entries compares from its start
            for sp in reached:
                if sp not in found[name][1]:
                    reached[sp].append("")
    for sp, keys in reached.items():
        oldest = min(keys)
        ranges.add(_Range(f"{sp}{layout.INDEX_DIR}/", oldest))
        ranges.add(_Range(f"{sp}{layout.DATA_DIR}/", _data_after(oldest) if oldest else ""))
    return sorted(ranges), errors


def _batches(store: ObjectStore, ranges: list[_Range], size: int = 1000) -> Iterator[list[ObjectInfo]]:
    batch: list[ObjectInfo] = []
    for r in ranges:
        for info in r.listing(store):
            if layout.is_replicated(info.key):
                batch.append(info)
                if len(batch) >= size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def target_status(targets: list[Named], deadline: float | None = None, quick: bool = False
                  ) -> list[dict[str, Any]]:
    """For each target: reachable or not, and what it lacks compared with the union of all targets
    (with quick: over what the quick comparison lists; module docstring).

    deadline: seconds a target may go without answering (it is then reported unreachable; its
    threads are left behind, so the answer never hangs)."""
    errors: dict[str, str] = {}
    if quick:
        ranges, errors = _quick_ranges(targets, deadline)
    else:
        ranges = [_Range("")]
    names = [name for name, _ in targets]

    def stream(rank: int, name: str, store: ObjectStore) -> Iterator[tuple[str, int, ObjectInfo]]:
        if name in errors:
            return
        try:
            for batch in prefetched(_batches(store, ranges), depth=4, name=f"status-{name}",
                                    stall=deadline):
                for info in batch:
                    yield info.key, rank, info
        except BackupkitError as exc:
            errors[name] = exc.message
        except Stalled:
            errors[name] = f"did not answer within {deadline:g} s"

    counts = {name: {"objects": 0, "missing": 0, "bytes": 0, "backups": 0, "segments": 0,
                     "oldest": None} for name in names}
    group: list[tuple[int, ObjectInfo]] = []

    def settle() -> None:
        if not group:
            return
        ranks = {r for r, _ in group}
        first = min((info for _, info in group), key=lambda i: i.mtime)
        for rank, name in enumerate(names):
            c = counts[name]
            if rank in ranks:
                c["objects"] += 1
                continue
            c["missing"] += 1
            c["bytes"] += first.size
            c["backups"] += bool(layout.backup_id_of(first.key))
            c["segments"] += layout.is_segment_index(first.key)
            if c["oldest"] is None or first.mtime < c["oldest"]:
                c["oldest"] = first.mtime
        group.clear()

    last = None
    for key, rank, info in heapq.merge(*(stream(i, n, s) for i, (n, s) in enumerate(targets))):
        if key != last:
            settle()
            last = key
        group.append((rank, info))
    settle()
    return _rows(targets, counts, errors, quick)


def _rows(targets: Iterable[Named], counts: dict[str, dict[str, Any]], errors: dict[str, str],
          quick: bool) -> list[dict[str, Any]]:
    now = time.time()
    out = []
    for name, store in targets:
        row: dict[str, Any] = {"name": name, "url": store.describe(), "reachable": name not in errors,
                               "compared": "quick" if quick else "full"}
        if name in errors:
            row.update({"error": errors[name], "objects": None, "missing_objects": None,
                        "missing_bytes": None, "missing_backups": None, "missing_segments": None,
                        "behind_since": None, "lag_s": None})
        else:
            c = counts[name]
            oldest = c["oldest"]
            row.update({
                # quick: the objects compared (the segments only from the oldest newest on)
                "objects": c["objects"], "missing_objects": c["missing"], "missing_bytes": c["bytes"],
                "missing_backups": c["backups"], "missing_segments": c["segments"],
                "behind_since": oldest, "lag_s": round(now - oldest, 3) if oldest else 0.0,
            })
        out.append(row)
    return out
