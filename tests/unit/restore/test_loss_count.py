"""count_losses over stretches (restore/loss.py): the same counts as over the segments, with only
the binlog files at a window's edge (or within the parse budget) read as segments, one at a time.

The binlog parse of a segment is replaced by a count from its index entry (the synthetic segments
have no data): what is compared is which segments are counted, from where, and how often;
tests/integration/test_report.py checks the real parse."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupkit.repo.catalog import Catalog
from backupkit.repo.stretches import FileMembers
from backupkit.restore import loss
from backupkit.restore.loss import (
    EXPAND_TRIES,
    NeedSegments,
    Window,
    build_loss_report,
    count_losses,
    with_segments,
)
from backupkit.storage.local import LocalStore
from tests.support.scale import SOURCE, T0, build_repository, no_fsync
from tests.unit.repo.test_stretches import SRC, _drawn, histories

PER_FILE = 100


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Catalog:
    with no_fsync():
        return build_repository(LocalStore(tmp_path_factory.mktemp("loss") / "repo"), 730,
                                per_file=PER_FILE)


@pytest.fixture(autouse=True)
def parse_from_index(monkeypatch) -> list[str]:
    """_count reads no bytes: each parsed segment adds its transaction (and one row) to the
    windows it touches by commit time; the keys parsed are recorded."""
    parsed: list[str] = []

    def fake(reader, s, wins, states) -> None:
        parsed.append(s.key)
        for w, state in zip(wins, states, strict=True):
            if state != "outside" and w.after_start(s.binlog_file, s.start_pos, s.last_commit_time) \
                    and s.last_commit_time <= w.end:
                w.transactions += s.transactions
                if w.rows is not None:
                    w.rows += s.transactions

    monkeypatch.setattr(loss, "_count", fake)
    return parsed


def _no_bytes(s) -> io.BytesIO:
    return io.BytesIO()


def _windows(at: float, starts: list[float]) -> list[Window]:
    return [Window(at, start_time=t) for t in starts]


def _view(wins: list[Window]) -> list[tuple]:
    return [(w.transactions, w.rows, w.counted_through, w.complete) for w in wins]


class Reads(FileMembers):
    """FileMembers counting the binlog files it reads."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(catalog.file_segments)
        self.files: list[str] = []

    def __call__(self, st):
        if (st.source_id, st.binlog_file) != self._file:
            self.files.append(st.binlog_file)
        return super().__call__(st)


@pytest.mark.parametrize("budget", [0, 3_000, 10**9])
@pytest.mark.parametrize("starts", [[T0 + 150.5], [T0 + 10.5, T0 + 420.5], [T0 + 99.5, T0 + 700.5]])
def test_stretches_count_as_segments_do(catalog: Catalog, parse_from_index: list[str], budget: int,
                                        starts: list[float]) -> None:
    at = T0 + 650.5  # inside the newest file but one: commits after it are not lost at `at`
    want = _windows(at, starts)
    count_losses(catalog.store, catalog.segments(SOURCE), want, budget, read=_no_bytes)
    parsed_segments = sorted(parse_from_index)
    parse_from_index.clear()

    got = _windows(at, starts)
    reads = Reads(Catalog(catalog.store))
    count_losses(catalog.store, catalog.stretches(SOURCE), got, budget, read=_no_bytes,
                 expand=reads)
    assert _view(got) == _view(want)
    assert len(parse_from_index) == len(set(parse_from_index))  # none parsed twice
    if budget in (0, 10**9):  # the edges only, or everything: the same segments parsed
        assert sorted(parse_from_index) == parsed_segments
    assert len(reads.files) == len(set(reads.files))  # one file's segments at a time, once each
    if budget == 0:  # only the files holding a window's edge are read as segments
        edges = {f"binlog.{int(t - T0) // PER_FILE + 1:06d}" for t in [*starts, at] if t < T0 + 730}
        assert set(reads.files) <= edges
        assert got[0].rows is None  # past the budget rows are unknown


def test_a_file_gone_since_is_counted_from_the_stretch(catalog: Catalog) -> None:
    """A stretch whose segments cannot be read (pruned meanwhile): its transactions count from the
    stretch, rows become unknown and the count is not complete, never an error."""
    at = T0 + 650.5
    got = _windows(at, [T0 + 150.5])
    count_losses(catalog.store, catalog.stretches(SOURCE), got, 0, read=_no_bytes,
                 expand=lambda st: None)
    want = _windows(at, [T0 + 150.5])
    count_losses(catalog.store, catalog.segments(SOURCE), want, 0, read=_no_bytes)
    assert got[0].rows is None and not got[0].complete
    # the edge stretches are not counted at all: at most what the segments count
    assert 0 < got[0].transactions <= want[0].transactions


# -- a disaster inside stretches: only their segments are read (loss_report's retries) ----------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.lists(st.integers(0, 10_000), min_size=1, max_size=4), st.integers(0, 10_000),
       st.integers(0, 2**31), st.integers(0, 10_000))
def test_a_report_inside_stretches_reads_only_their_segments(h, picks, mark, seed, when) -> None:
    segs, bases, (f, p), stretches = _drawn(h, picks, mark, seed)

    class Mark:
        point, confirmed_at, updated_at = (f, p), 3e6, 0.0

    times = sorted({t for s in segs for t in (s.created_at, s.last_commit_time)} | {3e6})
    at = times[when % len(times)] + (0.5 if when % 3 == 0 else 0.0)
    want = build_loss_report(bases, {SRC: segs}, {SRC: h.gaps}, [], at, SRC, {SRC: Mark()})
    items, read = stretches, []

    def read_file(source_id: str, binlog_file: str) -> list:
        read.append(binlog_file)
        return [s for s in segs if s.binlog_file == binlog_file]

    for _ in range(EXPAND_TRIES):
        try:
            got = build_loss_report(bases, {SRC: items}, {SRC: h.gaps}, [], at, SRC, {SRC: Mark()})
            break
        except NeedSegments as need:
            assert need.stretches and all(x in items for x in need.stretches)
            items = with_segments(items, need.stretches, read_file)
    else:
        pytest.fail(f"still NeedSegments after {EXPAND_TRIES} rounds")
    assert got.to_dict() == want.to_dict()
