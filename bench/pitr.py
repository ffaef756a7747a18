"""Point-in-time restore: binlog replay speed against `mariadb-binlog | mariadb`, and the total RTO.

In one run, on private mariadbd servers built here:
- the 1,000,000-row sysbench table (100,000 with --quick), a backupkit snapshot of it, and
  binlog shipping from the snapshot's point;
- 100,000 single-row UPDATEs in 1,000 transactions (20,000 in 200 with --quick), shipped;
- the snapshot loaded once into a target server, whose datadir is then copied, so that both
  replays start from the same base:
  - backupkit's replay of the shipped segments (streamed from the repository, checksum-verified),
  - `mariadb-binlog --start-position=P binlog... | mariadb` on the source's own binlog files,
    with and without --disable-log-bin (the target writes its binlog unless told not to;
    backupkit's replay does not, by default);
  both must give the source's CHECKSUM TABLE;
- the total RTO: `backupkit restore --latest` into an empty server (snapshot load + replay).
Goal (issue 5): replay >= 1.0x the speed of `mariadb-binlog | mariadb` (the faster variant).

Usage: python bench/pitr.py [--quick] [--json]
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, main_for, measure, row  # noqa: E402

from backupkit.mysql.sandbox import Sandbox  # noqa: E402

BENCH = "pitr"
SERVER_ARGS = ["--innodb-buffer-pool-size=512M", "--innodb-log-file-size=256M",
               "--innodb-flush-log-at-trx-commit=2"]

REPLAY_CHILD = r'''
import sys, time
sys.path.insert(0, {root!r})
from backupkit.storage import open_store
from backupkit.repo.catalog import Catalog
from backupkit.mysql.connection import ConnSpec
from backupkit.restore.pitr import make_plan
from backupkit.restore.replay import replay_segments
from backupkit.restore.stoppoint import parse_target
store = open_store(sys.argv[1])
target = parse_target(latest=True)
plan = make_plan(Catalog(store), target)
spec = ConnSpec(host="127.0.0.1", port=int(sys.argv[2]), user="root")
t = time.perf_counter()
res = replay_segments(store, plan.iter_segments(), plan.start, target, spec)
print(time.perf_counter() - t, res.transactions, res.binlog_bytes)
'''

UPDATES_PROC = """
CREATE PROCEDURE sbtest.bench_updates(IN txns INT, IN per INT, IN maxid INT)
BEGIN
  DECLARE i INT DEFAULT 0;
  DECLARE j INT;
  WHILE i < txns DO
    START TRANSACTION;
    SET j = 0;
    WHILE j < per DO
      SET @id = 1 + FLOOR(RAND() * maxid);
      UPDATE sbtest.sbtest1 SET k = k + 1 WHERE id = @id;
      SET j = j + 1;
    END WHILE;
    COMMIT;
    SET i = i + 1;
  END WHILE;
END
"""


def _snapshot_bench():
    spec = importlib.util.spec_from_file_location("bench_snapshot_mod", Path(__file__).parent / "snapshot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _checksum(sb: Sandbox) -> int:
    return int(sb.sql("CHECKSUM TABLE sbtest.sbtest1")[0][1])


def _copy_server(template: Path, name: str) -> Sandbox:
    """A started server on a copy of a stopped server's datadir."""
    sb = Sandbox(name=name, server_id=3, extra_args=SERVER_ARGS)
    shutil.copytree(template, sb.datadir, symlinks=True)
    for junk in ("mysqld.pid", "mysqld.sock"):
        (sb.datadir / junk).unlink(missing_ok=True)
    return sb.start()


