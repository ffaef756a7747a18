"""repo sync and the comparison of targets work one part of the key space at a time (a backup,
one binlog file of a source, the rest): every key is in exactly one part, a marker's data is in
its part, and a sync of a repository of many files never holds more than one part's listing."""

from __future__ import annotations

import pytest

from backupkit.repo import layout
from backupkit.repo import sync as sync_mod
from backupkit.repo.catalog import encode_manifest
from backupkit.repo.compare import target_status
from backupkit.repo.sync import _parts, sync_stores
from backupkit.storage.local import LocalStore
from tests.support.scale import SOURCE, build_repository, no_fsync

PER_FILE = 40


def _repo(root, n: int = 170) -> LocalStore:
    store = LocalStore(root)
    with no_fsync():
        build_repository(store, n, per_file=PER_FILE, with_data=True)
    src = layout.binlog_prefix(SOURCE)
    for key in (layout.gap_record(SOURCE, "binlog.000002", 4),
                layout.compaction_record(SOURCE, "binlog.000001", 4, 904),
                layout.restore_record("r1"), layout.verified_record(), layout.shipper_status(SOURCE),
                layout.shipper_lease(SOURCE), f"{src}binlog.000001/000000000004-000000000104.binlog.zst",
                f"{src}oldfile.000009/000000000004-000000000104.json", "backups/loose.json"):
        store.put(key, encode_manifest({"type": "test"}))  # markers are checked as they are copied
    return store


def _all(store) -> set[str]:
    return {i.key for i in store.list("") if layout.is_replicated(i.key)}


def test_every_key_is_in_exactly_one_part(tmp_path) -> None:
    store = _repo(tmp_path / "a")
    parts = _parts([store])
    seen: dict[str, str] = {}
    for p in parts:
        for key in p.listing(store):
            assert key not in seen, f"{key} in {seen.get(key)} and {p.name}"
            seen[key] = p.name
    assert set(seen) == _all(store)
    assert layout.shipper_lease(SOURCE) not in seen  # a lease lives on one target only
    # a marker and the data it names (format 2, and format-1 data a migration left) share a part
    for key, part in seen.items():
        marker = layout.commit_marker_of(key)
        if marker is not None and marker in seen:
            assert seen[marker] == part, key
    files = [p for p in parts if p.name.startswith("binlog ")]
    assert len(files) == 5 and len([p for p in parts if p.name.startswith("backup ")]) == 2


def test_a_sync_holds_one_part_at_a_time_and_copies_everything(tmp_path, monkeypatch) -> None:
    a, b = _repo(tmp_path / "a"), LocalStore(tmp_path / "b")
    biggest = [0]
    real = sync_mod._Part.listing

    def counted(self, store):
        got = real(self, store)
        biggest[0] = max(biggest[0], len(got))
        return got

    monkeypatch.setattr(sync_mod._Part, "listing", counted)
    res = sync_stores([("a", a)], ("b", b))
    assert res.complete and not res.failed and not res.held_back
    assert _all(b) == _all(a)
    assert len(_all(a)) > 4 * biggest[0] and biggest[0] <= 2 * PER_FILE + 2  # one file: its data and entries
    assert sync_stores([("a", a)], ("b", b), dry_run=True).missing == 0


@pytest.mark.parametrize("lost", ["index", "data", "manifest"])
def test_the_comparison_counts_what_a_target_lacks(tmp_path, lost) -> None:
    a = _repo(tmp_path / "a")
    b = LocalStore(tmp_path / "b")
    assert sync_stores([("a", a)], ("b", b)).complete
    keys = sorted(_all(b))
    gone = {"index": [k for k in keys if layout.is_segment_index(k)][50:53],
            "data": [k for k in keys if k.endswith(".binlog.zst")][7:9],
            "manifest": [k for k in keys if k.endswith("/manifest.json")][:1]}[lost]
    b.delete(gone)
    rows = {r["name"]: r for r in target_status([("a", a), ("b", b)])}
    assert rows["a"]["missing_objects"] == 0 and rows["a"]["objects"] == len(keys)
    assert rows["b"]["missing_objects"] == len(gone) and rows["b"]["objects"] == len(keys) - len(gone)
    assert rows["b"]["missing_segments"] == (len(gone) if lost == "index" else 0)
    assert rows["b"]["missing_backups"] == (len(gone) if lost == "manifest" else 0)
    # a sync brings them back, markers after their data
    res = sync_stores([("a", a)], ("b", b))
    assert res.complete and res.copied == len(gone) and _all(b) == _all(a)


def test_a_target_that_stops_answering_is_unreachable_not_a_hang(tmp_path) -> None:
    """A frozen target (its listing blocks) is reported unreachable after the deadline, and the
    others are compared as usual."""
    import threading
    import time

    a = _repo(tmp_path / "a", 50)
    frozen = LocalStore(tmp_path / "f")
    release = threading.Event()

    def blocked(prefix=""):
        release.wait(30)
        yield from ()

    frozen.list = blocked  # type: ignore[method-assign]
    t0 = time.monotonic()
    try:
        rows = {r["name"]: r for r in target_status([("a", a), ("f", frozen)], deadline=0.5)}
    finally:
        release.set()
    assert time.monotonic() - t0 < 10
    assert rows["a"]["reachable"] and rows["a"]["missing_objects"] == 0
    assert not rows["f"]["reachable"] and "did not answer within 0.5 s" in rows["f"]["error"]
