"""Physical backups against mariadb-backup itself and against the logical restore, in one run.

On a private mariadbd holding one sysbench-like table of 1,000,000 and then 4,000,000 rows (about
250 MB and 1 GB of .ibd; --quick: 200,000; --rows N: N only), settled (dirty pages flushed, so the
checkpoint where an incremental starts is current), each measured in the same run:
- backup: `mariadb-backup --backup --stream=mbstream --parallel=2 | zstd -1 > file` against
  `backupkit snapshot --engine physical` into a local repository on the same disk;
- restore to a startable datadir: `zstd -dc file | mbstream -x` + `mariadb-backup --prepare`
  against `backupkit restore ID --datadir DIR`;
- full physical restore (the same, then the server started and accepting connections) against
  the logical restore of the same data (`backupkit snapshot`, then `backupkit restore` into a
  fresh server);
- an incremental after 1% of the rows changed (contiguous rows) against the full backup's stored
  bytes, and one after 1% changed scattered over every page (informative);
- the peak RSS of backupkit's backup and restore processes.
The tools run interleaved, round after round (3 rounds; --rounds N), and the median of each is
kept: the machine is shared, so its load (1-minute average) is reported beside the numbers.
Goals (issue 17): backup <= 1.15x; restore to a startable datadir <= 1.2x; full physical restore
at least 3x faster than the logical one (at 4M rows); incremental < 10% of the full's stored
bytes; peak RSS < 200 MiB.

Usage: python bench/physical.py [--quick] [--rows N] [--rounds N] [--json]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import main_for, measure, row  # noqa: E402
from _sysbench import SERVER_ARGS, build  # noqa: E402

from backupkit.mysql.sandbox import Sandbox  # noqa: E402

BENCH = "physical"
def settle(sb: Sandbox, timeout: float = 120) -> None:
    """Flush the dirty pages, so the checkpoint (an incremental's start) catches up with the writes."""
    sb.sql("SET GLOBAL innodb_max_dirty_pages_pct = 0")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dirty = int(sb.sql("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")[0][1])
        if dirty == 0:
            break
        time.sleep(0.5)
    time.sleep(2)  # let the checkpoint follow the flush


def _ok(m, what: str) -> None:
    if m.returncode != 0:
        raise RuntimeError(f"{what} failed: {m.stderr.strip()[-500:]}")


def _arg(name: str) -> int | None:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else None


def run(quick: bool = False, rows: int | None = None, rounds: int | None = None) -> list[dict]:
    rows = rows or _arg("--rows")
    sizes = [rows] if rows else ([200_000] if quick else [1_000_000, 4_000_000])
    rounds = rounds or _arg("--rounds") or (1 if quick else 3)
    out: list[dict] = []
    rss: dict[int, dict[str, float]] = {}
    for n in sizes:
        got, rss[n] = run_size(n, rounds)
        out += got
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        for what in ("backup", "restore"):
            growth = rss[b][what] - rss[a][what]
            out.append(row(BENCH, f"peak RSS growth of the {what}, {a:,} -> {b:,} rows", growth, "MiB",
                           "flat (< 200 MiB at every size)", None, rss[b][what] < 200 and growth < 20))
    return out


def run_size(rows: int, rounds: int) -> tuple[list[dict], dict[str, float]]:
    """Every measure at one table size, the tools interleaved round after round."""
    loads = [os.getloadavg()[0]]
    work = Path(tempfile.mkdtemp(prefix="backupkit-bench-physical-"))
    sb = Sandbox(base=work / "server", name="bench-physical", extra_args=SERVER_ARGS)
    boxes: list[Sandbox] = []
    res: dict[str, list[float]] = {k: [] for k in (
        "base_backup", "bk_backup", "bk_backup_inside", "base_prepare", "bk_restore",
        "bk_restore_inside", "bk_full_restore", "logical_restore")}
    rss: dict[str, float] = {"backup": 0.0, "restore": 0.0}
    sizes: dict[str, float] = {}
    try:
        sb.start()
        build(sb, rows)
        settle(sb)
        repo = work / "repo"
        env = {"BACKUPKIT_SOURCE": sb.url, "BACKUPKIT_STORAGE": f"file://{repo}"}
        tool = ["mariadb-backup", "--backup", "--stream=mbstream", "--parallel=2", "--user=root",
                f"--socket={sb.socket}", f"--target-dir={work / 'mbtarget'}"]
        full_id = ""
        # the logical snapshot of the same data, restored in every round beside the physical one
        m = measure(["backupkit", "snapshot", "--json"], env=env)
        _ok(m, "backupkit snapshot")
        snap_id = json.loads(m.stdout)["backup_id"]
        for _ in range(rounds):
            loads.append(os.getloadavg()[0])
            stream = work / "base.mbstream.zst"
            os.sync()  # each measure starts with nothing left to write back from the one before
            m = measure(" ".join(tool) + f" 2>/dev/null | zstd -1 -q -f -o {stream}", shell=True)
            _ok(m, "mariadb-backup | zstd")
            res["base_backup"].append(m.wall)
            sizes["base_stream"] = stream.stat().st_size
            os.sync()
            m = measure(["backupkit", "snapshot", "--engine", "physical", "--json"], env=env)
            _ok(m, "backupkit snapshot --engine physical")
            res["bk_backup"].append(m.wall)
            rss["backup"] = max(rss["backup"], m.peak_rss_mib)
            out = json.loads(m.stdout)
            res["bk_backup_inside"].append(out["stats"]["duration"])
            full_id = out["backup_id"]
            sizes["full_stored"] = out["stats"]["stored_bytes"]
            sizes["full_raw"] = out["stats"]["raw_bytes"]
            # restore to a startable datadir
            target = work / "prep"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            os.sync()
            m = measure(f"zstd -dc {stream} | mbstream -x -C {target} && mariadb-backup --prepare "
                        f"--target-dir={target} --use-memory=256M >/dev/null 2>&1", shell=True)
            _ok(m, "mbstream -x + --prepare")
            res["base_prepare"].append(m.wall)
            shutil.rmtree(target, ignore_errors=True)
            datadir = work / "restored"
            shutil.rmtree(datadir, ignore_errors=True)
            os.sync()
            m = measure(["backupkit", "restore", full_id, "--datadir", str(datadir), "--json"], env=env)
            _ok(m, "backupkit restore --datadir")
            res["bk_restore"].append(m.wall)
            got = json.loads(m.stdout)
            res["bk_restore_inside"].append(got["extract_seconds"] + got["prepare_seconds"])
            rss["restore"] = max(rss["restore"], m.peak_rss_mib)
            shutil.rmtree(datadir, ignore_errors=True)
            # full physical restore: the server started on it
            box = Sandbox(name="bench-phys-restore", extra_args=SERVER_ARGS)
            (box.base / "tmp").mkdir(parents=True, exist_ok=True)
            boxes.append(box)
            os.sync()
            m = measure(["backupkit", "restore", full_id, "--datadir", str(box.datadir),
                         "--start-command", box.start_command(), "--target", box.url, "--json"], env=env)
            _ok(m, "backupkit restore --start-command")
            res["bk_full_restore"].append(m.wall)
            n = box.sql("SELECT COUNT(*) FROM sbtest.sbtest1")[0][0]
            assert n == rows, f"restored {n} rows, expected {rows}"
            box.destroy()
            box = Sandbox(name="bench-logical-restore", extra_args=SERVER_ARGS).start()
            boxes.append(box)
            os.sync()
            m = measure(["backupkit", "restore", snap_id, "--target", box.url, "--json"], env=env)
            _ok(m, "backupkit restore (logical)")
            res["logical_restore"].append(m.wall)
            box.destroy()
        # an incremental after 1% of the rows changed: a contiguous 1% (recent rows, as most
        # workloads change), then a 1% scattered over every page (informative: no page-level
        # incremental can skip a page that holds a changed row)
        for name, where in (("inc_stored", f"id <= {rows // 100}"), ("inc_scattered", "id % 100 = 0")):
            sb.sql(f"UPDATE sbtest.sbtest1 SET c = REVERSE(c) WHERE {where}")
            settle(sb)
            m = measure(["backupkit", "snapshot", "--engine", "physical", "--incremental", "--json"],
                        env=env)
            _ok(m, "backupkit snapshot --engine physical --incremental")
            sizes[name] = json.loads(m.stdout)["stats"]["stored_bytes"]
            rss["backup"] = max(rss["backup"], m.peak_rss_mib)
    finally:
        for box in boxes:
            box.destroy()
        sb.destroy()
        shutil.rmtree(work, ignore_errors=True)

    loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in res.items() if v}
    mib = 1 << 20
    label = f"{rows:,} rows"
    at = f" ({label})"

    def walls(*keys: str) -> str:
        return "; ".join(k.replace("_", " ") + " " + ", ".join(f"{v:.2f}" for v in res[k]) for k in keys)

    def versus(base: str, tool: str, inside: str, labels: tuple[str, str, str], goal: str,
               limit: float) -> list[dict]:
        """A baseline, backupkit against it (the goal), and the part of backupkit's time spent inside."""
        ratio = med[tool] / med[base]
        return [row(BENCH, labels[0] + at, med[base], "s"),
                row(BENCH, labels[1] + at, med[tool], "s", goal, ratio, ratio <= limit),
                row(BENCH, labels[2] + at, med[inside], "s", "rounds (s): " + walls(base, tool, inside),
                    med[inside] / med[base])]

    f = med["logical_restore"] / med["bk_full_restore"]
    i = sizes["inc_stored"] / sizes["full_stored"]
    return [
        row(BENCH, f"mbstream{at}", sizes["full_raw"] / mib, "MiB"),
        *versus("base_backup", "bk_backup", "bk_backup_inside",
                ("baseline: mariadb-backup --stream | zstd -1", "backup: snapshot --engine physical",
                 "backup: of which the stream (manifest duration)"),
                "<= 1.15x mariadb-backup | zstd -1", 1.15),
        *versus("base_prepare", "bk_restore", "bk_restore_inside",
                ("baseline: zstd -dc | mbstream -x + --prepare", "restore to a startable datadir",
                 "restore: of which extract + prepare"),
                "<= 1.2x mbstream -x + --prepare", 1.2),
        row(BENCH, "logical restore (snapshot) of the same data" + at, med["logical_restore"], "s",
            "rounds (s): " + walls("logical_restore", "bk_full_restore")),
        row(BENCH, "full physical restore (server started)" + at, med["bk_full_restore"], "s",
            ">= 3x faster than logical (goal at 4M rows)", f, f >= 3 if rows >= 4_000_000 else None),
        row(BENCH, "incremental after 1% of rows changed: stored" + at, sizes["inc_stored"] / mib, "MiB",
            "< 10% of the full backup's stored bytes", i, i < 0.10),
        row(BENCH, "incremental after 1% of rows changed, scattered over every page" + at,
            sizes["inc_scattered"] / mib, "MiB", "", sizes["inc_scattered"] / sizes["full_stored"]),
        row(BENCH, "full backup stored" + at, sizes["full_stored"] / mib, "MiB"),
        row(BENCH, "peak RSS: backup" + at, rss["backup"], "MiB", "< 200 MiB", None, rss["backup"] < 200),
        row(BENCH, "peak RSS: restore" + at, rss["restore"], "MiB", "< 200 MiB", None, rss["restore"] < 200),
        row(BENCH, "machine load (1-min average) during the rounds" + at, statistics.median(loads),
            "", f"min {min(loads):.1f}, max {max(loads):.1f} on {os.cpu_count()} cores; medians of "
            f"{rounds} interleaved rounds"),
    ], rss


if __name__ == "__main__":
    main_for(run)
