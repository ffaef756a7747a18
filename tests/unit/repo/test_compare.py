"""The comparison of storage targets (repo/compare.py): quick (list, status, the monitor) finds
what a target lacks at the tip of each source and in everything but the segments, in requests
that do not grow with the segments; full (repo targets) finds every missing key."""

from __future__ import annotations

import pytest

from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.repo.compare import target_status
from backupkit.repo.sync import sync_stores
from backupkit.storage.local import LocalStore
from tests.support.scale import SOURCE, CountingStore, add_segment, build_repository, no_fsync

PER_FILE = 40


def _pair(tmp_path, n: int) -> tuple[LocalStore, LocalStore]:
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    with no_fsync():
        build_repository(a, n, per_file=PER_FILE, with_data=True)
    assert sync_stores([("a", a)], ("b", b)).complete
    return a, b


def _rows(a, b, quick: bool) -> dict[str, dict]:
    return {r["name"]: r for r in target_status([("a", a), ("b", b)], quick=quick)}


def _missing(rows) -> tuple:
    r = rows["b"]
    return r["missing_objects"], r["missing_segments"], r["missing_backups"]


def test_a_target_behind_at_the_tip_is_found_by_both(tmp_path) -> None:
    a, b = _pair(tmp_path, 170)
    with no_fsync():  # three more segments reach a only (b lagged), the head of a names them
        for i in range(170, 173):
            seg = add_segment(Catalog(a), i, PER_FILE, with_data=True)
        Catalog(a).write_head(seg, Catalog(a).head(SOURCE).rollups)
    quick, full = _rows(a, b, True), _rows(a, b, False)
    assert _missing(quick) == _missing(full) == (6, 3, 0)
    assert quick["b"]["behind_since"] == full["b"]["behind_since"] and quick["b"]["lag_s"] > 0
    assert quick["a"]["missing_objects"] == full["a"]["missing_objects"] == 0


def test_a_head_copied_ahead_of_its_entries_is_not_trusted(tmp_path) -> None:
    """A mirror copies a head to a lagging target, which lacks the entries it names."""
    a, b = _pair(tmp_path, 170)
    with no_fsync():
        for i in range(170, 172):
            seg = add_segment(Catalog(a), i, PER_FILE, with_data=True)
        Catalog(a).write_head(seg, Catalog(a).head(SOURCE).rollups)
    b.put(layout.binlog_head(SOURCE), a.get_bytes(layout.binlog_head(SOURCE)))
    assert _missing(_rows(a, b, True)) == _missing(_rows(a, b, False)) == (4, 2, 0)


def test_a_missing_backup_or_rollup_is_found_by_both(tmp_path) -> None:
    a, b = _pair(tmp_path, 170)
    manifest = next(k for k in (i.key for i in b.list("backups/")) if k.endswith("/manifest.json"))
    b.delete([manifest, layout.segment_rollup(SOURCE, "binlog.000002")])
    assert _missing(_rows(a, b, True)) == _missing(_rows(a, b, False)) == (2, 0, 1)


def test_an_old_hole_is_for_the_full_comparison(tmp_path) -> None:
    """Quick compares the segments from the targets' newest entries on: a segment deleted from
    an old file (damage, a hand) shows in the full comparison (repo targets) only."""
    a, b = _pair(tmp_path, 170)
    old = sorted(i.key for i in b.list(layout.index_prefix(SOURCE)))[5]
    b.delete([old])
    assert _missing(_rows(a, b, True)) == (0, 0, 0)
    assert _missing(_rows(a, b, False)) == (1, 1, 0)


@pytest.mark.parametrize("quick", [True, False])
def test_quick_requests_do_not_grow_with_the_segments(tmp_path, quick) -> None:
    counts = []
    for n in (170, 650):
        a, b = _pair(tmp_path / str(n), n)
        ca, cb = CountingStore(a), CountingStore(b)
        assert target_status([("a", ca), ("b", cb)], quick=quick)[1]["missing_objects"] == 0
        counts.append(ca.total() + cb.total())
    if quick:  # about 20 a target (a LIST page per 1,000 roll-ups or backup objects)
        assert counts[1] == counts[0] <= 50
    else:
        assert counts[1] > counts[0]