def run(quick: bool = False) -> list[dict]:
    rows_n = 100_000 if quick else 1_000_000
    txns, per = (200, 100) if quick else (1000, 100)
    label = f"{rows_n // 1000}k rows + {txns * per // 1000}k updates"
    work = Path(tempfile.mkdtemp(prefix="backupkit-bench-pitr-"))
    repo = f"file://{work / 'repo'}"
    src = Sandbox(name="bench-pitr-src", extra_args=SERVER_ARGS)
    base = Sandbox(name="bench-pitr-base", server_id=2, extra_args=SERVER_ARGS)
    made: list[Sandbox] = [src, base]
    out: list[dict] = []
    name = f"{BENCH} ({label})"
    try:
        src.start()
        _snapshot_bench().build_table(src, rows_n)
        src.sql(UPDATES_PROC)
        snap = measure(["backupkit", "snapshot", "--source", src.url, "--storage", repo, "--json"])
        assert snap.returncode == 0, snap.stderr
        ship = ["backupkit", "binlog", "ship", "--once", "--source", src.url, "--storage", repo,
                "--server-id", "4242", "--json"]
        r = subprocess.run(ship, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        from backupkit.repo.catalog import Catalog
        from backupkit.storage import open_store

        catalog = Catalog(open_store(repo))
        (manifest,) = catalog.backups()
        p0 = manifest.point
        src.sql(f"CALL sbtest.bench_updates({txns}, {per}, {rows_n})")
        logs = [f for f, _ in src.sql("SHOW BINARY LOGS") if f >= p0.file]
        r = subprocess.run(ship, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        want = _checksum(src)

        # the base, loaded once; its datadir is the start of both replays
        base.start()
        load = measure(["backupkit", "restore", manifest.id, "--storage", repo, "--target", base.url,
                        "--json"])
        assert load.returncode == 0, load.stderr
        base.stop()
        template = base.datadir

        # backupkit's replay, from the repository
        ours_sb = _copy_server(template, "bench-pitr-ours")
        made.append(ours_sb)
        ours = measure([sys.executable, "-c", REPLAY_CHILD.format(root=str(ROOT)), repo, str(ours_sb.port)])
        assert ours.returncode == 0, ours.stderr
        assert _checksum(ours_sb) == want, "backupkit replay is not exact"
        ours_sb.destroy()

        # mariadb-binlog | mariadb, on the source's binlog files, both variants
        binlogs = " ".join(str(src.datadir / f) for f in logs)
        std: dict[str, float] = {}
        for variant, flag in (("mariadb-binlog | mariadb", ""), ("mariadb-binlog -D | mariadb", "-D")):
            sb = _copy_server(template, "bench-pitr-std")
            made.append(sb)
            cmd = (f"mariadb-binlog --no-defaults {flag} --start-position={p0.pos} {binlogs} | "
                   f"mariadb --no-defaults -h 127.0.0.1 -P {sb.port} -uroot")
            m = measure(cmd, shell=True)
            assert m.returncode == 0, m.stderr
            assert _checksum(sb) == want, f"{variant} is not exact"
            std[variant] = m.wall
            sb.destroy()
        best = min(std.values())

        # the whole RTO: an empty server, snapshot load + replay
        empty = Sandbox(name="bench-pitr-rto", server_id=5, extra_args=SERVER_ARGS).start()
        made.append(empty)
        rto = measure(["backupkit", "restore", "--latest", "--storage", repo, "--target", empty.url,
                       "--json"])
        assert rto.returncode == 0, rto.stderr
        assert _checksum(empty) == want, "backupkit restore --latest is not exact"

        for variant, wall in std.items():
            out.append(row(name, f"{variant} wall", wall, "s"))
        out.append(row(name, "backupkit replay wall", ours.wall, "s", ">= 1.0x mariadb-binlog | mariadb",
                       best / ours.wall, best / ours.wall >= 1.0))
        out.append(row(name, "backupkit replay peak RSS", ours.peak_rss_mib, "MiB", "< 200 MiB", None,
                       ours.peak_rss_mib < 200))
        out.append(row(name, "snapshot load (base)", load.wall, "s"))
        out.append(row(name, "total RTO: restore --latest (load + replay)", rto.wall, "s", "printed"))
        out.append(row(name, "restore --latest peak RSS", rto.peak_rss_mib, "MiB", "< 200 MiB", None,
                       rto.peak_rss_mib < 200))
    finally:
        for sb in made:
            sb.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    main_for(run)
