"""A shipper commits while a command reads the repository: the watermark must still be placed.

The status object names a committed point. Read before the segments, that point is among the
listed segments; read after them, a shipper that committed in between names a point the listing
lacks, the watermark cannot be placed, and a quiet stretch already confirmed looks unreachable
(a false refusal, a false gap on the status page)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from backupkit.monitor.collect import read_repository
from backupkit.repo.catalog import Catalog
from backupkit.repo.watermark import ShipperStatus, write_status
from backupkit.restore.pitr import make_plan
from backupkit.restore.stoppoint import time_target
from backupkit.storage import open_store
from backupkit.storage.base import ObjectInfo
from backupkit.strategies.binlog.status import shipping_status
from tests.support.scale import SOURCE, T0, CountingStore, build_repository, synthetic_segment

N = 50  # segments: commits at T0 .. T0+49


class ShipperRacingStore(CountingStore):
    """Once the first listing of the source's index entries has been read, a shipper commits one
    more segment (at T0+100) and replaces its status to name it: as if it ran between the reads."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.raced = False

    def _race(self, listing: Iterator[ObjectInfo]) -> Iterator[ObjectInfo]:
        items = list(listing)
        if not self.raced:
            self.raced = True
            catalog = Catalog(self.inner)
            seg = dataclasses.replace(synthetic_segment(N, 1000), first_event_time=T0 + 100,
                                      last_event_time=T0 + 100, first_commit_time=T0 + 100,
                                      last_commit_time=T0 + 100, created_at=T0 + 100)
            catalog.commit_segment(seg)
            f, p = seg.next_point()
            write_status(catalog, ShipperStatus(SOURCE, confirmed_at=T0 + 110, file=f, pos=p,
                                                range_id="r1", updated_at=T0 + 110))
        yield from items

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._race(super().list(prefix)) if "/index/" in prefix else super().list(prefix)

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        listing = super().list_after(prefix, after)
        return self._race(listing) if "/index/" in prefix else listing


@pytest.fixture
def store(tmp_path):
    inner = open_store(f"file://{tmp_path / 'repo'}")
    build_repository(inner, N)
    last = synthetic_segment(N - 1, 1000)
    f, p = last.next_point()
    # quiet since T0+49, confirmed complete through T0+60
    write_status(Catalog(inner), ShipperStatus(SOURCE, confirmed_at=T0 + 60, file=f, pos=p,
                                               range_id="r1", updated_at=T0 + 60))
    return ShipperRacingStore(inner)


def test_restore_inside_the_confirmed_quiet_stretch_while_the_shipper_commits(store):
    plan = make_plan(Catalog(store), time_target(T0 + 55))
    assert plan.expected_end_time >= T0 + 55 and store.raced


def test_binlog_status_places_the_watermark_while_the_shipper_commits(store):
    out = shipping_status(Catalog(store), SOURCE)
    assert out["confirmed_through"] == T0 + 60 and store.raced


def test_the_status_page_shows_no_false_gap_while_the_shipper_commits(store):
    view = read_repository(Catalog(store), targets=False, now=T0 + 70)
    tl = next(s for s in view.sources if s.source_id == SOURCE)
    assert store.raced and len(tl.intervals) == 1 and tl.intervals[0][1] >= T0 + 60, tl.intervals
