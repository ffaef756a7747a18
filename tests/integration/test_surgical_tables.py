"""Table-level point-in-time restore onto the live source, under a new database name.

A third of shop.orders is deleted while the other tables keep changing (mixed transactions
too). Restoring shop.orders as of just before the DELETE, into shop_restored on the live source,
gives the checksum the source had then; the other tables are untouched.
"""

from __future__ import annotations

import time

import pytest

from backupkit.errors import TargetError, UsageError
from backupkit.repo.catalog import Catalog
from backupkit.restore.replay import ReplayError
from backupkit.restore.replay.filter import TableFilter
from backupkit.restore.stoppoint import parse_target, time_target
from backupkit.restore.tables import restore_tables_to_point
from backupkit.storage import open_store
from backupkit.strategies.snapshot import SnapshotOptions, take_snapshot
from tests.support import checksum, cross_second, run_cli, source_with_repo, table_checksums
from tests.support.shipping import ship_in_process

pytestmark = pytest.mark.timeout(300)

SOURCE = "shop"
SCHEMA = """
CREATE TABLE orders (id INT PRIMARY KEY, customer INT, amount DECIMAL(12,2), note VARCHAR(40),
                     at DATETIME(6), blob_col BLOB);
CREATE TABLE items (id INT PRIMARY KEY AUTO_INCREMENT, order_id INT, sku VARCHAR(20));
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(40), orders_count INT)
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    repo = tmp_path_factory.mktemp("surgical") / "repo"
    store = open_store(f"file://{repo}")
    with source_with_repo("surgical-src", repo) as (src, _env):
        src.sql("CREATE DATABASE shop")
        conn = src.connect(database="shop")
        cur = conn.cursor()
        for stmt in SCHEMA.split(";"):
            cur.execute(stmt)
        cur.execute("INSERT INTO orders SELECT seq, seq % 50, seq * 1.25, CONCAT('n\\t', seq), "
                    "'2024-01-01 00:00:00.5' + INTERVAL seq SECOND, UNHEX(MD5(seq)) FROM seq_1_to_600")
        cur.execute("INSERT INTO customers SELECT seq, CONCAT('c', seq), 0 FROM seq_0_to_49")
        cur.execute("INSERT INTO items (order_id, sku) SELECT seq, 'sku' FROM seq_1_to_300")
        take_snapshot(src.spec, store, SnapshotOptions(source_id=SOURCE, parallel=2))
        ship_in_process(store, src.spec, SOURCE, 778)
        # after the base: changes to orders, to other tables, and mixed transactions
        for i in range(20):
            cur.execute("BEGIN")
            cur.execute("UPDATE orders SET amount = amount + 1, note = NULL WHERE id = %s", (i * 7 + 1,))
            cur.execute("UPDATE customers SET orders_count = orders_count + 1 WHERE id = %s", (i,))
            cur.execute("INSERT INTO items (order_id, sku) VALUES (%s, 'mixed')", (i,))
            cur.execute("COMMIT")
        cur.execute("INSERT INTO orders SELECT seq, 1, 2.5, 'late', NOW(6), NULL FROM seq_601_to_650")
        cur.execute("ALTER TABLE customers ADD COLUMN extra INT DEFAULT 3")  # DDL on another table
        cur.execute("ALTER TABLE shop.orders ADD COLUMN extra INT DEFAULT 5")  # on the selected one
        cur.execute("CREATE INDEX ix_customer ON orders (customer)")
        cur.execute("UPDATE orders SET extra = id % 7 WHERE id < 100")
        cur.execute("UPDATE items SET sku = 'x' WHERE id % 3 = 0")
        cross_second()
        t_before = time.time()
        want = checksum(cur, "shop.orders")
        cross_second()
        cur.execute("DELETE FROM orders WHERE id % 3 = 0")  # the accident
        cur.execute("SELECT @@last_gtid")
        bad_gtid = cur.fetchone()[0]
        for i in range(10):  # the rest of the database keeps changing
            cur.execute("UPDATE customers SET name = CONCAT(name, 'x') WHERE id = %s", (i,))
            cur.execute("INSERT INTO items (order_id, sku) VALUES (%s, 'after')", (i,))
        cur.execute("SET SESSION binlog_format = 'STATEMENT'")
        cur.execute("UPDATE orders SET note = 'sbr' WHERE id = 1")  # cannot be filtered
        cur.execute("SET SESSION binlog_format = 'ROW'")
        cur.execute("INSERT INTO items (order_id, sku) VALUES (0, 'last')")
        ship_in_process(store, src.spec, SOURCE, 778)
        conn.close()
        yield {"store": store, "catalog": Catalog(store), "src": src, "t": t_before, "want": want,
               "bad_gtid": bad_gtid, "repo": repo}


def _restored(src, db: str) -> tuple[list[str], int]:
    """The tables of db on src, and the checksum of its orders."""
    conn = src.connect()
    try:
        cur = conn.cursor()
        cur.execute(f"SHOW TABLES FROM {db}")
        return [r[0] for r in cur.fetchall()], checksum(cur, f"{db}.orders")
    finally:
        conn.close()


def test_one_table_as_of_before_the_delete_lands_beside_the_live_data(shop):
    src = shop["src"]
    before = table_checksums(src, ["shop"])
    flt = TableFilter.parse(["shop.orders"], rename=["shop=shop_restored"])
    result = restore_tables_to_point(shop["store"], shop["catalog"], time_target(shop["t"]),
                                     src.spec, flt)
    assert _restored(src, "shop_restored") == (["orders"], shop["want"])
    assert table_checksums(src, ["shop"]) == before  # the live tables are untouched
    assert result.base["target_is_source"]
    assert any("only the selected tables' rows" in n for n in result.notes)
    assert "2 DDL statement(s) on the selected tables replayed" in result.notes
    # again: the table exists now; refused without force, moved aside with it
    with pytest.raises(UsageError, match="already holds table"):
        restore_tables_to_point(shop["store"], shop["catalog"], time_target(shop["t"]), src.spec, flt)
    again = restore_tables_to_point(shop["store"], shop["catalog"],
                                    parse_target(stop_before_gtid=shop["bad_gtid"]), src.spec, flt,
                                    force=True)
    (aside,) = again.base["moved_aside"].values()
    conn = src.connect()
    cur = conn.cursor()
    assert checksum(cur, "shop_restored.orders") == shop["want"]
    assert checksum(cur, aside) == shop["want"]
    conn.close()


def test_bad_table_input_is_refused_before_anything_changes(shop):
    src, store, catalog = shop["src"], shop["store"], shop["catalog"]
    at = time_target(shop["t"])
    with pytest.raises(UsageError, match="'shop.nope' matches no table"):
        restore_tables_to_point(store, catalog, at, src.spec, TableFilter.parse(["shop.nope"],
                                                                                rename=["shop=x"]))
    with pytest.raises(TargetError, match="must land in another database"):
        restore_tables_to_point(store, catalog, at, src.spec, TableFilter.parse(["shop.orders"]))
    # statement-based DML on a selected table cannot be filtered: named, refused
    with pytest.raises(ReplayError, match="statement-based event touches selected table shop.orders"):
        restore_tables_to_point(store, catalog, parse_target(latest=True), src.spec,
                                TableFilter.parse(["shop.ord*"], rename=["shop=shop_sbr"]))


def test_cli_restores_tables_by_pattern_and_errors_in_one_line(shop):
    src = shop["src"]
    common = ("--storage", f"file://{shop['repo']}", "restore", "--target",
              f"mysql://root@127.0.0.1:{src.spec.port}")
    out = run_cli(*common, "--stop-before-gtid", shop["bad_gtid"], "--tables", "shop.nope",
                  "--rename-db", "shop=x")
    assert out.returncode == 2 and "'shop.nope' matches no table" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2
    args = (*common, "--stop-before-gtid", shop["bad_gtid"], "--tables", "shop.*",
            "--exclude-tables", "shop.items,shop.customers", "--rename-db", "shop=shop_cli")
    out = run_cli(*args, "--dry-run")
    assert out.returncode == 0 and "shop.orders -> shop_cli.orders" in out.stdout, out.stderr
    out = run_cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    assert _restored(src, "shop_cli") == (["orders"], shop["want"])
