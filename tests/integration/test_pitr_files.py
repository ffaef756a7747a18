"""A restore planned over stretches reads each binlog file's segments when the replay reaches it.

A real source under a write load rotating its binlog every 1.5 s, shipped by a real `backupkit
binlog ship` process (one-fifth-second segments), and marks where the writes pause across a
second boundary. --to-time at a mark several files after the snapshot must reproduce its CHECKSUM
TABLE, through a plan that holds stretches (a few per file) and expands them file by file. A file
whose index goes away while the replay runs (a prune meanwhile) stops the restore promptly with
one line naming the file, and the target is reported partial.
"""

from __future__ import annotations

import json
import time

import pytest

from backupkit.errors import BackupkitError
from backupkit.mysql.sandbox import Sandbox
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.repo.stretches import Stretch
from backupkit.restore.pitr import make_plan, restore_to_point
from backupkit.restore.stoppoint import parse_target, time_target
from backupkit.storage import open_store
from backupkit.util.units import utc_iso
from tests.support import run_cli, table_checksums
from tests.support.shipping import cli_env, make_table, shipping_writer, start_shipper, stop_proc

pytestmark = pytest.mark.timeout(600)


def _mark(src: Sandbox, writer) -> dict:
    """Pause the writes across a second boundary; the moment and the checksums then."""
    writer.pause()
    time.sleep(int(time.time()) + 1 - time.time() + 0.05)
    t = int(time.time())  # nothing commits in this second
    gtid = src.sql("SELECT @@gtid_binlog_pos")[0][0]
    mark = {"time": float(t), "gtid": gtid.split(",")[0], "sums": table_checksums(src, ["w"])}
    time.sleep(t + 1 - time.time() + 0.05)
    writer.resume()
    return mark


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("files")
    url = f"file://{base / 'repo'}"
    src = Sandbox(name="files-src").start()
    env = cli_env(src, url)
    shipper = writer = None
    try:
        make_table(src)
        r = run_cli("snapshot", "--json", env=env)
        assert r.returncode == 0, r.stderr
        shipper = start_shipper(src, url, base / "ship.log")
        writer = shipping_writer(src, rotate_every=1.5, pause=0.01)
        writer.start()
        marks = []
        for _ in range(4):
            time.sleep(2.5)
            marks.append(_mark(src, writer))
        time.sleep(2)
        writer.stop()
        writer = None
        catalog = Catalog(open_store(url))
        conn = src.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW MASTER STATUS")
                f, p = cur.fetchone()[:2]
        finally:
            conn.close()
        deadline = time.monotonic() + 60
        while catalog.sources() == [] or catalog.shipped_position(catalog.sources()[0]) != (f, int(p)):
            assert time.monotonic() < deadline, "the shipper did not catch up"
            time.sleep(0.2)
        assert stop_proc(shipper) == 0, (base / "ship.log").read_text()[-2000:]
        shipper = None
        yield {"url": url, "marks": marks, "env": env}
    finally:
        if writer is not None:
            writer.stop()
        if shipper is not None:
            stop_proc(shipper)
        src.destroy()


def test_to_time_over_several_files_expands_them_one_by_one_and_is_exact(files):
    store = open_store(files["url"])
    catalog = Catalog(store)
    mark = files["marks"][-1]
    plan = make_plan(catalog, time_target(mark["time"]))
    stretches = [s for s in plan.segments if isinstance(s, Stretch) and s.count > 1]
    names = {s.binlog_file for s in plan.segments}
    assert len(names) >= 3 and len({s.binlog_file for s in stretches}) >= 2, plan.lines()
    assert plan.segment_count > len(plan.segments)  # stretches, not one item per segment
    read: list[str] = []
    real = catalog.file_segments

    def counted(source_id: str, binlog_file: str):
        read.append(binlog_file)
        return real(source_id, binlog_file)

    catalog.file_segments = counted  # type: ignore[method-assign]
    tgt = Sandbox(name="files-t").start()
    try:
        result = restore_to_point(store, catalog, time_target(mark["time"]), tgt.spec, plan=plan,
                                  report_loss=False)
        assert table_checksums(tgt, ["w"]) == mark["sums"]
    finally:
        tgt.destroy()
    assert result.replay is not None and result.replay.segments <= plan.segment_count
    # each file with a stretch of several segments read once by preflight and once by the replay
    want = [s.binlog_file for s in plan.segments if isinstance(s, Stretch) and s.count > 1]
    assert read == [f for f in dict.fromkeys(want)] * 2
    # the dry run prints a few rows per file, not one per segment
    r = run_cli("restore", "--to-time", utc_iso(mark["time"]), "--dry-run", "--json", env=files["env"])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["segment_count"] == plan.segment_count and len(got["segments"]) <= 2 * len(names)


def test_to_gtid_searches_the_files_one_by_one_and_is_exact(files):
    store = open_store(files["url"])
    catalog = Catalog(store)
    mark = files["marks"][-2]
    target = parse_target(to_gtid=mark["gtid"])
    plan = make_plan(catalog, target)
    assert len({s.binlog_file for s in plan.segments}) >= 3, plan.lines()
    tgt = Sandbox(name="files-g").start()
    try:
        restore_to_point(store, catalog, target, tgt.spec, plan=plan, report_loss=False)
        assert table_checksums(tgt, ["w"]) == mark["sums"]
    finally:
        tgt.destroy()


def test_a_file_whose_index_goes_away_during_the_replay_fails_promptly_naming_it(files):
    store = open_store(files["url"])
    catalog = Catalog(store)
    plan = make_plan(catalog, time_target(files["marks"][-1]["time"]))
    sid = plan.source_id
    named = set(catalog.head(sid).rollups)
    victim = [s.binlog_file for s in plan.segments
              if isinstance(s, Stretch) and s.count > 1 and s.binlog_file in named][-1]

    def prune_meanwhile(phase: str, event: str, **kw) -> None:
        # after preflight checked every object, before the replay reaches the victim's file
        if phase == "replay" and event == "plan":
            catalog.forget_rollups(sid, [victim])
            store.delete([i.key for i in store.list(layout.segment_file_prefix(sid, victim))])

    tgt = Sandbox(name="files-f").start()
    try:
        # prompt: the fetcher hands the error on (the module's timeout fails a wait)
        with pytest.raises(BackupkitError) as err:
            restore_to_point(store, catalog, time_target(files["marks"][-1]["time"]), tgt.spec,
                             plan=plan, report_loss=False, progress=prune_meanwhile)
    finally:
        tgt.destroy()
    msg = err.value.one_line()
    assert "\n" not in msg and victim in msg and "is partial" in msg, msg
