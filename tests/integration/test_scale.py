"""The growth law of planning and listing: requests counted at two repository sizes.

The repository is written by backupkit's own writer (Catalog.commit_segment and roll-ups) with
synthetic one-second segments, 1,000 to a binlog file, the newest file still open (500 entries,
the first 256 of them in its partial roll-up). Timings live in bench/scale.py; here only request counts."""

from __future__ import annotations

from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from backupkit.strategies.binlog.upload import OPEN_ROLLUP_EVERY
from tests.support.scale import SOURCE, CountingStore, build_repository, measure, no_fsync, synthetic_segment

PER_FILE = 1000


def _measured(url: str, segments: int, per_file: int = PER_FILE) -> dict[str, dict[str, int]]:
    with no_fsync():
        store = CountingStore(open_store(url))
        build_repository(store, segments, per_file=per_file)
    last = synthetic_segment(segments - 1, per_file)
    assert Catalog(store).shipped_position(SOURCE) == last.next_point()  # from the head
    return measure(store, segments)


def _check_growth(small: dict, big: dict, n_small: int, n_big: int, per_file: int = PER_FILE) -> None:
    files = (n_big - n_small) // per_file
    # the resume point and watermark: one GET of the head, one HEAD, one LIST page, at any size
    assert small["shipped position"]["total"] == big["shipped position"]["total"] == 3
    for cmd in small:
        s, b = small[cmd], big[cmd]
        # GETs grow with finished binlog files (one roll-up each), never with segments
        assert b.get("open", 0) - s.get("open", 0) <= files + 1, (cmd, s, b)
        # the open file's entries are read one by one only since its last partial roll-up
        assert b.get("open", 0) <= OPEN_ROLLUP_EVERY + n_big // per_file + 3, (cmd, b)
        # LIST pages grow with keys (the remaining linear term: partitioned listing is planned,
        # docs/repository-format.md), and nothing else does
        assert b["total"] - b.get("list", 0) - b.get("open", 0) \
            == s["total"] - s.get("list", 0) - s.get("open", 0), (cmd, s, b)
        assert b.get("list", 0) <= s.get("list", 0) * (n_big / n_small) + 1, (cmd, s, b)


def test_planning_requests_grow_with_files_not_segments_local(tmp_path):
    small = _measured(f"file://{tmp_path / 'small'}", 1_500)
    big = _measured(f"file://{tmp_path / 'big'}", 10_500)
    _check_growth(small, big, 1_500, 10_500)


def test_planning_requests_grow_with_files_not_segments_s3(s3_url):
    # moto takes ~30 PUTs a second: smaller files, so that roll-ups still count
    small = _measured(s3_url + "-small", 150, per_file=100)
    big = _measured(s3_url + "-big", 650, per_file=100)
    _check_growth(small, big, 150, 650, per_file=100)
