"""The accident scenario through the CLI, and bad input: one line, and the target left alone."""

from __future__ import annotations

import shutil
import time

import pytest

from backupkit.mysql.sandbox import Sandbox
from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from tests.support import cross_second, json_ok, run_cli, source_with_repo, table_checksums

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """Orders written, snapshotted, shipped in three runs; then `DROP TABLE orders` by accident."""
    repo = tmp_path_factory.mktemp("accident") / "repo"
    with source_with_repo("accident-src", repo) as (src, env):
        src.sql("CREATE DATABASE shop")
        src.sql("CREATE TABLE shop.orders (id INT PRIMARY KEY, customer INT, amount DECIMAL(10,2), "
                "note VARCHAR(100), created DATETIME(6))")
        src.sql("CREATE TABLE shop.customers (id INT PRIMARY KEY, name VARCHAR(50), orders INT)")
        src.sql("INSERT INTO shop.customers SELECT seq, CONCAT('c', seq), 0 FROM shop.seq_1_to_40")
        src.sql("INSERT INTO shop.orders SELECT seq, seq % 40 + 1, seq * 1.25, REPEAT('n', seq % 90), "
                "'2026-01-01' + INTERVAL seq MINUTE FROM shop.seq_1_to_500")
        json_ok(run_cli("snapshot", "--json", env=env))
        conn = src.connect(database="shop")
        cur = conn.cursor()
        for i in range(501, 551):  # orders after the snapshot, one commit each
            cur.execute("INSERT INTO orders VALUES (%s, %s, %s, 'late', NOW(6))", (i, i % 40 + 1, i))
            cur.execute("UPDATE customers SET orders = orders + 1 WHERE id = %s", (i % 40 + 1,))
        json_ok(run_cli("binlog", "ship", "--once", "--server-id", "555", "--json", env=env))
        cur.execute("UPDATE orders SET amount = amount * 2 WHERE id % 7 = 0")
        json_ok(run_cli("binlog", "ship", "--once", "--server-id", "555", "--json", env=env))
        before_drop = table_checksums(src, ["shop"])
        rows_before = src.sql("SELECT COUNT(*) FROM shop.orders")[0][0]
        cur.execute("DROP TABLE orders")  # the accident
        cross_second()
        t_after_drop = time.time()
        cross_second()
        for i in range(5):
            cur.execute("UPDATE customers SET name = CONCAT(name, '!') WHERE id = %s", (i + 1,))
        conn.close()
        json_ok(run_cli("binlog", "ship", "--once", "--server-id", "555", "--json", env=env))
        store = open_store(f"file://{repo}")
        catalog = Catalog(store)
        (sid,) = catalog.sources()
        yield {"repo": repo, "env": env, "before_drop": before_drop, "rows_before": rows_before,
               "t_after_drop": t_after_drop, "catalog": catalog, "source_id": sid,
               "snapshot": catalog.backups()[0]}


def test_accident_drop_table_is_found_and_undone_with_stop_before_gtid(shop):
    found = json_ok(run_cli("binlog", "events", "--grep", "DROP TABLE", "--json", env=shop["env"]))
    assert found["count"] == 1
    gtid = found["transactions"][0]["gtid"]
    tgt = Sandbox(name="accident-t").start()
    try:
        out = json_ok(run_cli("restore", "--stop-before-gtid", gtid, "--target", tgt.url, "--json",
                          env=shop["env"]))
        assert table_checksums(tgt, ["shop"]) == shop["before_drop"]
        assert tgt.sql("SELECT COUNT(*) FROM shop.orders")[0][0] == shop["rows_before"] == 550
        assert out["replay"]["stopped_by"] == "target"
        assert out["reached"]["gtid"] != gtid
        domain, server, seq = gtid.split("-")
        assert out["reached"]["gtid"] == f"{domain}-{server}-{int(seq) - 1}"
    finally:
        tgt.destroy()


@pytest.fixture(scope="module")
def bystander():
    """A target server that every refused restore must leave exactly as it was."""
    sb = Sandbox(name="bystander").start()
    sb.sql("CREATE DATABASE keep")
    sb.sql("CREATE TABLE keep.t (id INT PRIMARY KEY)")
    sb.sql("INSERT INTO keep.t VALUES (1), (2)")
    yield sb
    sb.destroy()


def _state(sb: Sandbox) -> tuple:
    return (sb.sql("SHOW DATABASES"), sb.sql("SELECT @@gtid_binlog_pos"), table_checksums(sb))


