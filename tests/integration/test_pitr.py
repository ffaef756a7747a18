"""Point-in-time restore is exact: a mixed workload with DDL, restored to ten marked moments.

One source, two snapshots, shipped binlog. At each mark the writes pause, the clock passes a
second boundary, T and CHECKSUM TABLE of every table are recorded, and the clock passes the
next boundary before writes resume. Restoring to each T into a fresh server must reproduce
those checksums exactly; --to-gtid and --stop-before-gtid must be exact with no pause at all.
"""

from __future__ import annotations

import json
import random
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from backupkit.mysql.sandbox import Sandbox
from backupkit.repo.catalog import Catalog
from backupkit.restore.pitr import restore_to_point
from backupkit.restore.stoppoint import parse_target, time_target
from backupkit.storage import open_store
from backupkit.strategies.snapshot import SnapshotOptions, take_snapshot
from tests.support import EVERY_TYPE_TABLE, cross_second, run_cli, table_checksums
from tests.support.shipping import ship_in_process

pytestmark = pytest.mark.timeout(600)

SOURCE = "camp"
DB = "camp"

SCHEMA = """
""" + EVERY_TYPE_TABLE + """
CREATE TABLE latin (id INT PRIMARY KEY, name VARCHAR(50), note TEXT) CHARACTER SET latin1;
CREATE TABLE nopk (a INT, b VARCHAR(10));
CREATE TABLE ledger (id INT PRIMARY KEY AUTO_INCREMENT, acct INT, amount DECIMAL(12,2),
                     pad CHAR(200), KEY (acct));
CREATE TABLE accounts (id INT PRIMARY KEY, balance DECIMAL(14,2));
"""

ROW_SQL = ("INSERT INTO every_type (id, vc, txt, ch, bin, blb, fixbin, emoji, dec65, f, d, dt, tm, dtm, "
           "ts, yr, bt, bt3, en, st, js, geo, pt, ti, usb, sb) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
           "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, ST_GeomFromText(%s), "
           "ST_GeomFromText(%s), %s, %s, %s)")


def every_type_row(i: int, rnd: random.Random) -> tuple:
    return (i, rnd.choice(["", "tab\there", "new\nline", "\\N", "x" * 150, None]),
            rnd.choice(["", "back\\slash", "é" * 40, None]), rnd.choice([" t ", "", None]),
            bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 40))), rnd.randbytes(300) * 3,
            rnd.randbytes(4), rnd.choice(["😀𝄞", "ñ", None]),
            f"{rnd.randint(-10**20, 10**20)}.{rnd.randint(0, 10**29):030d}",
            rnd.uniform(-1e30, 1e30), rnd.uniform(-1e300, 1e300), f"20{rnd.randint(10, 37)}-02-28",
            f"{rnd.randint(-838, 838)}:59:59.{rnd.randint(0, 999999):06d}",
            f"2024-02-29 12:34:56.{rnd.randint(0, 999999):06d}", "2030-01-01 00:00:00.5",
            rnd.choice([1901, 2155, 2024]), rnd.getrandbits(64), rnd.getrandbits(3),
            rnd.choice(["a", "b", "tab\there", ""]), rnd.choice(["x,z", "", "x,y,z"]),
            rnd.choice(['{"k": "v\\t\\n", "n": [1, 2.5, null]}', "null", '"s"']),
            rnd.choice(["POINT(1 2)", "LINESTRING(0 0,1 1,2 2)", "POLYGON((0 0,10 0,10 10,0 10,0 0))"]),
            f"POINT({rnd.uniform(-90, 90)} {rnd.uniform(-90, 90)})", rnd.randint(-128, 127),
            rnd.getrandbits(64), rnd.randint(-2**63, 2**63 - 1))


