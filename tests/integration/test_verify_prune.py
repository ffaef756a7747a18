"""prune on a real repository: three snapshots of a private mariadbd with binlog shipped between.

After every prune the repository still verifies (no hole, no damaged object) and every moment
from the oldest kept base to the newest shipped commit still has a restore plan.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from backupkit.mysql.sandbox import Sandbox
from backupkit.operations.prune import prune
from backupkit.operations.retention import RetentionRules
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, SegmentInfo
from backupkit.restore.plan import Planner
from backupkit.restore.stoppoint import time_target
from backupkit.storage import open_store
from backupkit.storage.local import LocalStore
from tests.support import run_cli


def _snapshot_and_ship(sb: Sandbox, url: str, n: int, env_extra: dict | None = None) -> None:
    env = {"BACKUPKIT_SOURCE": sb.url, "BACKUPKIT_STORAGE": url, **(env_extra or {})}
    for i in range(n):
        r = run_cli("snapshot", "--json", env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        for j in range(2):
            sb.sql(f"UPDATE shop.t SET v = v + 1 WHERE id % 2 = {j}")
            r = run_cli("binlog", "ship", "--once", "--json", env=env, timeout=120)
            assert r.returncode == 0, r.stderr
        if i == 0:
            sb.sql("FLUSH BINARY LOGS")  # the first file is finished: the shipper rolls it up
        if i < n - 1:
            time.sleep(1.2)  # bases a second or more apart


@pytest.fixture(scope="module")
def server():
    sb = Sandbox(name="prune").start()
    sb.sql("CREATE DATABASE shop")
    sb.sql("CREATE TABLE shop.t (id INT PRIMARY KEY, v INT)")
    sb.sql("INSERT INTO shop.t SELECT seq, 0 FROM seq_1_to_500", database="shop")
    try:
        yield sb
    finally:
        sb.destroy()


@pytest.fixture(scope="module")
def golden(server, tmp_path_factory):
    repo = tmp_path_factory.mktemp("golden") / "repo"
    _snapshot_and_ship(server, f"file://{repo}", 3)
    return repo


@pytest.fixture
def repo(golden, tmp_path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(golden, dst)
    return dst


def _state(repo: Path) -> tuple[list, dict, list[str]]:
    cat = Catalog(open_store(f"file://{repo}"))
    backups = cat.backups()
    segs = {sid: cat.segments(sid) for sid in cat.sources()}
    keys = sorted(i.key for i in cat.store.list(""))
    return backups, segs, keys


def _restorable_from_oldest_to_newest(repo: Path) -> None:
    backups, segs, _ = _state(repo)
    (sid,) = segs
    planner = Planner(backups, segs, Catalog(open_store(f"file://{repo}")).gaps(sid), source_id=sid)
    lo = backups[0].point.time
    hi = max(s.last_commit_time for s in segs[sid])
    t = lo
    while t <= hi:
        planner.plan(time_target(t))  # raises PlanError if any second is unreachable
        t += 0.25


def test_dry_run_prints_what_goes_and_why_and_changes_nothing(repo):
    before = _state(repo)[2]
    r = run_cli("prune", "--keep-last", "1", "--dry-run", "--storage", f"file://{repo}")
    assert r.returncode == 0, r.stderr
    assert _state(repo)[2] == before
    backups = _state(repo)[0]
    for b in backups[:2]:
        assert f"would remove backup {b.id}" in r.stdout
        assert "kept by no rule (keep_last=1)" in r.stdout
    assert f"keep backup {backups[2].id}" in r.stdout and "keep_last (1 of 1)" in r.stdout
    assert "binlog segment(s)" in r.stdout and f"ends before kept base {backups[2].id}" in r.stdout


def test_prune_without_force_only_shows_and_removes_nothing(repo):
    before = sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_file())
    r = run_cli("prune", "--keep-last", "1", "--json", "--storage", f"file://{repo}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dry_run"] is True and out["removed_backups"]
    assert "nothing is removed without --force" in r.stderr
    assert sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_file()) == before


def test_keep_last_removes_old_bases_and_their_binlog_and_the_rest_verifies(repo):
    backups, segs, before = _state(repo)
    assert [layout.rollup_file_of(k) for k in before if layout.rollup_file_of(k)] == ["binlog.000001"]
    newest = backups[-1]
    r = run_cli("prune", "--keep-last", "1", "--force", "--json", "--storage", f"file://{repo}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [b["id"] for b in out["removed_backups"]] == [b.id for b in backups[:2]]
    after_b, after_s, keys = _state(repo)
    assert [b.id for b in after_b] == [newest.id]
    for b in backups[:2]:
        assert not any(k.startswith(layout.backup_prefix(b.id)) for k in keys), "data went too"
    (sid,) = after_s
    p = (newest.point.file, newest.point.pos)
    # Only what replays from the kept base remains (plus the segment that locates it).
    assert all((s.binlog_file, s.end_pos) >= p for s in after_s[sid])
    assert len(after_s[sid]) < len(segs[sid])
    assert out["freed_bytes"] > 0 and out["deleted_objects"] >= 2 * 2
    v = run_cli("verify", "--all", "--storage", f"file://{repo}")
    assert v.returncode == 0, v.stderr + v.stdout
    _restorable_from_oldest_to_newest(repo)
    # roll-ups: the shipper wrote one for the finished first file; prune keeps each one equal to
    # the index entries left of its file and deletes those of files pruned whole
    cat = Catalog(LocalStore(repo))
    for k in (k for k in keys if layout.rollup_file_of(k)):
        listed = {i.key for i in cat.store.list(layout.segment_file_prefix(sid, layout.rollup_file_of(k)))
                  if layout.is_segment_index(i.key)}
        assert listed and {SegmentInfo.from_dict(d).key for d in cat._read_rollup(k)["segments"]} == listed


def test_recovery_window_keeps_the_base_before_its_start(repo):
    backups, _, _ = _state(repo)
    # A window that starts between the second and the third base.
    start = (backups[1].point.time + backups[2].point.time) / 2
    seconds = time.time() - start
    r = run_cli("prune", "--recovery-window", f"{seconds:.3f}s", "--force", "--json",
                "--storage", f"file://{repo}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [b["id"] for b in out["removed_backups"]] == [backups[0].id]
    kept = {b["id"]: b["reasons"] for b in out["kept_backups"]}
    assert kept[backups[1].id] == ["newest base at or before the recovery window's start"]
    assert kept[backups[2].id] == ["inside the recovery window"]
    assert run_cli("verify", "--all", "--storage", f"file://{repo}").returncode == 0
    _restorable_from_oldest_to_newest(repo)


def test_old_orphans_go_recent_ones_stay(repo):
    store = LocalStore(repo)
    store.put("backups/20200101T000000Z-snapshot-dead/data/x/y/000000.tsv.zst", b"junk")
    store.put("backups/20991231T000000Z-snapshot-busy/data/x/y/000000.tsv.zst", b"in progress")
    old = time.time() - 3 * 86400
    os.utime(repo / "backups/20200101T000000Z-snapshot-dead/data/x/y/000000.tsv.zst", (old, old))
    r = run_cli("prune", "--keep-last", "5", "--force", "--json", "--storage", f"file://{repo}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["orphans"] == ["backups/20200101T000000Z-snapshot-dead/data/x/y/000000.tsv.zst"]
    keys = _state(repo)[2]
    assert "backups/20991231T000000Z-snapshot-busy/data/x/y/000000.tsv.zst" in keys
    assert not any("snapshot-dead" in k for k in keys)


class CrashingStore(LocalStore):
    """A local store that dies (like a killed process) after a number of delete calls."""

    def __init__(self, root, crash_after: int | None) -> None:
        super().__init__(root)
        self.left = crash_after
        self.calls = 0

    def delete(self, keys):
        if self.left is not None and self.calls >= self.left:
            raise KeyboardInterrupt("crash")
        self.calls += 1
        super().delete(keys)


def test_a_crash_at_any_step_leaves_only_whole_backups_and_an_unbroken_binlog(golden, tmp_path):
    from backupkit.operations.verify import verify_repository

    count = tmp_path / "count"
    shutil.copytree(golden, count)
    counter = CrashingStore(count, None)
    prune(counter, RetentionRules(keep_last=1))
    steps = counter.calls
    assert steps >= 5  # 2 manifests, >= 2 segment indexes, the data
    for k in range(steps):
        repo = tmp_path / f"crash{k}"
        shutil.copytree(golden, repo)
        with pytest.raises(KeyboardInterrupt):
            prune(CrashingStore(repo, k), RetentionRules(keep_last=1))
        # Whatever is visible is whole: no missing object, no hole in the binlog.
        report = verify_repository(LocalStore(repo))
        assert report.ok, (k, [p.message for p in report.problems])
        _restorable_from_oldest_to_newest(repo)
        # The next prune finishes the work, leftovers included.
        prune(LocalStore(repo), RetentionRules(keep_last=1), orphan_grace=0)
        backups, _, keys = _state(repo)
        assert len(backups) == 1
        assert {k.split("/")[1] for k in keys if k.startswith("backups/")} == {backups[0].id}
        # (verify records what it checked in its own object, which the uncrashed copy lacks)
        assert [k for k in keys if not k.startswith(layout.VERIFY)] == _state(count)[2]


def test_prune_without_any_rule_is_a_one_line_error(repo, tmp_path):
    pol = tmp_path / "p.toml"
    pol.write_text(f'name = "x"\n[storage]\nurl = "file://{repo}"\n')
    r = run_cli("prune", "--policy", str(pol))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "retention" in lines[0] and "--keep-last" in lines[0]


def test_prune_on_s3(server, moto, s3_url):
    env = {"BACKUPKIT_S3_ENDPOINT": moto.endpoint}
    _snapshot_and_ship(server, s3_url, 2, env)
    r = run_cli("prune", "--keep-last", "1", "--force", "--json", "--storage", s3_url, env=env)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["removed_backups"]) == 1
    cat = Catalog(open_store(s3_url, create=False))
    assert len(cat.backups()) == 1
    assert run_cli("verify", "--all", "--storage", s3_url, env=env).returncode == 0
