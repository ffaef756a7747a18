"""Hot snapshot and restore of the 1,000,000-row sysbench table against the standard tools.

In one run, on private mariadbd servers (source and target) built here:
- snapshot: `backupkit snapshot` to local storage vs `mariadb-dump --single-transaction` and
  `mydumper -t 2` (wall time; peak RSS of backupkit as a child process);
- restore: `backupkit restore` vs `mariadb < dump.sql` and `myloader -t 2`.
Goals (issue 3): snapshot <= 1.5x mariadb-dump (stretch: mydumper); restore <= 0.8x
`mariadb < dump.sql` (stretch: myloader); peak RSS < 200 MiB at 1M and 4M rows.

Notes: `mariadb < dump.sql` writes the target's binlog, as a plain restore does; myloader and
backupkit do not (both turn sql_log_bin off for the load). backupkit compresses with zstd and takes
CHECKSUM TABLE inside the snapshot (for restore --verify); the dump tools write plain files.

Before anything is timed the server settles after the load (dirty pages flushed, the binlog
synced once). Each snapshot tool then runs three times, interleaved, and the median run is
reported. The restore side runs once.

Usage: python bench/snapshot.py [--quick] [--rows N] [--json]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import main_for, measure, row  # noqa: E402

from backupkit.mysql.sandbox import Sandbox  # noqa: E402

BENCH = "snapshot"
SERVER_ARGS = ["--innodb-buffer-pool-size=512M", "--innodb-log-file-size=256M",
               "--innodb-flush-log-at-trx-commit=2"]

SYSBENCH_DDL = """
CREATE DATABASE sbtest;
CREATE TABLE sbtest.sbtest1 (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL DEFAULT 0,
  c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', KEY k_1 (k)) ENGINE=InnoDB;
"""


def _digits(n: int) -> str:
    """SQL for sysbench-like groups of 11 random digits joined by '-'."""
    part = "LPAD(FLOOR(RAND() * 100000000000), 11, '0')"
    return "CONCAT(" + ", '-', ".join([part] * n) + ")"


def build_table(sb: Sandbox, rows: int) -> None:
    """The sysbench table, generated in the server with the SEQUENCE engine."""
    sb.sql(SYSBENCH_DDL.split(";")[0])
    sb.sql(SYSBENCH_DDL.split(";")[1])
    step = 1_000_000
    for start in range(1, rows + 1, step):
        end = min(rows, start + step - 1)
        sb.sql(f"INSERT INTO sbtest.sbtest1 (id, k, c, pad) SELECT seq, FLOOR(RAND(seq) * {rows}), "
               f"{_digits(10)}, {_digits(5)} FROM seq_{start}_to_{end}", database="sbtest")
    sb.sql("ANALYZE TABLE sbtest.sbtest1")


RUNS = 3  # each snapshot tool runs this many times, interleaved; the median run is reported


def _median(runs: list):
    """The run with the median wall time (its RSS and output go with it)."""
    return sorted(runs, key=lambda m: m.wall)[len(runs) // 2]


def settle(sb: Sandbox, timeout: float = 60.0) -> None:
    """Let the server finish writing the load back before anything is timed: flush the dirty
    pages (innodb_max_dirty_pages_pct=0 until few are left, then back) and sync the binlog once
    (a first BACKUP STAGE BLOCK_COMMIT fsyncs the whole unsynced load: ~85 ms, once)."""
    pct, lwm = sb.sql("SELECT @@innodb_max_dirty_pages_pct, @@innodb_max_dirty_pages_pct_lwm")[0]
    sb.sql("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0")
    sb.sql("SET GLOBAL innodb_max_dirty_pages_pct = 0")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dirty = int(sb.sql("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")[0][1])
            if dirty < 200:
                break
            time.sleep(0.5)
    finally:
        sb.sql(f"SET GLOBAL innodb_max_dirty_pages_pct = {float(pct)}")
        sb.sql(f"SET GLOBAL innodb_max_dirty_pages_pct_lwm = {float(lwm)}")
    with sb.connect() as conn, conn.cursor() as cur:  # the same fsync the first snapshot would do
        cur.execute("BACKUP STAGE START")
        cur.execute("BACKUP STAGE BLOCK_COMMIT")
        cur.execute("BACKUP STAGE END")


def _mysql(sb: Sandbox) -> list[str]:
    return ["mariadb", "-h", "127.0.0.1", "-P", str(sb.port), "-uroot"]


def _checksum(sb: Sandbox) -> int:
    return int(sb.sql("CHECKSUM TABLE sbtest.sbtest1")[0][1])


def _reset(target: Sandbox) -> None:
    target.sql("DROP DATABASE IF EXISTS sbtest")  # the bench's own private target server


def run(quick: bool = False, rows_count: int | None = None) -> list[dict]:
    rows_n = rows_count or (100_000 if quick else 1_000_000)
    label = f"{rows_n // 1000}k rows" if rows_n < 1_000_000 else f"{rows_n // 1_000_000}M rows"
    work = Path(tempfile.mkdtemp(prefix="backupkit-bench-snapshot-"))
    src = Sandbox(name="bench-src", extra_args=SERVER_ARGS)
    dst = Sandbox(name="bench-dst", server_id=2, extra_args=SERVER_ARGS)
    out: list[dict] = []
    have_mydumper = shutil.which("mydumper") is not None and shutil.which("myloader") is not None
    try:
        src.start()
        dst.start()
        build_table(src, rows_n)
        settle(src)
        want = _checksum(src)
        repo = f"file://{work / 'repo'}"

        # -- snapshot: each tool RUNS times, interleaved; the median counts ----------------
        dump_sql = work / "dump.sql"
        runs: dict[str, list] = {"dump": [], "mydumper": [], "snap": [], "fast": []}
        for _ in range(RUNS):
            with open(dump_sql, "w") as fh:
                dump = measure(["mariadb-dump", "-h", "127.0.0.1", "-P", str(src.port), "-uroot",
                                "--single-transaction", "--databases", "sbtest"], stdout=fh)
            assert dump.returncode == 0, dump.stderr
            runs["dump"].append(dump)
            if have_mydumper:
                shutil.rmtree(work / "mydumper", ignore_errors=True)
                mydump = measure(["mydumper", "-h", "127.0.0.1", "-P", str(src.port), "-u", "root",
                                  "-t", "2", "-r", "100000", "-B", "sbtest", "-o", str(work / "mydumper")])
                assert mydump.returncode == 0, mydump.stderr
                runs["mydumper"].append(mydump)
            snap = measure(["backupkit", "snapshot", "--source", src.url, "--storage", repo,
                            "--parallel", "2", "--json"])
            assert snap.returncode == 0, snap.stderr
            runs["snap"].append(snap)
            fast = measure(["backupkit", "snapshot", "--source", src.url, "--storage", repo,
                            "--parallel", "2", "--no-checksums", "--json"])
            assert fast.returncode == 0, fast.stderr
            runs["fast"].append(fast)
        dump, snap, fast = _median(runs["dump"]), _median(runs["snap"]), _median(runs["fast"])
        mydump = _median(runs["mydumper"]) if have_mydumper else None
        info = json.loads(snap.stdout)
        backup_id = info["backup_id"]

        name = f"{BENCH} ({label})"
        out.append(row(name, f"runs per snapshot tool (median reported; walls of backupkit: "
                       f"{', '.join(f'{m.wall:.2f}' for m in runs['snap'])} s)", RUNS, "runs"))
        out.append(row(name, "mariadb-dump --single-transaction wall", dump.wall, "s"))
        if mydump:
            out.append(row(name, "mydumper -t 2 wall", mydump.wall, "s"))
        out.append(row(name, "backupkit snapshot wall", snap.wall, "s",
                       "<= 1.5x mariadb-dump", snap.wall / dump.wall, snap.wall <= 1.5 * dump.wall))
        out.append(row(name, "backupkit snapshot --no-checksums wall", fast.wall, "s",
                       "<= 1.5x mariadb-dump", fast.wall / dump.wall, fast.wall <= 1.5 * dump.wall))
        if mydump:
            out.append(row(name, "backupkit snapshot / mydumper", snap.wall / mydump.wall, "x",
                           "stretch: <= 1.0x mydumper", snap.wall / mydump.wall,
                           snap.wall <= mydump.wall))
        out.append(row(name, "backupkit snapshot peak RSS", snap.peak_rss_mib, "MiB", "< 200 MiB",
                       None, snap.peak_rss_mib < 200))
        out.append(row(name, "commits blocked", info["consistency"]["blocked_ms"], "ms",
                       "milliseconds", None, info["consistency"]["blocked_ms"] < 1000))
        stats = info["stats"]
        out.append(row(name, "stored / raw", stats["stored_bytes"] / max(1, stats["raw_bytes"]), "x"))

        # -- restore -------------------------------------------------------------------
        with open(dump_sql) as fh:
            plain = measure(_mysql(dst), stdin=fh)
        assert plain.returncode == 0, plain.stderr
        assert _checksum(dst) == want
        _reset(dst)
        myload = None
        if have_mydumper:
            myload = measure(["myloader", "-h", "127.0.0.1", "-P", str(dst.port), "-u", "root",
                              "-t", "2", "-d", str(work / "mydumper")])
            assert myload.returncode == 0, myload.stderr
            assert _checksum(dst) == want
            _reset(dst)
        rest = measure(["backupkit", "restore", backup_id, "--storage", repo, "--target", dst.url,
                        "--parallel", "2", "--json"], env={"BACKUPKIT_TARGET_PASSWORD": ""})
        assert rest.returncode == 0, rest.stderr
        assert _checksum(dst) == want, "backupkit restore is not exact"
        out.append(row(name, "mariadb < dump.sql wall", plain.wall, "s"))
        if myload:
            out.append(row(name, "myloader -t 2 wall", myload.wall, "s"))
        out.append(row(name, "backupkit restore wall", rest.wall, "s", "<= 0.8x mariadb < dump.sql",
                       rest.wall / plain.wall, rest.wall <= 0.8 * plain.wall))
        if myload:
            out.append(row(name, "backupkit restore / myloader", rest.wall / myload.wall, "x",
                           "stretch: <= 1.0x myloader", rest.wall / myload.wall,
                           rest.wall <= myload.wall))
        out.append(row(name, "backupkit restore peak RSS", rest.peak_rss_mib, "MiB", "< 200 MiB",
                       None, rest.peak_rss_mib < 200))
    finally:
        src.destroy()
        dst.destroy()
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["sync"], check=False)
    return out


if __name__ == "__main__":
    if "--rows" in sys.argv:
        n = int(sys.argv[sys.argv.index("--rows") + 1])
        main_for(lambda quick: run(quick, n))
    else:
        main_for(run)
