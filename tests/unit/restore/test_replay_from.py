"""A restore plan reads stretches (the source summary) and only the segments of the file where
it stops; a plan from an older base than the newest one is the same as over the segments."""

from __future__ import annotations

from backupkit.mysql.gtid import BinlogPoint
from backupkit.repo.catalog import BackupManifest
from backupkit.restore.pitr import make_plan
from backupkit.restore.stoppoint import RestoreTarget
from backupkit.storage.local import LocalStore
from tests.support.scale import SOURCE, T0, CountingStore, build_repository, synthetic_segment


def _base(bid: str, kind: str, file: str, t: float) -> BackupManifest:
    from backupkit.mysql.server import SourceIdentity

    return BackupManifest(id=bid, kind=kind, source=SourceIdentity(SOURCE), point=BinlogPoint(file, 4, "", t),
                          started_at=t - 1, finished_at=t)


def test_latest_reads_no_roll_up_before_the_newest_base(tmp_path):
    store = CountingStore(LocalStore(tmp_path / "repo"))
    cat = build_repository(store, 45, per_file=10)  # files 1-4 finished, a base at file 5's start
    store.reset()
    plan = make_plan(cat, RestoreTarget("latest"))
    rollups = store.counts["open"]
    assert plan.base.id.endswith("0002")
    assert list(plan.iter_segments())[-1].key == synthetic_segment(44, 10).key
    store.reset()
    # from the first base over 4 finished files: their stretches from the summary, and only the
    # file where the replay stops read (the head again and its roll-up: 2 GETs)
    plan = make_plan(cat, RestoreTarget("time", time=T0 + 25))
    assert store.counts["open"] == rollups + 2
    assert [s.key for s in plan.iter_segments()] == [synthetic_segment(i, 10).key for i in range(27)]


def test_a_plan_the_newest_base_cannot_make_is_made_from_every_segment(tmp_path):
    store = CountingStore(LocalStore(tmp_path / "repo"))
    cat = build_repository(store, 45, per_file=10, recent_base=False)
    # the newest base before the target lies where no segment is: only the older one reaches it
    cat.commit_backup(_base("20231115T000000Z-snapshot-0003", "snapshot", "binlog.000009", T0 + 25))
    plan = make_plan(cat, RestoreTarget("time", time=T0 + 30))
    assert plan.base.id == "20231114T221319Z-snapshot-0001"
    assert next(plan.iter_segments()).key == synthetic_segment(0, 10).key
