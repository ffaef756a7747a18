"""Binlog compaction with a real shipper and real servers (issue 16).

One source under a continuous write load, shipped by a real `backupkit binlog ship` process, and
`backupkit binlog compact` run while it ships. At marked moments the writes pause across a second
boundary and the moment, GTID position, binlog position and CHECKSUM TABLE are recorded.
Restores to --to-time, --to-gtid and --to-position marks that lie inside compacted segments must
reproduce those checksums exactly; `verify` passes on the compacted repository; a compaction run
stopped between commit and delete leaves a readable repository that a rerun finishes; the grace
period keeps a restore that planned with the small segments working while compaction runs. The
same on the S3 server (moto).
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from backupkit.mysql.sandbox import Sandbox
from backupkit.operations import compact as cp
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.repo.coverage import build_runs
from backupkit.restore.pitr import make_plan, restore_to_point
from backupkit.restore.replay import fetch
from backupkit.restore.stoppoint import parse_target, time_target
from backupkit.storage import open_store
from tests.support import run_cli, table_checksums
from tests.support.shipping import cli_env, make_table, shipping_writer, start_shipper, stop_proc

pytestmark = pytest.mark.timeout(900)


def _position(sb: Sandbox) -> tuple[str, int, str]:
    conn = sb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW MASTER STATUS")
            row = cur.fetchone()
            cur.execute("SELECT @@gtid_binlog_pos")
            gtid = cur.fetchone()[0]
        return row[0], int(row[1]), gtid
    finally:
        conn.close()


def _mark(src: Sandbox, writer) -> dict:
    """Pause the writes across a second boundary and record where the source is."""
    writer.pause()
    time.sleep(int(time.time()) + 1 - time.time() + 0.05)
    t = int(time.time())  # nothing commits in this second
    f, p, g = _position(src)
    mark = {"time": float(t), "file": f, "pos": p, "gtid": g.split(",")[0],
            "sums": table_checksums(src, ["w"])}
    time.sleep(t + 1 - time.time() + 0.05)
    writer.resume()
    return mark


def _wait_shipped(catalog: Catalog, src: Sandbox, timeout: float = 60) -> None:
    f, p, _ = _position(src)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sid = catalog.sources()[0] if catalog.sources() else None
        if sid and catalog.shipped_position(sid) == (f, p):
            return
        time.sleep(0.2)
    raise AssertionError(f"the shipper did not reach {f}:{p}")


def _compact_cli(env: dict, *args: str) -> dict:
    r = run_cli("binlog", "compact", "--json", *args, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Writes, a continuous shipper, compaction while both run, and marks; then one final
    compaction. Copies of the repository before the final run are kept for the grace and crash
    tests."""
    base = tmp_path_factory.mktemp("compact")
    repo = base / "repo"
    url = f"file://{repo}"
    src = Sandbox(name="compact-src").start()
    env = cli_env(src, url)
    shipper = writer = None
    try:
        make_table(src)
        src.sql("INSERT INTO w.t (k, v) SELECT seq, 'base' FROM w.seq_1_to_200")
        r = run_cli("snapshot", "--json", env=env)
        assert r.returncode == 0, r.stderr
        shipper = start_shipper(src, url, base / "ship.log")
        writer = shipping_writer(src, rotate_every=5.0, pause=0.01)
        writer.start()
        marks, runs = [], []
        for i in range(6):
            time.sleep(1.5)
            marks.append(_mark(src, writer))
            if i in (2, 4):  # compaction under the write load, the shipper committing meanwhile
                runs.append(_compact_cli(env, "--older-than", "0", "--grace", "0"))
        time.sleep(1.5)
        writer.stop()
        store = open_store(url)
        catalog = Catalog(store)
        _wait_shipped(catalog, src)
        assert stop_proc(shipper) == 0, (base / "ship.log").read_text()[-2000:]
        shipper = None
        final = {"sums": table_checksums(src, ["w"])}
        sid = catalog.sources()[0]
        before = base / "before-final"
        shutil.copytree(repo, before)
        runs.append(_compact_cli(env, "--older-than", "0", "--grace", "0"))
        yield {"url": url, "repo": repo, "env": env, "marks": marks, "final": final, "runs": runs,
               "store": store, "catalog": catalog, "sid": sid, "before": before, "src": src}
    finally:
        if writer is not None:
            writer.stop()
        if shipper is not None:
            stop_proc(shipper)
        src.destroy()


