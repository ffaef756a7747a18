"""Request counting and synthetic repositories for the scale test (tests/integration/test_scale.py)
and bench/scale.py: a repository written by backupkit's own writer, at any number of segments."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from backupkit.mysql.gtid import BinlogPoint
from backupkit.mysql.server import SourceIdentity
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, Catalog, SegmentInfo
from backupkit.repo.codec import StoredObject, put_object
from backupkit.repo.rollups import OpenFileRollups
from backupkit.storage.base import ObjectInfo, ObjectStore
from backupkit.util.streams import Chunks

#: What an S3 LIST request returns at most (list_objects_v2 pages at 1000 keys).
LIST_PAGE = 1000
SOURCE = "scale-src"
T0 = 1_700_000_000.0


class CountingStore(ObjectStore):
    """A store wrapper counting the requests a command makes: put, open (GET), stat (HEAD),
    list pages (one per LIST call plus one per further 1000 keys, as S3 pages), delete,
    put_if_absent and replace_if_match."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def total(self) -> int:
        return sum(self.counts.values())

    def put(self, key: str, data: BinaryIO | Chunks | bytes) -> ObjectInfo:
        self._count("put")
        return self.inner.put(key, data)

    def open(self, key: str) -> BinaryIO:
        self._count("open")
        return self.inner.open(key)

    def stat(self, key: str) -> ObjectInfo | None:
        self._count("stat")
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._pages(self.inner.list(prefix))

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        return self._pages(self.inner.list_after(prefix, after))

    def folders(self, prefix: str) -> list[str]:
        names = self.inner.folders(prefix)
        self._count("list", 1 + max(0, len(names) - 1) // LIST_PAGE)  # S3: 1000 a page
        return names

    def _pages(self, listing: Iterator[ObjectInfo]) -> Iterator[ObjectInfo]:
        self._count("list")
        for n, info in enumerate(listing, start=1):
            if n > LIST_PAGE and n % LIST_PAGE == 1:
                self._count("list")
            yield info

    def delete(self, keys: Iterable[str]) -> None:
        self._count("delete")
        self.inner.delete(keys)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._count("put_if_absent")
        return self.inner.put_if_absent(key, data)

    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        self._count("replace_if_match")
        return self.inner.replace_if_match(key, data, etag)

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


def synthetic_segment(i: int, per_file: int) -> SegmentInfo:
    """The i-th one-second segment of a source shipping per_file segments per binlog file."""
    f, k = divmod(i, per_file)
    file = f"binlog.{f + 1:06d}"
    start = 4 + k * 100
    last = k == per_file - 1
    t = T0 + i
    gtid = f"0-1-{i + 1}"
    obj = StoredObject(f"synthetic/{i}", 60, "0" * 64, 100)
    return SegmentInfo(source_id=SOURCE, binlog_file=file, start_pos=start, end_pos=start + 100,
                       object=obj, first_event_time=t, last_event_time=t, first_commit_time=t,
                       last_commit_time=t, gtid_first=gtid, gtid_last=gtid, gtid_state=gtid,
                       events=3, transactions=1, range_id="r1", server_id=1, created_at=t,
                       next_file=f"binlog.{f + 2:06d}" if last else "", file_closed=last)


def build_repository(store: ObjectStore, segments: int, per_file: int = 1000,
                     with_head: bool = True, with_data: bool = False, chunks: bool = True,
                     recent_base: bool = True, index_finished: bool = True) -> Catalog:
    """A repository with one snapshot at the start and `segments` committed one-second segments,
    written as the shipper writes them (strategies/binlog/upload.py): the open file's roll-up in
    chunks (repo/rollups.py, unless not chunks), every finished file rolled up, the head naming
    them (unless not with_head: a repository of an older backupkit), the head left naming the
    newest segment (index entries only unless with_data: the data objects are not needed to
    plan, list or report). With recent_base, a second snapshot at the start of the newest file (as
    a daily snapshot would be): restore --latest replays from there.

    Without index_finished, the segments of finished files get no index entry of their own, only
    their file's roll-up (bench/scale.py's 2.6M-segment catalog, built in minutes): the commands
    measured read the same objects either way (the head, the summary, the listing of the roll-ups,
    the open file), never a finished file's index entries."""
    catalog = Catalog(store)
    catalog.ensure_repo()
    src = SourceIdentity(SOURCE, version="10.11", server_id=1)
    catalog.commit_backup(BackupManifest(id="20231114T221319Z-snapshot-0001", kind="snapshot",
                                         source=src, point=BinlogPoint("binlog.000001", 4, "", T0 - 1),
                                         started_at=T0 - 2, finished_at=T0 - 1))
    open_file = OpenFileRollups(catalog, SOURCE)
    rolled: list[str] = []
    known: dict[str, SegmentInfo] = {}
    open_from = segments - 1 - (segments - 1) % per_file  # the first segment of the newest file
    for i in range(segments):
        if index_finished or i >= open_from:
            seg = add_segment(catalog, i, per_file, with_data)
        else:
            seg = synthetic_segment(i, per_file)
        known[seg.key] = seg
        if chunks and (index_finished or i >= open_from):
            open_file.add(seg)
        if seg.file_closed:
            catalog.roll_up_file(SOURCE, seg.binlog_file, known, keys=list(known), finished=True)
            known = {}
            rolled.append(seg.binlog_file)
            if with_head:
                catalog.write_head(seg, rolled)
            open_file.forget(seg.binlog_file)  # named by the head: its chunks go
    if with_head and segments:  # as the shipper leaves it after its last commit
        catalog.write_head(seg, rolled)
    if recent_base and segments > per_file:
        first = synthetic_segment(segments - 1 - (segments - 1) % per_file, per_file)
        at = first.first_commit_time - 0.5
        catalog.commit_backup(BackupManifest(
            id="20231115T000000Z-snapshot-0002", kind="snapshot", source=src,
            point=BinlogPoint(first.binlog_file, first.start_pos, "", at), started_at=at - 1, finished_at=at))
    return catalog


def add_segment(catalog: Catalog, i: int, per_file: int = 1000, with_data: bool = False
                ) -> SegmentInfo:
    """Commit the i-th synthetic segment (with a data object of a few bytes when with_data)."""
    seg = synthetic_segment(i, per_file)
    if with_data:
        seg.object = put_object(catalog.store, layout.segment_data(
            SOURCE, seg.binlog_file, seg.start_pos, seg.end_pos), [b"segment %d" % i])
    catalog.commit_segment(seg)
    return seg


class no_fsync:
    """Within it, os.fsync does nothing: building a big synthetic repository on the local store
    in seconds (durability is not what the scale test measures)."""

    def __enter__(self):
        import os  # local: patched only for the block
        self._os, self._fsync = os, os.fsync
        os.fsync = lambda fd: None
        return self

    def __exit__(self, *exc) -> None:
        self._os.fsync = self._fsync


def measure(store: CountingStore, segments: int, only: str | None = None) -> dict[str, dict[str, int]]:
    """Requests each planning and listing command makes on a repository of `segments` segments
    (in-process service calls, as the CLI makes them): command -> {request kind: count, "total":
    all requests, "seconds": its wall time (for bench/scale.py only; tests never assert times)}.
    only: that command alone (bench/scale.py runs each in its own process for its peak RSS)."""
    from backupkit.cli.listing import repository_listing  # local: tests/support stays light
    from backupkit.monitor.collect import read_repository
    from backupkit.repo.repository import Repository
    from backupkit.restore.loss import loss_report
    from backupkit.restore.pitr import make_plan
    from backupkit.restore.stoppoint import RestoreTarget
    from backupkit.strategies.binlog.status import shipping_status

    commands = {
        "list": lambda: repository_listing(Repository(store)),
        "binlog status": lambda: shipping_status(Catalog(store), SOURCE),
        "shipped position": lambda: Catalog(store).shipped_position(SOURCE),
        "restore --latest --dry-run": lambda: make_plan(Catalog(store), RestoreTarget("latest")),
        "restore --to-time --dry-run": lambda: make_plan(
            Catalog(store), RestoreTarget("time", time=T0 + segments // 2)),
        "report": lambda: loss_report(Catalog(store), at=T0 + segments + 5, count=False),
        "status page (monitor collect)": lambda: read_repository(Catalog(store), targets=False,
                                                                 now=T0 + segments + 5),
    }
    out = {}
    for name, run in commands.items():
        if only is not None and name != only:
            continue
        store.reset()
        t0 = time.perf_counter()
        run()
        out[name] = {**store.counts, "total": store.total(), "seconds": time.perf_counter() - t0}
    return out