class Workload:
    """Deterministic mixed writes on one connection (autocommit unless a step says otherwise)."""

    def __init__(self, sb: Sandbox) -> None:
        self.conn = sb.connect(database=DB)
        self.cur = self.conn.cursor()
        self.rnd = random.Random(42)
        self.next_id = 1000

    def sql(self, stmt: str, args=None) -> None:
        self.cur.execute(stmt, args)

    def insert_rows(self, n: int) -> None:
        for _ in range(n):
            self.sql(ROW_SQL, every_type_row(self.next_id, self.rnd))
            self.next_id += 1

    def transfer(self, n: int) -> None:
        """Multi-statement transactions: money moves between accounts, with a ledger entry."""
        for _ in range(n):
            a, b = self.rnd.sample(range(1, 21), 2)
            amt = self.rnd.randint(1, 500)
            self.sql("BEGIN")
            self.sql("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amt, a))
            self.sql("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amt, b))
            self.sql("INSERT INTO ledger (acct, amount, pad) VALUES (%s, %s, 'p')", (a, -amt))
            self.sql("COMMIT")

    def updates(self) -> None:
        ids = self.rnd.sample(range(1000, self.next_id), min(10, self.next_id - 1000))
        for i in ids:
            self.sql("UPDATE every_type SET vc = %s, d = d / 3, "
                     "js = JSON_SET(COALESCE(js, '{}'), '$.u', %s), bt = bt ^ 1, "
                     "geo = ST_GeomFromText('POINT(3 4)') WHERE id = %s",
                     (self.rnd.choice(["upd", "", None, "tab\there"]), i, i))

    def deletes(self) -> None:
        ids = self.rnd.sample(range(1000, self.next_id), 3)
        self.sql("DELETE FROM every_type WHERE id IN (%s, %s, %s)", tuple(ids))

    def nopk(self) -> None:
        self.sql("INSERT INTO nopk (a, b) VALUES (1, 'a'), (1, 'a'), (NULL, NULL), (2, '')")
        self.sql("UPDATE nopk SET b = 'z' WHERE a = 2 LIMIT 1")
        self.sql("DELETE FROM nopk WHERE a = 1 LIMIT 1")

    def last_gtid(self) -> str:
        self.cur.execute("SELECT @@last_gtid")
        return self.cur.fetchone()[0]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """The workload, marks, GTID points and the repository they were shipped to."""
    repo = tmp_path_factory.mktemp("pitr") / "repo"
    store = open_store(f"file://{repo}")
    src = Sandbox(name="pitr-src").start()
    try:
        src.sql(f"CREATE DATABASE {DB}")
        conn = src.connect(database=DB)
        with conn.cursor() as cur:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    cur.execute(stmt)
            cur.execute("INSERT INTO accounts SELECT seq, 1000 FROM seq_1_to_20")
            cur.execute("INSERT INTO latin VALUES (1, 'café', 'Ærøskøbing\\tx\\\\y\\nz'), (2, '', NULL)")
        conn.close()
        w = Workload(src)
        w.insert_rows(30)  # writes before the first snapshot
        w.nopk()
        marks: list[tuple[float, dict]] = []
        gtids: dict[str, object] = {}
        snaps = [take_snapshot(src.spec, store, SnapshotOptions(source_id=SOURCE, parallel=2))]
        ship_in_process(store, src.spec, SOURCE, 777)  # the shipped range starts at the first snapshot
        steps = [
            lambda: (w.insert_rows(15), w.transfer(10)),
            lambda: (w.updates(), w.nopk(), w.transfer(5)),
            # a large transaction: 60,000 rows in one commit (about 13 MB of row events)
            lambda: (w.sql("BEGIN"),
                     w.sql("INSERT INTO ledger (acct, amount, pad) SELECT seq % 20 + 1, seq / 100, "
                           "REPEAT(CHAR(65 + seq % 26), 200) FROM seq_1_to_60000"),
                     w.sql("UPDATE accounts SET balance = balance + 1"), w.sql("COMMIT")),
            lambda: (w.sql("ALTER TABLE every_type ADD COLUMN extra INT DEFAULT 7"),
                     w.sql("UPDATE every_type SET extra = id % 5 WHERE id % 2 = 0"),
                     w.sql("CREATE TABLE scratch (id INT PRIMARY KEY, v VARCHAR(20))"),
                     w.sql("INSERT INTO scratch VALUES (1, 'one'), (2, 'two')"), w.insert_rows(5)),
            lambda: (w.deletes(), w.nopk(), w.sql("UPDATE latin SET note = CONCAT(note, 'ø') WHERE id = 1")),
            lambda: (w.sql("DROP TABLE scratch"), w.sql("CREATE TABLE fresh (id INT PRIMARY KEY, j JSON)"),
                     w.sql("INSERT INTO fresh VALUES (1, '[1,2]')"), w.transfer(5)),
            lambda: (w.updates(), w.insert_rows(5), w.sql("DELETE FROM ledger WHERE id % 97 = 0")),
            lambda: (w.transfer(8), w.sql("ALTER TABLE nopk ADD COLUMN c INT"), w.nopk()),
            lambda: (w.sql("UPDATE every_type SET extra = extra + 1, pt = POINT(0, 0) WHERE id < 1010"),
                     w.deletes(), w.sql("INSERT INTO latin VALUES (3, NULL, 'x')")),
            lambda: (w.insert_rows(10), w.transfer(3), w.sql("TRUNCATE TABLE fresh")),
        ]
        for i, step in enumerate(steps):
            step()
            if i == 4:  # the second snapshot, with writes just before and after it (no pause)
                w.transfer(3)
                snaps.append(take_snapshot(src.spec, store, SnapshotOptions(source_id=SOURCE, parallel=2)))
                w.transfer(3)
            if i == 6:  # GTID points, no pause at all
                w.transfer(2)
                gtids["at"] = w.last_gtid()
                gtids["sums"] = table_checksums(src, [DB])
                w.transfer(1)
                gtids["next"] = w.last_gtid()
                w.transfer(2)
            cross_second()
            t = time.time()
            marks.append((t, table_checksums(src, [DB])))
            cross_second()
        w.insert_rows(3)  # writes after the last mark, so that it lies inside the shipped binlog
        w.close()
        ship_in_process(store, src.spec, SOURCE, 777)
        yield {"store": store, "catalog": Catalog(store), "marks": marks, "gtids": gtids,
               "snaps": snaps, "repo": repo}
    finally:
        src.destroy()


def _restore_and_sum(campaign, target) -> tuple[dict, object]:
    tgt = Sandbox(name="pitr-t").start()
    try:
        result = restore_to_point(campaign["store"], campaign["catalog"], target, tgt.spec,
                                  report_loss=False)
        return table_checksums(tgt, [DB]), result
    finally:
        tgt.destroy()


def test_restore_to_each_marked_moment_reproduces_its_checksums(campaign):
    snaps = campaign["snaps"]
    used = set()
    for n, (t, want) in enumerate(campaign["marks"], 1):
        got, result = _restore_and_sum(campaign, time_target(t))
        assert got == want, f"mark {n} at {t}: tables differ"
        used.add(result.plan.base.id)
        assert result.reached.commit_time <= t
        assert result.replay is None or result.replay.stopped_by == "target"
    assert used == {s.id for s in snaps}  # the newest base at or before each mark was used


def test_to_gtid_and_stop_before_gtid_are_exact_without_pauses(campaign):
    g = campaign["gtids"]
    got, result = _restore_and_sum(campaign, parse_target(to_gtid=g["at"]))
    assert got == g["sums"]
    assert result.reached.gtid == g["at"]
    got, result = _restore_and_sum(campaign, parse_target(stop_before_gtid=g["next"]))
    assert got == g["sums"]
    assert result.reached.gtid == g["at"]


def test_cli_to_time_in_the_local_zone(campaign):
    t, want = campaign["marks"][7]
    zone = "Asia/Kolkata"  # +05:30: a local zone that is not UTC
    local = datetime.fromtimestamp(t, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S.%f")
    tgt = Sandbox(name="pitr-t").start()
    try:
        env = {"BACKUPKIT_STORAGE": f"file://{campaign['repo']}", "TZ": zone}
        dry = run_cli("restore", "--to-time", local, "--target", tgt.url, "--dry-run", env=env)
        assert dry.returncode == 0, dry.stderr
        assert campaign["snaps"][1].id in dry.stdout and "estimate" in dry.stdout
        assert table_checksums(tgt, [DB]) == {}  # a dry run changes nothing
        r = run_cli("restore", "--to-time", local, "--target", tgt.url, "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert table_checksums(tgt, [DB]) == want
        out = json.loads(r.stdout)
        assert out["ok"] and out["reached"]["commit_time"] <= t
        assert {s["strategy"] for s in out["loss"]["strategies"]} == {"snapshot", "binlog"}
    finally:
        tgt.destroy()