def _restore(store, catalog, target, plan=None) -> dict:
    tgt = Sandbox(name="compact-t").start()
    try:
        restore_to_point(store, catalog, target, tgt.spec, report_loss=False, plan=plan)
        return table_checksums(tgt, ["w"])
    finally:
        tgt.destroy()


def test_compaction_under_load_leaves_one_run_of_merged_segments(shipped):
    runs = shipped["runs"]
    assert all(r["sources"][0]["merged_segments"] >= 2 for r in runs[:2]), runs
    segs = shipped["catalog"].segments(shipped["sid"])
    live = build_runs(segs, shipped["catalog"].gaps(shipped["sid"]))
    assert len(live) == 1
    merged = [s for s in live[0].segments if s.merged]
    assert merged and sum(s.merged for s in merged) > 3 * len(merged)
    # nothing superseded is left (grace 0) and every listed data object has its entry
    assert len(segs) == len(live[0].segments)
    keys = {i.key for i in shipped["store"].list(layout.binlog_prefix(shipped["sid"]))}
    for k in keys:
        marker = layout.commit_marker_of(k)
        assert marker is None or marker in keys, k


def _inside_merged(catalog, sid, file: str, pos: int) -> bool:
    for s in build_runs(catalog.segments(sid))[0].segments:
        if s.binlog_file == file and s.start_pos <= pos <= s.end_pos:
            return bool(s.merged)
    return False


