"""Undo (flashback) on the live server, from the shipped binlog: exact, conflict-checked."""

from __future__ import annotations

import json
import random
import shutil
import time

import pytest

from backupkit.errors import UsageError
from backupkit.repo.catalog import Catalog
from backupkit.restore.undo import UndoConflict, segments_holding, undo
from backupkit.storage import open_store
from backupkit.strategies.snapshot import SnapshotOptions, take_snapshot
from tests.integration.test_pitr import ROW_SQL, every_type_row
from tests.support import EVERY_TYPE_TABLE, checksum, cross_second, run_cli, source_with_repo
from tests.support.shipping import ship_in_process

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    repo = tmp_path_factory.mktemp("undo") / "repo"
    store = open_store(f"file://{repo}")
    with source_with_repo("undo-src", repo) as (src, _env):
        src.sql("CREATE DATABASE shop")
        conn = src.connect(database="shop")
        cur = conn.cursor()
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, customer INT, amount DECIMAL(12,2), "
                    "note VARCHAR(40), at DATETIME(6))")
        cur.execute("INSERT INTO orders SELECT seq, seq % 50, seq * 1.25, CONCAT('n', seq), "
                    "'2024-01-01 00:00:00.5' + INTERVAL seq SECOND FROM seq_1_to_600")
        cur.execute(EVERY_TYPE_TABLE)
        rnd = random.Random(7)
        for i in range(1, 41):
            cur.execute(ROW_SQL, every_type_row(i, rnd))
        take_snapshot(src.spec, store, SnapshotOptions(source_id="shop", parallel=2))
        ship_in_process(store, src.spec, "shop", 779)
        yield {"store": store, "catalog": Catalog(store), "src": src, "conn": conn, "cur": cur,
               "ship": lambda: ship_in_process(store, src.spec, "shop", 779), "rnd": rnd, "repo": repo}
        conn.close()


def test_undo_of_a_delete_restores_the_rows_and_a_second_run_refuses(live):
    cur, src = live["cur"], live["src"]
    want = checksum(cur, "shop.orders")
    cur.execute("DELETE FROM orders WHERE id % 3 = 0")
    cur.execute("SELECT @@last_gtid")
    bad = cur.fetchone()[0]
    cur.execute("UPDATE orders SET note = 'later' WHERE id = 1")  # a later, unrelated change
    want_after = checksum(cur, "shop.orders")
    live["ship"]()
    dry = undo(live["store"], live["catalog"], src.spec, gtids=[bad], dry_run=True)
    assert dry.sql.count("BINLOG '") >= 2 and not dry.applied
    assert "--   INSERT INTO `shop`.`orders`" in dry.sql, dry.sql[:2000]
    assert checksum(cur, "shop.orders") == want_after
    out = run_cli("--storage", f"file://{live['repo']}", "undo", "--gtid", bad, "--dry-run")
    assert out.returncode == 0 and "INSERT INTO `shop`.`orders`" in out.stdout, out.stderr
    out = run_cli("--storage", f"file://{live['repo']}", "undo", "--gtid", bad, "--json",
                  "--target", f"mysql://root@127.0.0.1:{src.spec.port}")
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert done["applied"] and done["transactions"] == [bad]
    cur.execute("SELECT COUNT(*) FROM orders")
    assert cur.fetchone()[0] == 600
    cur.execute("UPDATE orders SET note = 'n1' WHERE id = 1")  # back to the state before the DELETE
    assert checksum(cur, "shop.orders") == want
    with pytest.raises(UndoConflict, match=r"^200 row\(s\) changed.*shop.orders \(id=\d+\): "
                                           "a row with this key exists again"):
        undo(live["store"], live["catalog"], src.spec, gtids=[bad])
    assert checksum(cur, "shop.orders") == want


def test_conflicts_name_the_changed_columns_and_force_skips_those_rows(live):
    cur, src, store, catalog = live["cur"], live["src"], live["store"], live["catalog"]
    cur.execute("INSERT INTO orders SELECT seq, 7, seq, 'c', '2025-05-05 05:05:05' FROM seq_701_to_720")
    cur.execute("UPDATE orders SET amount = amount * 2, note = 'bad' WHERE id BETWEEN 701 AND 720")
    cur.execute("SELECT @@last_gtid")
    bad = cur.fetchone()[0]
    cur.execute("UPDATE orders SET note = 'fixed by hand' WHERE id = 705")
    cur.execute("DELETE FROM orders WHERE id = 706")
    live["ship"]()
    with pytest.raises(UndoConflict, match=r"^2 row\(s\) changed") as refused:
        undo(store, catalog, src.spec, gtids=[bad])
    assert "shop.orders (id=705): changed since: note;" in refused.value.message
    assert "shop.orders (id=706): deleted since" in refused.value.message
    done = undo(store, catalog, src.spec, gtids=[bad], force=True)
    assert done.applied and len(done.skipped) == 2
    cur.execute("SELECT COUNT(*), SUM(amount), SUM(note = 'c') FROM orders WHERE id BETWEEN 701 AND 720")
    assert cur.fetchone() == (19, sum(range(701, 721)) - 706 + 705, 18)
    cur.execute("SELECT note FROM orders WHERE id = 705")
    assert cur.fetchone()[0] == "fixed by hand"


