#!/usr/bin/env python3
"""Requests, time and peak RSS of list, binlog status, restore --dry-run and report at several
repository sizes (issue 16). The repository is synthetic, written by backupkit's own writer
(tests/support/scale.py: the shipper's chunks, roll-ups and head) on the local store; requests are
counted as S3 would see them (LIST pages of 1000 keys). Each size runs in its own process so that
its peak RSS is its own. With --s3, the largest quick size is also copied to a real S3 server
(moto_server) and timed there.

The growth law: a command's requests = a constant + one GET per finished binlog file (its
roll-up) + at most 15 per chunk level of the open file. It is measured at two sizes and
extrapolated to a 30-day window of one-second segments (2,592,000) for two file sizes: 10,000
segments a file (a rotation every 2.8 hours) and 86,400 (one a day).

Usage: bench/scale.py [--quick] [--s3] [--json]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import main_for, row  # noqa: E402

GOAL_REQUESTS = 100  # issue 16: at most 100 requests per command, whatever the segment count
GOAL_SECONDS_S3 = 2.0  # issue 16: under 2 s at 20,000 segments on the S3 server
WINDOW = 2_592_000  # 30 days of one-second segments
PER_FILE = 10_000


def one_size(n: int, per_file: int, s3: bool) -> dict:
    """Build a repository of n segments and measure each command once (in this process)."""
    from backupkit.storage import open_store
    from tests.support.scale import CountingStore, build_repository, measure, no_fsync

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with no_fsync():
            local = open_store(f"file://{tmp}/repo")
            build_repository(local, n, per_file=per_file)
        out: dict = {"segments": n, "per_file": per_file, "build_s": time.perf_counter() - t0}
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["commands"] = measure(CountingStore(local), n)
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["rss_before_mib"] = rss_before
        if s3:
            out["s3"] = _on_s3(local, n)
        return out


def _on_s3(local, n: int) -> dict:
    """Copy the repository to a fresh moto_server and time each command there."""
    from backupkit.storage import open_store
    from tests.support import MotoServer
    from tests.support.scale import CountingStore, measure

    for k, v in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(k, v)  # moto takes any credentials
    moto = MotoServer().start()
    try:
        moto.create_bucket("scale")
        remote = open_store(f"s3://scale/repo?endpoint={moto.endpoint}")
        keys = [i.key for i in local.list("")]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: remote.put(k, local.get_bytes(k)), keys))
        copy_s = time.perf_counter() - t0
        return {"objects": len(keys), "copy_s": copy_s, "commands": measure(CountingStore(remote), n)}
    finally:
        moto.stop()


def _size(n: int, per_file: int, s3: bool) -> dict:
    args = [sys.executable, __file__, "--size", str(n), "--per-file", str(per_file)]
    args += ["--on-s3"] if s3 else []
    proc = subprocess.run(args, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    s3 = "--s3" in sys.argv
    # not whole files: the newest file is still open (500 entries), as on a live source
    sizes = [10_500, 30_500] if quick else [20_500, 100_500]
    results = [_size(n, PER_FILE, s3=False) for n in sizes]
    if s3:
        results.append(_size(20_500, PER_FILE, s3=True))
    rows = []
    for res in results:
        n = res["segments"]
        for cmd, c in res["commands"].items():
            rows.append(row("scale", f"{cmd} requests @{n}", c["total"], "req", f"<= {GOAL_REQUESTS}",
                            passed=c["total"] <= GOAL_REQUESTS))
            rows.append(row("scale", f"{cmd} seconds @{n} (local)", c["seconds"], "s"))
        for cmd, c in res.get("s3", {}).get("commands", {}).items():
            rows.append(row("scale", f"{cmd} seconds @{n} (S3 server)", c["seconds"], "s",
                            f"< {GOAL_SECONDS_S3}", passed=c["seconds"] < GOAL_SECONDS_S3))
        rows.append(row("scale", f"peak RSS @{n} (build + all commands)", res["peak_rss_mib"], "MiB",
                        "< 200", passed=res["peak_rss_mib"] < 200))
    # the growth law from the two sizes, in requests per finished binlog file
    (n1, r1), (n2, r2) = [(r["segments"], r["commands"]) for r in results[:2]]
    files1, files2 = n1 // PER_FILE, n2 // PER_FILE
    rss_per_seg = (results[1]["peak_rss_mib"] - results[0]["peak_rss_mib"]) / (n2 - n1)
    for cmd in r2:
        per_file_req = (r2[cmd]["total"] - r1[cmd]["total"]) / (files2 - files1)
        rows.append(row("scale", f"{cmd} requests per finished binlog file", per_file_req, "req"))
        for seg_per_file in (PER_FILE, 86_400):
            files = WINDOW // seg_per_file
            at = r2[cmd]["total"] + per_file_req * (files - files2)
            rows.append(row("scale", f"{cmd} requests @{WINDOW} ({seg_per_file} a file: {files} files, "
                            f"extrapolated)", at, "req", f"<= {GOAL_REQUESTS}", passed=at <= GOAL_REQUESTS))
    rss_at = results[1]["peak_rss_mib"] + rss_per_seg * (WINDOW - n2)
    rows.append(row("scale", f"peak RSS @{WINDOW} (extrapolated linearly)", rss_at, "MiB", "< 200",
                    passed=rss_at < 200))
    return rows


if __name__ == "__main__":
    if "--size" in sys.argv:
        per = int(sys.argv[sys.argv.index("--per-file") + 1])
        print(json.dumps(one_size(int(sys.argv[sys.argv.index("--size") + 1]), per, "--on-s3" in sys.argv)))
    else:
        main_for(run)
