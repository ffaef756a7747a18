"""restore --latest from S3 over many one-second segments, as the compaction levels leave them,
against `mariadb-binlog | mariadb` from local files (issue 16).

In one run, on private mariadbd servers and a moto_server built here:
- a small table, a backupkit snapshot of it, then a real `backupkit binlog ship` process under a
  load of small transactions until it has shipped N segments (5,000; 600 with --quick;
  BENCH_SEGMENTS=N to choose) of a few transactions each, into a local repository (a shipper
  commits a few segments a second to moto on this machine, 15-50 to local files), then every
  object copied to the S3 server as it is (16 at a time; roll-ups and head last). Its sync
  interval is 0.05 s, so many segments are cut per second of commit time: the compaction windows
  are scaled by the same factor (a "minute" is the commit time of about 60 segments, an "hour" of
  60 "minutes"), so that the levels see the shapes one-second segments give them;
- `mariadb-binlog --start-position=P binlog... | mariadb` over the source's own binlog files into a
  server holding the snapshot (the standard; local files, no network), twice;
- `backupkit restore --latest` into an empty server (the whole RTO: snapshot load, plan, preflight,
  replay), each time equal to the source's CHECKSUM TABLE:
  1. over the N small segments (nothing compacted);
  2. in the steady state of the levels: `binlog compact --level 1`, `--level 2`, then `--level 1`
     again with the default levels scaled ([binlog] compact_levels: minute objects of what ended
     10 "seconds" ago, hour objects of hours that ended an "hour" ago; the grace an "hour", so
     the superseded small segments are still listed), as the running levels leave a repository:
     hours merged, the last hour in minutes, the newest minute still small;
  3. all compacted (`binlog compact --older-than 0 --grace 0`).
Goal: restore --latest from S3 in the steady state >= 1.0x `mariadb-binlog | mariadb` from local
files; peak RSS < 200 MiB.

BENCH_PROFILE=DIR writes a cProfile of each restore there, BENCH_PYSPY=DIR py-spy's samples of
every thread (`py-spy record --format raw`; pip install py-spy); the times then include their cost.

Usage: python bench/compact.py [--quick] [--json]
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, main_for, measure, moto_bucket, row, stop_all  # noqa: E402

from backupkit.mysql.sandbox import Sandbox  # noqa: E402

BENCH = "compact"
SYNC_INTERVAL = 0.05  # the least `binlog ship --sync-interval` takes
COPY_THREADS = 16


def _copy_repository(src_url: str, dst_url: str) -> int:
    """Every object of one repository stored in another, 16 at a time; the roll-ups and the head
    last, so that they are newer than the entries they name (as the shipper left them)."""
    from concurrent.futures import ThreadPoolExecutor

    from backupkit.storage import open_store

    src, dst = open_store(src_url), open_store(dst_url)
    keys = [i.key for i in src.list("")]
    late = [k for k in keys if "/_rollup/" in k or k.endswith("/head.json")]
    first = [k for k in keys if k not in set(late)]

    def copy(key: str) -> None:
        with src.open(key) as fh:
            dst.put(key, fh.read())

    with ThreadPoolExecutor(COPY_THREADS) as pool:
        for batch in (first, late):
            list(pool.map(copy, batch))
    return len(keys)


def _checksum(sb: Sandbox) -> int:
    return int(sb.sql("CHECKSUM TABLE b.t")[0][1])


def _copy_server(template: Path, name: str) -> Sandbox:
    sb = Sandbox(name=name, server_id=3)
    shutil.copytree(template, sb.datadir, symlinks=True)
    for junk in ("mysqld.pid", "mysqld.sock"):
        (sb.datadir / junk).unlink(missing_ok=True)
    return sb.start()


def _segments(url: str):
    from backupkit.repo.catalog import Catalog
    from backupkit.repo.coverage import in_use
    from backupkit.storage import open_store

    cat = Catalog(open_store(url))
    return [s for sid in cat.sources() for s in in_use(cat.segments(sid))]


def _levels_policy(path: Path, url: str, per_second: float) -> dict:
    """A policy with the default levels scaled to per_second segments a second of commit time."""
    minute = max(1, round(60 / per_second))
    hour = 60 * minute
    after1 = max(1, math.ceil(10 / per_second))
    path.write_text(f"""name = "bench-compact"
[storage]
url = "{url}"
[binlog]
compact_grace = "{hour}s"
compact_levels = [{{ window = "{minute}s", after = "{after1}s" }},
                  {{ window = "{hour}s", after = "{hour}s" }}]