def test_restores_to_marks_inside_compacted_segments_are_exact(shipped):
    store, catalog, sid, marks = shipped["store"], shipped["catalog"], shipped["sid"], shipped["marks"]
    inside = [m for m in marks if _inside_merged(catalog, sid, m["file"], m["pos"])]
    assert len(inside) >= 4, [(m["file"], m["pos"]) for m in marks]
    by_time, by_gtid, by_pos = inside[0], inside[len(inside) // 2], inside[-1]
    assert _restore(store, catalog, time_target(by_time["time"])) == by_time["sums"]
    assert _restore(store, catalog, parse_target(to_gtid=by_gtid["gtid"])) == by_gtid["sums"]
    target = parse_target(to_position=f"{by_pos['file']}:{by_pos['pos']}")
    assert _restore(store, catalog, target) == by_pos["sums"]


def test_restore_latest_from_the_cli_and_verify_pass_on_a_compacted_repository(shipped):
    tgt = Sandbox(name="compact-t").start()
    try:
        r = run_cli("restore", "--latest", "--target", tgt.url, "--json", env=shipped["env"])
        assert r.returncode == 0, r.stderr
        assert table_checksums(tgt, ["w"]) == shipped["final"]["sums"]
    finally:
        tgt.destroy()
    r = run_cli("verify", "--all", "--json", env=shipped["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["problems"] == []


def test_a_run_stopped_between_commit_and_delete_is_readable_and_a_rerun_finishes(shipped, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(shipped["before"], repo)
    store = open_store(f"file://{repo}")
    catalog = Catalog(store)
    sid = shipped["sid"]

    class Crash(Exception):
        pass

    made = []

    def crash(info):
        made.append(info)
        raise Crash("killed after the commit, before its record and any delete")

    with pytest.raises(Crash):
        cp.compact_source(catalog, sid, older_than=0, grace=0, after_commit=crash)
    # committed, not yet named by the finished file's roll-up: readers use the small ones
    assert store.stat(made[0].key) is not None
    assert _restore(store, catalog, parse_target(latest=True)) == shipped["final"]["sums"]
    res = cp.compact_source(catalog, sid, older_than=0, grace=0)
    assert res.deleted and res.waiting == 0
    segs = catalog.segments(sid)
    assert cp.superseded(segs) == [] and cp.records(catalog, sid) == []
    assert made[0].key in {s.key for s in segs} or any(
        s.merged and cp.covered_by(made[0], s) for s in segs)
    r = run_cli("verify", "--all", "--json", env={**shipped["env"], "BACKUPKIT_STORAGE": f"file://{repo}"})
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_grace_period_keeps_a_running_restore_reading_the_small_segments(shipped, tmp_path,
                                                                              monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(shipped["before"], repo)
    store = open_store(f"file://{repo}")
    catalog = Catalog(store)
    sid = shipped["sid"]
    target = parse_target(latest=True)
    plan = make_plan(catalog, target)
    small = [s for s in plan.iter_segments() if not s.merged]
    assert len(small) >= 3, "the plan reads small segments"
    # the restore fetches slowly; compaction (with its grace) runs while it reads
    real = fetch.iter_object
    started = threading.Event()

    def slow(store_, obj, **kw):
        started.set()
        time.sleep(0.02)
        return real(store_, obj, **kw)

    monkeypatch.setattr(fetch, "iter_object", slow)
    out: dict = {}

    def restore() -> None:
        try:
            out["sums"] = _restore(store, catalog, target, plan=plan)
        except BaseException as exc:  # noqa: BLE001 - reported below
            out["error"] = exc

    th = threading.Thread(target=restore)
    th.start()
    assert started.wait(120)
    res = cp.compact_source(catalog, sid, older_than=0, grace=3600)
    assert res.merged and res.deleted == []  # merged, nothing deleted inside the grace
    th.join(300)
    assert "error" not in out, out.get("error")
    assert out["sums"] == shipped["final"]["sums"]
    # past the grace the small segments go. The old plan reads its stretches of several segments
    # from the index again (restore/plan.py iter_segments): the merged objects that hold the same
    # events; a planned segment of its own that is gone, or a merged one across a stretch's end,
    # is refused before anything is changed, naming what is missing
    res = cp.compact_source(catalog, sid, older_than=0, grace=3600, now=time.time() + 3601)
    assert res.deleted
    monkeypatch.setattr(fetch, "iter_object", real)
    from backupkit.errors import BackupkitError
    from backupkit.restore.pitr import preflight
    try:
        preflight(store, plan)
        assert any(s.merged for s in plan.iter_segments())
    except BackupkitError as exc:
        assert "binlog" in exc.one_line() and "\n" not in exc.one_line()
    fresh = make_plan(catalog, target)
    assert all(s.merged for s in fresh.segments[:-1])


def test_compaction_on_the_s3_server_keeps_gtid_restores_exact_and_verify_clean(s3_url, tmp_path):
    src = Sandbox(name="compact-s3-src").start()
    env = cli_env(src, s3_url)
    try:
        make_table(src)
        r = run_cli("snapshot", "--json", env=env)
        assert r.returncode == 0, r.stderr
        marks = []
        for i in range(8):
            for j in range(5):
                src.sql(f"INSERT INTO w.t (k, v) VALUES ({i * 10 + j}, 'r{i}')")
            f, p, g = _position(src)
            marks.append({"gtid": g, "sums": table_checksums(src, ["w"])})
            r = run_cli("binlog", "ship", "--once", "--json", env=env, timeout=120)
            assert r.returncode == 0, r.stderr
        out = _compact_cli(env, "--older-than", "0", "--grace", "0")
        assert out["sources"][0]["merged_segments"] >= 6, out
        store = open_store(s3_url)
        catalog = Catalog(store)
        (sid,) = catalog.sources()
        mark = marks[4]
        plan = make_plan(catalog, parse_target(to_gtid=mark["gtid"]))
        assert plan.segments[-1].merged, [s.key for s in plan.segments]
        assert _restore(store, catalog, parse_target(to_gtid=mark["gtid"])) == mark["sums"]
        r = run_cli("verify", "--all", "--json", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(catalog.segments(sid)) <= 3
    finally:
        src.destroy()


def test_the_scheduled_strategy_compacts_with_the_policy_ages(shipped, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(shipped["before"], repo)
    policy = tmp_path / "p.toml"
    policy.write_text(f"""
name = "compact-sched"
[storage]
url = "file://{repo}"
[strategies]
binlog_compact = "*/15 * * * *"
[binlog]
compact_after = "0"
compact_grace = "0"
compact_levels = []
""")
    # no levels: one pass over everything older than compact_after, as `--older-than 0` (with the
    # default levels, what the fixture shipped after its last in-flight run lies in a minute that
    # is not yet due, or is, by the clock: the count below then passed or failed by chance)
    state = tmp_path / "state"
    r = run_cli("--policy", str(policy), "schedule", "exec", "binlog_compact",
                env={"BACKUPKIT_STATE_DIR": str(state), "BACKUPKIT_STORAGE": "", "BACKUPKIT_SOURCE": ""})
    assert r.returncode == 0, r.stdout + r.stderr
    catalog = Catalog(open_store(f"file://{repo}"))
    segs = catalog.segments(shipped["sid"])
    assert any(s.merged for s in segs) and cp.superseded(segs) == []
    assert len(segs) < len(Catalog(open_store(f"file://{shipped['before']}")).segments(shipped["sid"]))


# -- levels, run continuously -------------------------------------------------------------------
#: Scaled levels: 2 s "minutes" and 8 s "hours" (the defaults are 1m and 1h), a grace each.
LEVELS = [cp.Level(2.0, 1.0, grace=4.0), cp.Level(8.0, 2.0, grace=20.0)]
LEVELS_TOML = """compact_levels = [{ window = "2s", after = "1s", grace = "4s" },
                  { window = "8s", after = "2s", grace = "20s" }]"""


def _level(seg) -> int:
    return cp.level_of(seg, LEVELS)


def test_levels_run_continuously_while_shipping_and_restores_inside_level_two_are_exact(
        s3_url, tmp_path):
    """A real shipper to the S3 server under a write load, and `binlog compact` with levels run
    again and again meanwhile (one process a run, as the scheduler starts it): level 2 merges the
    objects of level 1, each level deletes what it replaced after its own grace, and --to-time,
    --to-gtid and --to-position inside level-2 objects are exact. Then a run stopped between a
    level-2 commit and its deletes: readable, and the next run finishes it."""
    src = Sandbox(name="compact-lv-src").start()
    env = cli_env(src, s3_url)
    policy = tmp_path / "p.toml"
    policy.write_text(f'name = "levels"\n[storage]\nurl = "{s3_url}"\n[binlog]\n{LEVELS_TOML}\n')
    shipper = writer = None
    runs: list[dict] = []
    stop = threading.Event()

    errors: list[str] = []
    started: list[float] = []

    def compaction_loop() -> None:  # what `[strategies] binlog_compact` does, much faster
        while not stop.is_set():
            started.append(time.time())
            r = run_cli("--policy", str(policy), "binlog", "compact", "--json", env=env, timeout=300)
            if r.returncode != 0:
                errors.append(r.stderr)
                return
            runs.extend(json.loads(r.stdout)["sources"])  # none before the first segment
            stop.wait(1.0)

    loop = threading.Thread(target=compaction_loop, daemon=True)
    try:
        make_table(src)
        r = run_cli("snapshot", "--json", env=env)
        assert r.returncode == 0, r.stderr
        shipper = start_shipper(src, s3_url, tmp_path / "ship.log")
        writer = shipping_writer(src, pause=0.01)
        writer.start()
        loop.start()
        marks = []
        for _ in range(4):
            time.sleep(2.5)
            marks.append(_mark(src, writer))
        time.sleep(11)  # the last "hour" ends and its after passes
        writer.stop()
        store = open_store(s3_url)
        catalog = Catalog(store)
        _wait_shipped(catalog, src)
        final = table_checksums(src, ["w"])
        time.sleep(6)  # a few more runs with the shipper still running (the newest stays small)
        stop.set()
        loop.join(300)
        assert stop_proc(shipper) == 0, (tmp_path / "ship.log").read_text()[-2000:]
        shipper = None
        assert errors == []
        sid = catalog.sources()[0]
        rows = [m for res in runs for m in res["merged"]]
        # level 2 merged level-1 objects (fewer pieces than segments), and deletions happened
        assert any(m["window"] == 8.0 and m["pieces"] < m["segments"] for m in rows), rows
        assert any(res["deleted"] for res in runs)
        # every level's grace: what the last run left superseded was inside the grace of the
        # level that replaced it (level 1: 4 s, level 2: 20 s), counted from that object's commit
        segs = catalog.segments(sid)
        for small, wide in cp.superseded(segs, grace_of=lambda w: LEVELS[_level(w) - 1].grace):
            assert started[-1] - wide.created_at < LEVELS[_level(wide) - 1].grace, \
                (small.key, wide.key, _level(wide))
        # what waits for its grace is in a record that was not due when the last run began; of
        # each merged object's pieces only the last entry is still listed meanwhile
        pending = cp.records(catalog, sid)
        assert all(rec.due > started[-1] for rec in pending), [(r.key, r.due) for r in pending]
        listed = {s.key for s in segs}
        assert not [e for rec in pending for e in rec.early if e in listed]
        used = [s for s in build_runs(segs)[0].segments if s.end_pos > s.start_pos]
        # levels descend: hours, then minutes, then the newest small ones (the anchor aside); each
        # merged entry records its level (inferred, a level-2 object over the first, partly
        # shipped window read as level 1: [1, 2, 2, 2, 0] in session 5's CI)
        assert all(s.level for s in used if s.merged)
        levels = [_level(s) for s in used]
        assert levels[1:] == sorted(levels[1:], reverse=True) and 2 in levels, levels
        assert levels[0] > 0, levels  # merged too: no small one before the merged ones
        if levels[0] == 1:  # truly level 1 only when level 2 had nothing to merge it with
            hour = LEVELS[1].window
            assert cp._bucket(used[0], hour) != cp._bucket(used[1], hour), levels
        inside = [m for m in marks if any(
            _level(s) == 2 and s.binlog_file == m["file"] and s.start_pos <= m["pos"] < s.end_pos
            for s in used)]
        assert len(inside) >= 3, ([(m["file"], m["pos"]) for m in marks],
                                  [(s.start_pos, s.end_pos, _level(s)) for s in used])
        assert _restore(store, catalog, time_target(inside[0]["time"])) == inside[0]["sums"]
        assert _restore(store, catalog, parse_target(to_gtid=inside[1]["gtid"])) == inside[1]["sums"]
        pos = inside[2]
        target = parse_target(to_position=f"{pos['file']}:{pos['pos']}")
        assert _restore(store, catalog, target) == pos["sums"]

        # a run stopped between a level's commit and its deletes: the small pieces and the merged
        # object both readable, restores exact; the next run deletes (grace 0) what it replaced
        nograce = [cp.Level(lv.window, 0.0, grace=0.0) for lv in LEVELS] + [cp.Level(64.0, 0.0, 0.0)]

        class Crash(Exception):
            pass

        def crash(_info):
            raise Crash("killed after the commit, before any delete")

        with pytest.raises(Crash):
            cp.compact_source(catalog, sid, levels=nograce, now=time.time() + 3600, after_commit=crash)
        segs = catalog.segments(sid)
        assert cp.superseded(segs)
        assert _restore(store, catalog, parse_target(latest=True)) == final
        cp.compact_source(catalog, sid, levels=nograce, now=time.time() + 3600)
        segs = catalog.segments(sid)
        assert cp.superseded(segs) == []
        assert len([s for s in build_runs(segs)[0].segments if s.end_pos > s.start_pos]) <= 3
        assert _restore(store, catalog, parse_target(latest=True)) == final
        r = run_cli("verify", "--all", "--json", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        stop.set()
        if writer is not None:
            writer.stop()
        if shipper is not None:
            stop_proc(shipper)
        src.destroy()
