#!/usr/bin/env python3
"""Requests, time and peak RSS of list, binlog status, restore --dry-run and report at several
repository sizes (issue 16). The repository is synthetic, written by backupkit's own writer
(tests/support/scale.py) on the local store; requests are counted as S3 would see them (LIST
pages of 1000 keys). Each size runs in its own process so that its peak RSS is its own.

Usage: bench/scale.py [--quick] [--json]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import main_for, row  # noqa: E402

GOAL_REQUESTS = 100  # issue 16: at most 100 requests per command, whatever the segment count
WINDOW = 2_592_000  # 30 days of one-second segments


def one_size(n: int) -> dict:
    """Build a repository of n segments and measure each command once (in this process)."""
    from backupkit.storage import open_store
    from tests.support.scale import CountingStore, build_repository, measure, no_fsync

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with no_fsync():
            store = CountingStore(open_store(f"file://{tmp}/repo"))
            build_repository(store, n)
        build = time.perf_counter() - t0
        out = {"segments": n, "build_s": build, "commands": {}}
        t = time.perf_counter()
        out["commands"] = measure(store, n)
        out["measure_s"] = time.perf_counter() - t
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out


def run(quick: bool = False) -> list[dict]:
    # not whole files: the newest file is still open, as on a live source
    sizes = [2_500, 10_500] if quick else [2_500, 20_500, 100_500]
    rows = []
    results = []
    for n in sizes:
        proc = subprocess.run([sys.executable, __file__, "--size", str(n)], capture_output=True,
                              text=True, check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for res in results:
        n = res["segments"]
        for cmd, c in res["commands"].items():
            rows.append(row("scale", f"{cmd} requests @{n}", c["total"], "req"))
            rows.append(row("scale", f"{cmd} seconds @{n}", c["seconds"], "s"))
        rows.append(row("scale", f"peak RSS @{n}", res["peak_rss_mib"], "MiB", "< 200",
                        passed=res["peak_rss_mib"] < 200))
    # the growth law from the two largest sizes, extrapolated to a 30-day window of 1 s segments
    (n1, r1), (n2, r2) = [(r["segments"], r["commands"]) for r in results[-2:]]
    for cmd in r2:
        per = (r2[cmd]["total"] - r1[cmd]["total"]) / (n2 - n1)
        at = r2[cmd]["total"] + per * (WINDOW - n2)
        rows.append(row("scale", f"{cmd} requests @{WINDOW} (extrapolated)", at, "req",
                        f"<= {GOAL_REQUESTS}", passed=at <= GOAL_REQUESTS))
    return rows


if __name__ == "__main__":
    if "--size" in sys.argv:
        print(json.dumps(one_size(int(sys.argv[sys.argv.index("--size") + 1]))))
    else:
        main_for(run)
