"""One coverage builder: every view of restorable history agrees with a model of the truth.

Hypothesis draws a shipping history (runs of contiguous segments across rotations, STOPs and
crashes, separated by holes, recorded gaps, and new ranges), commits it to a real local
repository in random order with duplicates, and checks that ``build_runs``, ``list``,
``binlog status``, the restore planner, the loss report and ``verify`` all see exactly the runs
and the restorable intervals of the model. ``test_a_mutated_builder_is_caught`` shows the
property fails when the builder ignores recorded gaps.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from backupkit.cli.listing import repository_listing
from backupkit.operations.verify import coverage_problems
from backupkit.repo import coverage, layout
from backupkit.repo.catalog import BackupManifest, BinlogPoint, Catalog, GapInfo, SegmentInfo, SourceIdentity
from backupkit.repo.codec import StoredObject
from backupkit.repo.repository import Repository
from backupkit.restore.loss import build_loss_report
from backupkit.restore.plan import Planner
from backupkit.storage.local import LocalStore
from backupkit.strategies.binlog import shipping_status

SRC = "src-1"


def _file(n: int) -> str:
    return f"binlog.{n:06d}"


@dataclass
class Model:
    """What really happened: the runs as lists of segments, the gaps, the bases."""

    runs: list[list[SegmentInfo]] = field(default_factory=list)
    gaps: list[GapInfo] = field(default_factory=list)
    bases: list[BackupManifest] = field(default_factory=list)
    recorded: list[bool] = field(default_factory=list)  # per boundary: a recorded gap

    def spans(self) -> list[tuple[float, float]]:
        """Each base's reachable span: from its time to the newest commit after it in its run."""
        out = []
        for b in self.bases:
            end = b.point.time
            for run in self.runs:
                idx = next((i for i, s in enumerate(run)
                            if (s.binlog_file, s.start_pos) == (b.point.file, b.point.pos)), None)
                if idx is not None:
                    end = max([end] + [s.last_commit_time for s in run[idx:] if s.transactions])
            out.append((b.point.time, end))
        return out

    def intervals(self) -> list[tuple[float, float]]:
        merged: list[list[float]] = []
        for a, z in sorted(self.spans()):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], z)
            else:
                merged.append([a, z])
        return [(a, z) for a, z in merged]


def _seg(file: str, start: int, end: int, t: float, txns: int, range_id: str,
         next_file: str = "", closed: bool = False) -> SegmentInfo:
    obj = StoredObject(layout.segment_data(SRC, file, start, end), end - start, "0" * 64, end - start)
    return SegmentInfo(SRC, file, start, end, obj,
                       first_event_time=t, last_event_time=t,
                       first_commit_time=t if txns else 0.0, last_commit_time=t if txns else 0.0,
                       transactions=txns, events=max(txns, 1) * 3, next_file=next_file,
                       file_closed=closed or bool(next_file), range_id=range_id)


@st.composite
def histories(draw) -> Model:
    m = Model()
    fileno, pos, t, rid = 1, 4, 1_000_000.0, 0
    for r in range(draw(st.integers(1, 4))):
        if r:  # the break between run r-1 and run r
            kind = draw(st.sampled_from(["hole", "gap", "gap_at_file_start", "new_range"]))
            prev = m.runs[-1][-1]
            after = (prev.binlog_file, prev.end_pos)
            if kind == "hole":  # an unexplained hole in the same file
                pos += draw(st.integers(1, 500))
            elif kind == "gap":  # shipper stopped, binlog purged, resumed later
                fileno += draw(st.integers(0, 2))
                pos = 4 if prev.binlog_file != _file(fileno) else pos + draw(st.integers(1, 500))
                rid += 1
            elif kind == "gap_at_file_start":  # positions would join by the pos-4 rule
                if prev.next_file:
                    pos += draw(st.integers(1, 500))
                else:
                    fileno, pos = fileno + 1, 4
            else:  # a new range at the next file's start, nothing recorded
                if prev.next_file:
                    pos += draw(st.integers(1, 500))
                else:
                    fileno, pos = fileno + 1, 4
                rid += 1
            recorded = kind in ("gap", "gap_at_file_start")
            m.recorded.append(recorded)
            if recorded:
                m.gaps.append(GapInfo(SRC, after[0], after[1], _file(fileno), pos, t, "purged",
                                      last_time_before=prev.last_commit_time))
            t += draw(st.integers(1, 30))
        run: list[SegmentInfo] = []
        for _ in range(draw(st.integers(1, 6))):
            length = draw(st.integers(10, 400))
            txns = draw(st.sampled_from([0, 1, 1, 3]))
            end_kind = draw(st.sampled_from(["more", "more", "rotate", "stop"]))
            if end_kind == "rotate":
                s = _seg(_file(fileno), pos, pos + length, t, txns, f"r{rid}", next_file=_file(fileno + 1))
            else:
                s = _seg(_file(fileno), pos, pos + length, t, txns, f"r{rid}", closed=end_kind == "stop")
            run.append(s)
            if end_kind in ("rotate", "stop"):
                fileno, pos = fileno + 1, 4
            else:
                pos += length
            t += draw(st.integers(0, 5))
        m.runs.append(run)
    # bases at segment starts (their consistent point is where replay begins)
    every = [s for run in m.runs for s in run]
    chosen = draw(st.lists(st.sampled_from(every), min_size=1, max_size=3, unique_by=lambda s: s.key))
    for i, s in enumerate(chosen):
        base_time = s.first_commit_time - 1 if s.transactions else s.first_event_time
        m.bases.append(BackupManifest(f"b{i}", "snapshot", SourceIdentity(SRC),
                                      BinlogPoint(s.binlog_file, s.start_pos, "", base_time),
                                      base_time - 1, base_time))
    return m


