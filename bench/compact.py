"""Restore over many small segments from S3: fetch-ahead and compaction against
`mariadb-binlog | mariadb` from local files (issue 16).

In one run, on private mariadbd servers and a moto_server built here:
- a small table, a backupkit snapshot of it to the S3 server, then a real `backupkit binlog ship`
  process with a short sync interval under a load of small transactions until it has shipped N
  segments (2,000; 400 with --quick) of a few transactions each;
- the snapshot loaded once into a target server whose datadir is then copied, so that every
  replay starts from the same base, and each must give the source's CHECKSUM TABLE:
  - `mariadb-binlog --start-position=P binlog... | mariadb` on the source's own binlog files
    (the standard; local files, no network);
  - backupkit's replay (plan + fetch + apply, as `restore --latest` runs it after the base) from
    the S3 server over the N small segments: with one fetch at a time (the old fetcher) and with
    the parallel fetch-ahead (the default); and both again with 20 ms added to each segment GET
    (moto answers in about a millisecond; a real S3 endpoint's round trip is tens of them);
  - `backupkit binlog compact --older-than 0 --grace 0` (timed), then the replay again over the
    compacted segments;
- `backupkit restore --latest` into an empty server (the whole RTO: snapshot load, plan, preflight,
  replay) over the small segments and again over the compacted ones.
Every replay runs twice, interleaved with the standard's runs, and the faster run counts (the
machine may be shared).
Goal: restore --latest from S3 over many small segments >= 1.0x `mariadb-binlog | mariadb` from
local files; peak RSS < 200 MiB.

Usage: python bench/compact.py [--quick] [--json]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, main_for, measure, row  # noqa: E402

from backupkit.mysql.sandbox import Sandbox  # noqa: E402

BENCH = "compact"

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
workers, ahead, delay = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
target = parse_target(latest=True)
t = time.perf_counter()
plan = make_plan(Catalog(store), target)
planned = time.perf_counter() - t
if delay:  # a real S3 endpoint's round trip, added to each segment GET (moto answers in ~1 ms)
    real_open = store.open
    def slow_open(key):
        time.sleep(delay)
        return real_open(key)
    store.open = slow_open
spec = ConnSpec(host="127.0.0.1", port=int(sys.argv[2]), user="root")
res = replay_segments(store, plan.segments, plan.start, target, spec, prefetch=ahead,
                      fetch_workers=workers)
print(planned, len(plan.segments), res.transactions, res.binlog_bytes)
'''


def _checksum(sb: Sandbox) -> int:
    return int(sb.sql("CHECKSUM TABLE b.t")[0][1])


def _copy_server(template: Path, name: str) -> Sandbox:
    sb = Sandbox(name=name, server_id=3)
    shutil.copytree(template, sb.datadir, symlinks=True)
    for junk in ("mysqld.pid", "mysqld.sock"):
        (sb.datadir / junk).unlink(missing_ok=True)
    return sb.start()


def _segments(url: str, env: dict) -> int:
    from backupkit.repo.catalog import Catalog
    from backupkit.storage import open_store

    cat = Catalog(open_store(url))
    return sum(len(cat.segments(s)) for s in cat.sources())


def run(quick: bool = False) -> list[dict]:
    from backupkit.mysql.workload import WriteLoad
    from tests.support import MotoServer

    n_target = 400 if quick else 2000
    work = Path(tempfile.mkdtemp(prefix="backupkit-bench-compact-"))
    moto = MotoServer().start()
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    moto.create_bucket(bucket)
    env = {"BACKUPKIT_S3_ENDPOINT": moto.endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    import os
    os.environ.update(env)
    url = f"s3://{bucket}/repo"
    src = Sandbox(name="bench-compact-src")
    base = Sandbox(name="bench-compact-base", server_id=2)
    made: list[Sandbox] = [src, base]
    out: list[dict] = []
    name = f"{BENCH} ({n_target} one-second-ish segments on moto S3)"
    shipper = None
    try:
        src.start()
        src.sql("CREATE DATABASE b")
        src.sql("CREATE TABLE b.t (id INT PRIMARY KEY AUTO_INCREMENT, k INT, v VARCHAR(100))")
        src.sql("INSERT INTO b.t (k, v) SELECT seq, 'base' FROM b.seq_1_to_1000")
        snap = measure(["backupkit", "snapshot", "--source", src.url, "--storage", url, "--json"], env=env)
        assert snap.returncode == 0, snap.stderr
        from backupkit.repo.catalog import Catalog
        from backupkit.storage import open_store

        catalog = Catalog(open_store(url))
        (manifest,) = catalog.backups()
        p0 = manifest.point

        # N small segments from a real shipper under a load of small transactions
        def step(cur, i: int) -> None:
            cur.execute("INSERT INTO b.t (k, v) VALUES (%s, 'small transaction')", (i,))

        load = WriteLoad(lambda: src.connect(), step, pause=0.004, name="bench-writer")
        log = open(work / "ship.log", "ab")  # noqa: SIM115 - closed below
        shipper = subprocess.Popen(
            [sys.executable, "-m", "backupkit", "binlog", "ship", "--source", src.url, "--storage", url,
             "--sync-interval", "0.05", "--server-id", "4343"],
            stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))
        load.start()
        t_ship = time.perf_counter()
        while True:
            time.sleep(10)
            n = _segments(url, env)
            if n >= n_target or shipper.poll() is not None:
                break
        load.stop()
        time.sleep(3)  # the shipper catches up
        shipper.terminate()
        shipper.wait(60)
        log.close()
        ship_wall = time.perf_counter() - t_ship
        shipper = None
        n_segs = _segments(url, env)
        logs = [f for f, _ in src.sql("SHOW BINARY LOGS") if f >= p0.file]
        want = _checksum(src)
        txns = load.commits

        # the base, loaded once; its datadir is the start of every replay
        base.start()
        r = measure(["backupkit", "restore", manifest.id, "--storage", url, "--target", base.url, "--json"],
                    env=env)
        assert r.returncode == 0, r.stderr
        base.stop()
        template = base.datadir

        def ours(label: str, workers: int, ahead: int, delay: float = 0.0):
            sb = _copy_server(template, "bench-compact-ours")
            made.append(sb)
            m = measure([sys.executable, "-c", REPLAY_CHILD.format(root=str(ROOT)), url, str(sb.port),
                         str(workers), str(ahead), str(delay)], env=env)
            assert m.returncode == 0, m.stderr
            assert _checksum(sb) == want, f"backupkit replay ({label}) is not exact"
            sb.destroy()
            planned, segs = m.stdout.split()[:2]
            return m, float(planned), int(segs)

        # the standard, from local files
        binlogs = " ".join(str(src.datadir / f) for f in logs)

        def standard():
            sb = _copy_server(template, "bench-compact-std")
            made.append(sb)
            m = measure(f"mariadb-binlog --no-defaults --start-position={p0.pos} {binlogs} | "
                        f"mariadb --no-defaults -h 127.0.0.1 -P {sb.port} -uroot", shell=True)
            assert m.returncode == 0, m.stderr
            assert _checksum(sb) == want, "mariadb-binlog | mariadb is not exact"
            sb.destroy()
            return m

        def rto(label: str):
            empty = Sandbox(name="bench-compact-rto", server_id=5).start()
            made.append(empty)
            m = measure(["backupkit", "restore", "--latest", "--storage", url, "--target", empty.url,
                         "--json"], env=env)
            assert m.returncode == 0, m.stderr
            assert _checksum(empty) == want, f"restore --latest ({label}) is not exact"
            empty.destroy()
            return m

        # the machine is shared: every replay twice, interleaved, and the faster of the two
        def best(runs):
            return min(runs, key=lambda r: r[0].wall if isinstance(r, tuple) else r.wall)

        stds, seqs, pars = [], [], []
        for _ in range(2):
            stds.append(standard())
            seqs.append(ours("sequential", 1, 2))
            pars.append(ours("fetch-ahead", 8, 32))
        seq, seq_plan, _ = best(seqs)
        par, par_plan, par_n = best(pars)
        # the same with 20 ms added to each segment GET, as a real S3 endpoint's round trip costs
        seq_rtt = ours("sequential, 20 ms per GET", 1, 2, 0.02)[0]
        par_rtt = ours("fetch-ahead, 20 ms per GET", 8, 32, 0.02)[0]
        rto_small = rto("small segments")
        comp = measure(["backupkit", "binlog", "compact", "--storage", url, "--older-than", "0",
                        "--grace", "0", "--json"], env=env)
        assert comp.returncode == 0, comp.stderr
        merged = json.loads(comp.stdout)["sources"][0]
        afters = []
        for _ in range(2):
            afters.append(ours("compacted", 8, 32))
            stds.append(standard())
        after, after_plan, after_n = best(afters)
        std = best(stds)
        rto_comp = rto("compacted")

        out.append(row(name, f"shipped {n_segs} segments, {txns} transactions", ship_wall, "s"))
        out.append(row(name, "mariadb-binlog | mariadb (local files) wall", std.wall, "s"))
        out.append(row(name, f"replay from S3, {par_n} small segments, one fetch at a time", seq.wall, "s",
                       "printed", std.wall / seq.wall))
        out.append(row(name, "  of which planning (list + index entries)", seq_plan, "s"))
        out.append(row(name, f"replay from S3, {par_n} small segments, fetch-ahead (8 workers)", par.wall,
                       "s", ">= 1.0x mariadb-binlog | mariadb", std.wall / par.wall,
                       std.wall / par.wall >= 1.0))
        out.append(row(name, "  of which planning (list + index entries)", par_plan, "s"))
        out.append(row(name, f"replay, {par_n} small segments, 20 ms added per GET, one fetch at a time",
                       seq_rtt.wall, "s", "printed", std.wall / seq_rtt.wall))
        out.append(row(name, f"replay, {par_n} small segments, 20 ms added per GET, fetch-ahead",
                       par_rtt.wall, "s", "printed", std.wall / par_rtt.wall))
        out.append(row(name, f"binlog compact ({merged['merged_segments']} segments into "
                             f"{len(merged['merged'])})", comp.wall, "s", "printed"))
        out.append(row(name, "binlog compact peak RSS", comp.peak_rss_mib, "MiB", "< 200 MiB", None,
                       comp.peak_rss_mib < 200))
        out.append(row(name, f"replay from S3 after compaction ({after_n} segments)", after.wall, "s",
                       ">= 1.0x mariadb-binlog | mariadb", std.wall / after.wall,
                       std.wall / after.wall >= 1.0))
        out.append(row(name, "  of which planning (list + index entries)", after_plan, "s"))
        out.append(row(name, "replay peak RSS (fetch-ahead)", par.peak_rss_mib, "MiB", "< 200 MiB", None,
                       par.peak_rss_mib < 200))
        out.append(row(name, f"restore --latest into an empty server, {par_n} small segments (whole RTO: "
                             "snapshot load + replay)", rto_small.wall, "s", "printed",
                       std.wall / rto_small.wall))
        out.append(row(name, "restore --latest into an empty server, compacted (whole RTO)", rto_comp.wall,
                       "s", "printed", std.wall / rto_comp.wall))
        out.append(row(name, "restore --latest peak RSS", max(rto_small.peak_rss_mib, rto_comp.peak_rss_mib),
                       "MiB", "< 200 MiB", None, max(rto_small.peak_rss_mib, rto_comp.peak_rss_mib) < 200))
    finally:
        if shipper is not None:
            shipper.terminate()
            shipper.wait(60)
        for sb in made:
            sb.destroy()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    main_for(run)