def _one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def _damaged_copy(shop, tmp_path, damage: str) -> dict[str, str]:
    """A copy of the repository with the middle segment's index entry or data object removed."""
    repo = tmp_path / "repo"
    shutil.copytree(shop["repo"], repo)
    store = open_store(f"file://{repo}")
    segs = [s for s in Catalog(store).segments(shop["source_id"]) if s.end_pos > s.start_pos]
    assert len(segs) >= 3
    middle = segs[1]
    store.delete([middle.key] if damage == "index" else [middle.object.key])
    return {**shop["env"], "BACKUPKIT_STORAGE": f"file://{repo}"}


@pytest.mark.parametrize("case", ["bad-time", "before-oldest-base", "after-newest-commit", "gap",
                                  "missing-object"])
def test_bad_input_is_one_line_and_leaves_the_target_untouched(shop, bystander, tmp_path, case):
    env = shop["env"]
    snap_time = shop["snapshot"].point.time
    fmt = "@{:.6f}"
    args = {"bad-time": ["--to-time", "2026-13-45 25:61:00"],
            "before-oldest-base": ["--to-time", fmt.format(snap_time - 3600)],
            "after-newest-commit": ["--to-time", fmt.format(time.time() + 3600)],
            "gap": ["--to-time", fmt.format(shop["t_after_drop"])],
            "missing-object": ["--to-time", fmt.format(shop["t_after_drop"])]}[case]
    if case == "gap":
        env = _damaged_copy(shop, tmp_path, "index")
    elif case == "missing-object":
        env = _damaged_copy(shop, tmp_path, "object")
    before = _state(bystander)
    r = run_cli("restore", *args, "--target", bystander.url, "--force", env=env)
    line = _one_line(r)
    expect = {"bad-time": (2, "cannot read the time"),
              "before-oldest-base": (2, "earlier than the oldest base"),
              "after-newest-commit": (2, "later than the"),
              "gap": (2, "behind a gap"),
              "missing-object": (4, "not found")}[case]
    assert r.returncode == expect[0], line
    assert expect[1] in line
    if case in ("before-oldest-base", "after-newest-commit", "gap"):
        assert "nearest reachable" in line
    assert _state(bystander) == before


def test_replay_stops_at_the_first_error_naming_gtid_and_position(shop):
    """A target that already holds a row the binlog inserts: the replay stops right there."""
    from backupkit.errors import TargetError
    from backupkit.restore.load import RestoreOptions, restore_snapshot
    from backupkit.restore.pitr import make_plan
    from backupkit.restore.replay import replay_segments
    from backupkit.restore.stoppoint import parse_target

    catalog = shop["catalog"]
    target = parse_target(latest=True)
    plan = make_plan(catalog, target)
    tgt = Sandbox(name="accident-err").start()
    try:
        restore_snapshot(catalog.store, plan.base, tgt.spec, RestoreOptions(record=False))
        tgt.sql("INSERT INTO shop.orders VALUES (520, 1, 1, 'in the way', NOW())")
        with pytest.raises(TargetError) as err:
            replay_segments(catalog.store, plan.iter_segments(), plan.start, target, tgt.spec)
        msg = err.value.one_line()
        assert "replay failed at GTID 0-1-" in msg and "binlog.000001:" in msg and "1062" in msg
        # every transaction before the failing one is applied, nothing after it
        assert tgt.sql("SELECT MAX(id) FROM shop.orders WHERE note = 'late'")[0][0] == 519
        assert tgt.sql("SELECT COUNT(*) FROM shop.orders")[0][0] == 520
    finally:
        tgt.destroy()


def test_point_in_time_restore_streams_from_s3(shop, s3_url):
    """The same repository on a real S3 server (moto_server): plan, fetch ahead, replay."""
    local = open_store(f"file://{shop['repo']}")
    remote = open_store(s3_url)
    for info in local.list(""):
        remote.put(info.key, local.get_bytes(info.key))
    env = {**shop["env"], "BACKUPKIT_STORAGE": s3_url}
    found = json_ok(run_cli("binlog", "events", "--grep", "DROP TABLE", "--json", env=env))
    tgt = Sandbox(name="accident-s3").start()
    try:
        out = json_ok(run_cli("restore", "--stop-before-gtid", found["transactions"][0]["gtid"],
                          "--target", tgt.url, "--json", env=env))
        assert out["replay"]["segments"] >= 2
        assert table_checksums(tgt, ["shop"]) == shop["before_drop"]
    finally:
        tgt.destroy()