""")
    return {"minute": minute, "hour": hour, "after1": after1}


def run(quick: bool = False) -> list[dict]:
    from backupkit.mysql.workload import WriteLoad

    n_target = int(os.environ.get("BENCH_SEGMENTS") or (600 if quick else 5000))
    work = Path(tempfile.mkdtemp(prefix="backupkit-bench-compact-"))
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    src = Sandbox(name="bench-compact-src")
    base = Sandbox(name="bench-compact-base", server_id=2)
    made: list[Sandbox] = [src, base]
    out: list[dict] = []
    shipper = None
    t_all = time.perf_counter()
    load0 = os.getloadavg()  # a shared machine: every number goes with its load
    with moto_bucket(env) as (moto, bucket):
        env["BACKUPKIT_S3_ENDPOINT"] = moto.endpoint
        os.environ.update(env)
        url = f"s3://{bucket}/repo"
        local = f"file://{work / 'repo'}"
        try:
            src.start()
            src.sql("CREATE DATABASE b")
            src.sql("CREATE TABLE b.t (id INT PRIMARY KEY AUTO_INCREMENT, k INT, v VARCHAR(100))")
            src.sql("INSERT INTO b.t (k, v) SELECT seq, 'base' FROM b.seq_1_to_1000")
            snap = measure(["backupkit", "snapshot", "--source", src.url, "--storage", local, "--json"],
                           env=env)
            assert snap.returncode == 0, snap.stderr
            from backupkit.repo.catalog import Catalog
            from backupkit.storage import open_store

            (manifest,) = Catalog(open_store(local)).backups()
            p0 = manifest.point

            # N small segments from a real shipper under a load of small transactions
            def step(cur, i: int) -> None:
                cur.execute("INSERT INTO b.t (k, v) VALUES (%s, 'small transaction')", (i,))

            load = WriteLoad(lambda: src.connect(), step, pause=0.004, name="bench-writer")
            log = open(work / "ship.log", "ab")  # noqa: SIM115 - closed below
            shipper = subprocess.Popen(
                [sys.executable, "-m", "backupkit", "binlog", "ship", "--source", src.url,
                 "--storage", local, "--sync-interval", str(SYNC_INTERVAL), "--server-id", "4343"],
                stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))
            load.start()
            t_ship = time.perf_counter()
            while shipper.poll() is None:
                time.sleep(5)
                if len(_segments(local)) >= n_target:
                    break
            if shipper.poll() is not None:
                raise RuntimeError(f"the shipper stopped: {(work / 'ship.log').read_text()[-2000:]}")
            load.stop()
            time.sleep(3)  # the shipper catches up
            shipper.terminate()
            shipper.wait(60)
            log.close()
            ship_wall = time.perf_counter() - t_ship
            shipper = None
            t_copy = time.perf_counter()
            n_objects = _copy_repository(local, url)
            copy_wall = time.perf_counter() - t_copy
            small = _segments(url)
            span = max(s.last_commit_time for s in small) - min(
                s.first_commit_time for s in small if s.first_commit_time)
            per_second = len(small) / max(1.0, span)
            logs = [f for f, _ in src.sql("SHOW BINARY LOGS") if f >= p0.file]
            want = _checksum(src)
            txns = load.commits

            # the snapshot, loaded once; the standard starts from copies of that datadir
            base.start()
            r = measure(["backupkit", "restore", manifest.id, "--storage", url, "--target", base.url,
                         "--json"], env=env)
            assert r.returncode == 0, r.stderr
            base.stop()
            binlogs = " ".join(str(src.datadir / f) for f in logs)

            def standard():
                sb = _copy_server(base.datadir, "bench-compact-std")
                made.append(sb)
                m = measure(f"mariadb-binlog --no-defaults --start-position={p0.pos} {binlogs} | "
                            f"mariadb --no-defaults -h 127.0.0.1 -P {sb.port} -uroot", shell=True)
                assert m.returncode == 0, m.stderr
                assert _checksum(sb) == want, "mariadb-binlog | mariadb is not exact"
                sb.destroy()
                return m

            def restore(label: str):
                empty = Sandbox(name="bench-compact-rto", server_id=5).start()
                made.append(empty)
                cmd = ["backupkit", "restore", "--latest", "--storage", url, "--target", empty.url, "--json"]
                if os.environ.get("BENCH_PROFILE"):  # a folder: cProfile of each restore there
                    prof = Path(os.environ["BENCH_PROFILE"]) / f"restore-{label.split()[0]}.prof"
                    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "backupkit", *cmd[1:]]
                elif os.environ.get("BENCH_PYSPY"):  # a folder: py-spy samples of every thread
                    prof = Path(os.environ["BENCH_PYSPY"]) / f"restore-{label.split()[0]}.txt"
                    cmd = ["py-spy", "record", "--threads", "--format", "raw", "-r", "200", "-o",
                           str(prof), "--", sys.executable, "-m", "backupkit", *cmd[1:]]
                m = measure(cmd, env=env)
                assert m.returncode == 0, m.stderr
                assert _checksum(empty) == want, f"restore --latest ({label}) is not exact"
                empty.destroy()
                return m, len(_segments(url))

            def compact(*args: str, policy: Path | None = None):
                pol = ["--policy", str(policy)] if policy else []
                m = measure(["backupkit", *pol, "binlog", "compact", "--storage", url, "--json", *args],
                            env=env)
                assert m.returncode == 0, m.stderr
                return m, json.loads(m.stdout)["sources"][0]

            stds = [standard()]
            small_rto, n_small = restore("small segments")
            policy = work / "levels.toml"
            scale = _levels_policy(policy, url, per_second)
            steady_runs = [compact("--level", "1", policy=policy), compact("--level", "2", policy=policy),
                           compact("--level", "1", policy=policy)]
            steady_listed = steady_runs[-1][1]["segments_after"]
            stds.append(standard())
            steady_rto, n_steady = restore("steady state of the levels")
            shapes = {}
            for s in _segments(url):
                kind = "small" if not s.merged else (
                    "minute" if s.last_commit_time - s.first_commit_time < 1.5 * scale["minute"] else "hour")
                shapes[kind] = shapes.get(kind, 0) + 1
            comp, merged = compact("--older-than", "0", "--grace", "0")
            comp_rto, n_comp = restore("all compacted")
            std = min(stds, key=lambda m: m.wall)
            name = f"{BENCH} ({len(small)} segments on moto S3)"

            out.append(row(name, f"shipped {len(small)} segments, {txns} transactions, "
                                 f"{per_second:.1f} segments per second of commits", ship_wall, "s"))
            out.append(row(name, f"copied to moto ({n_objects} objects)", copy_wall, "s"))
            out.append(row(name, "mariadb-binlog | mariadb (local files), faster of 2", std.wall, "s"))
            out.append(row(name, f"restore --latest, {n_small} small segments", small_rto.wall, "s",
                           "printed", std.wall / small_rto.wall))
            out.append(row(name, f"restore --latest, steady state of the levels ({n_steady} objects: "
                                 f"{shapes.get('hour', 0)} hour, {shapes.get('minute', 0)} minute, "
                                 f"{shapes.get('small', 0)} small; a minute = {scale['minute']} s, "
                                 f"{steady_listed} entries listed)", steady_rto.wall, "s",
                           ">= 1.0x mariadb-binlog | mariadb", std.wall / steady_rto.wall,
                           std.wall / steady_rto.wall >= 1.0))
            out.append(row(name, f"restore --latest, all compacted ({n_comp} objects)", comp_rto.wall, "s",
                           "printed", std.wall / comp_rto.wall))
            for label, (m, res) in zip(("level 1", "level 2", "level 1 again"), steady_runs, strict=True):
                out.append(row(name, f"binlog compact --level {label} ({res['merged_segments']} segments "
                                     f"into {len(res['merged'])})", m.wall, "s", "printed"))
            for label, m in (("small", small_rto), ("steady state", steady_rto), ("all compacted", comp_rto)):
                d = json.loads(m.stdout)
                replay = (d.get("replay") or {}).get("seconds", 0.0)
                out.append(row(name, f"  {label}: snapshot load {d['base_seconds']:.1f} s, replay "
                                     f"{replay:.1f} s; the restore itself", d["duration"], "s"))
            out.append(row(name, f"binlog compact --older-than 0 --grace 0 ({merged['merged_segments']} "
                                 f"segments into {len(merged['merged'])})", comp.wall, "s", "printed"))
            rss = max(m.peak_rss_mib for m in (small_rto, steady_rto, comp_rto))
            out.append(row(name, "restore --latest peak RSS", rss, "MiB", "< 200 MiB", None, rss < 200))
            crss = max(m.peak_rss_mib for m, _ in [*steady_runs, (comp, None)])
            out.append(row(name, "binlog compact peak RSS", crss, "MiB", "< 200 MiB", None, crss < 200))
            out.append(row(name, "whole benchmark", time.perf_counter() - t_all, "s"))
            load1 = os.getloadavg()
            out.append(row(name, f"load average (1, 5, 15 min) at the start {load0[0]:.1f} "
                                 f"{load0[1]:.1f} {load0[2]:.1f}, at the end {load1[0]:.1f} "
                                 f"{load1[1]:.1f} {load1[2]:.1f}", load1[1], ""))
        finally:
            stop_all([shipper], made, work)
    return out


if __name__ == "__main__":
    main_for(run)