def _commit(m: Model, root: Path, rnd: random.Random) -> Catalog:
    cat = Catalog(LocalStore(root))
    segs = [s for run in m.runs for s in run]
    for s in rnd.sample(segs, len(segs)):
        cat.commit_segment(s)
    for g in m.gaps:
        cat.record_gap(g)
    return cat


def _expected(m: Model) -> list[tuple[tuple[str, int], tuple[str, int], int]]:
    return [((r[0].binlog_file, r[0].start_pos), r[-1].next_point(), len(r)) for r in m.runs]


def _check(m: Model, seed: int) -> None:
    expected = _expected(m)
    rnd = random.Random(seed)
    segs = [s for run in m.runs for s in run]
    shuffled = rnd.sample(segs, len(segs)) + [s for s in segs if rnd.random() < 0.3]  # duplicates

    runs = coverage.build_runs(shuffled, m.gaps)
    assert [(r.start, r.end, r.count) for r in runs] == expected

    with tempfile.TemporaryDirectory() as tmp:
        cat = _commit(m, Path(tmp), rnd)
        for b in m.bases:
            cat.commit_backup(b)
        listed = repository_listing(Repository(cat.store, cat))["binlog_coverage"]
        assert [(c["start"], c["end"], c["segments"]) for c in listed] == \
            [(f"{a[0]}:{a[1]}", f"{z[0]}:{z[1]}", n) for a, z, n in expected]
        status = shipping_status(cat, SRC)
        assert [(r["start"], r["end"], r["segments"]) for r in status["ranges"]] == \
            [(f"{a[0]}:{a[1]}", f"{z[0]}:{z[1]}", n) for a, z, n in expected]

    planner = Planner(m.bases, {SRC: shuffled}, {SRC: m.gaps}, SRC)
    assert [(r.start, r.end, r.count) for r in planner.runs] == expected
    assert planner.intervals() == m.intervals()

    report = build_loss_report(m.bases, {SRC: shuffled}, {SRC: m.gaps}, [], at=time.time() + 60,
                               source_id=SRC)
    binlog = next(s for s in report.strategies if s.strategy == "binlog")
    assert binlog.recovery_point == max(z for _, z in m.intervals())

    problems, notes = coverage_problems(SRC, sorted(segs, key=lambda s: (s.binlog_file, s.start_pos)), m.gaps)
    assert len(notes) == sum(m.recorded)
    assert len(problems) == len(m.recorded) - sum(m.recorded)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(0, 2**31))
def test_every_view_agrees_with_the_model(m: Model, seed: int) -> None:
    _check(m, seed)


def test_a_mutated_builder_is_caught(monkeypatch) -> None:
    """If the builder ignored recorded gaps, the property would fail (here: on a gap that the
    pos-4 rule would otherwise join)."""
    monkeypatch.setattr(coverage, "gap_between", lambda gaps, prev, nxt: None)
    failed = False

    @settings(max_examples=200, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.too_slow])  # no shrinking: any failure will do
    @given(histories(), st.integers(0, 2**31))
    def prop(m: Model, seed: int) -> None:
        _check(m, seed)

    try:
        prop()
    except AssertionError:
        failed = True
    assert failed, "a builder that ignores recorded gaps passed the coverage property"