def test_an_update_storm_over_every_type_undone_returns_the_checksum(live):
    cur, src, rnd = live["cur"], live["src"], live["rnd"]
    cross_second()
    want = checksum(cur, "shop.every_type")
    cross_second()
    t1 = time.time()
    for round_ in range(3):
        for i in rnd.sample(range(1, 41), 15):
            row = every_type_row(i, rnd)
            cur.execute("DELETE FROM every_type WHERE id = %s", (i,))
            cur.execute(ROW_SQL, row)
        cur.execute("UPDATE every_type SET vc = CONCAT(COALESCE(vc, ''), %s), d = d / 3, bt = bt ^ 5, "
                    "pt = POINT(%s, 1), js = JSON_SET(COALESCE(js, '{}'), '$.r', %s) WHERE id %% 2 = %s",
                    (str(round_), round_, round_, round_ % 2))
    cur.execute("INSERT INTO every_type (id, vc) VALUES (1000, 'new')")
    t2 = time.time()
    cross_second()
    live["ship"]()
    assert checksum(cur, "shop.every_type") != want
    done = undo(live["store"], live["catalog"], src.spec, t_from=t1, t_to=t2)
    assert done.applied and len(done.transactions) >= 90
    assert checksum(cur, "shop.every_type") == want


def test_undo_from_a_damaged_segment_is_refused_and_changes_nothing(live, tmp_path):
    """The segment holding the chosen transaction is corrupt: exit 5 naming it, nothing applied."""
    cur, src = live["cur"], live["src"]
    cur.execute("UPDATE orders SET note = 'damaged' WHERE id = 5")
    cur.execute("SELECT @@last_gtid")
    g = cur.fetchone()[0]
    live["ship"]()
    want = checksum(cur, "shop.orders")
    segs = live["catalog"].segments("shop")
    chosen = segments_holding(segs, {g})
    assert len(chosen) <= 2 < len(segs), (len(chosen), len(segs))  # not every segment is read
    holder = chosen[-1]
    copy = tmp_path / "repo"
    shutil.copytree(live["repo"], copy)
    path = copy / holder.object.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    out = run_cli("--storage", f"file://{copy}", "undo", "--gtid", g,
                  "--target", f"mysql://root@127.0.0.1:{src.spec.port}")
    assert out.returncode == 5, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) <= 2 and holder.object.key in out.stderr and "Traceback" not in out.stderr
    assert checksum(cur, "shop.orders") == want


def test_bad_undo_input_is_refused(live):
    cur, src, store, catalog = live["cur"], live["src"], live["store"], live["catalog"]
    with pytest.raises(UsageError, match="GTID 0-1-999999 is not in the repository"):
        undo(store, catalog, src.spec, gtids=["0-1-999999"])
    out = run_cli("--storage", f"file://{live['repo']}", "undo", "--gtid", "0-1-999999", "--dry-run")
    assert out.returncode == 2 and "GTID 0-1-999999 is not in the repository" in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2
    cur.execute("SET SESSION binlog_row_image = 'MINIMAL'")
    cur.execute("UPDATE orders SET note = 'minimal' WHERE id = 2")
    cur.execute("SELECT @@last_gtid")
    g = cur.fetchone()[0]
    cur.execute("SET SESSION binlog_row_image = 'FULL'")
    cur.execute("ALTER TABLE orders ADD COLUMN extra INT")
    cur.execute("SELECT @@last_gtid")
    ddl = cur.fetchone()[0]
    live["ship"]()
    with pytest.raises(UsageError, match="binlog_row_image=FULL"):
        undo(store, catalog, src.spec, gtids=[g])
    with pytest.raises(UsageError, match="ALTER TABLE orders ADD COLUMN extra"):
        undo(store, catalog, src.spec, gtids=[ddl])
