#!/usr/bin/env python3
"""Peak RSS, requests and time of the commands that touch every segment's object or entry
(issue 16: peak RSS of every command under 200 MiB at 2.6M segments), on a synthetic repository
written by backupkit's own writer with a data object per segment (tests/support/scale.py
build_repository(with_data=True)): verify (the first, incremental run reads every object),
prune --dry-run, binlog compact with nothing to do (--dry-run, everything younger than its age),
Catalog.segments, what undo and binlog purge read before they touch a server, repo sync to an
empty second target and the comparison of the two targets (list, status and the monitor with
several targets) after it. Each command
runs in a process of its own (VmHWM); two sizes give the growth per segment, extrapolated to a
30-day window of one-second segments.

Usage: [BENCH_COMMANDS=<part of a name>] bench/scale_objects.py [--quick] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import main_for, row  # noqa: E402

WINDOW = 2_592_000
PER_FILE = 10_000
COMMANDS = ("verify (first run)", "prune --dry-run", "binlog compact (nothing due) --dry-run",
            "catalog.segments (undo, purge)", "repo sync (to an empty target)",
            "repo targets comparison (2 targets)", "list/status comparison (2 targets, quick)")


def _copy_root(url: str) -> Path:
    """The second target of the sync and the comparison (a sync fills it, the comparison after it
    finds it complete)."""
    return Path(url.removeprefix("file://") + "-copy")


def _run(url: str, cmd: str) -> dict:
    from backupkit.operations.compact import compact_source
    from backupkit.operations.prune import prune
    from backupkit.operations.retention import RetentionRules
    from backupkit.operations.verify import verify_repository
    from backupkit.repo.catalog import Catalog
    from backupkit.repo.compare import target_status
    from backupkit.repo.sync import sync_stores
    from backupkit.storage import open_store
    from backupkit.storage.local import LocalStore
    from tests.support.scale import SOURCE, CountingStore

    store = CountingStore(open_store(url))
    t0 = time.perf_counter()
    extra: dict = {}
    if cmd == "verify (first run)":
        rep = verify_repository(store, everything=False, parallel=4)
        extra["problems"] = len(rep.problems)
    elif cmd == "prune --dry-run":
        prune(store, RetentionRules(keep_last=2), dry_run=True)
    elif cmd == "binlog compact (nothing due) --dry-run":
        compact_source(Catalog(store), SOURCE, older_than=10 * 365 * 86400, levels=[], dry_run=True)
    elif cmd == "repo sync (to an empty target)":
        res = sync_stores([("a", store)], ("b", LocalStore(_copy_root(url))), parallel=4)
        extra.update(copied=res.copied, complete=res.complete)
    elif cmd.endswith("(2 targets)") or cmd.endswith("quick)"):
        rows = target_status([("a", store), ("b", LocalStore(_copy_root(url)))], quick="quick" in cmd)
        extra["missing_objects"] = rows[1]["missing_objects"]
    else:
        extra["segments"] = len(Catalog(store).segments(SOURCE))
    seconds = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {**store.counts, "total": store.total(), "seconds": seconds, "peak_rss_mib": hwm, **extra}


def one_size(n: int) -> dict:
    from backupkit.storage import open_store
    from tests.support.scale import build_repository, no_fsync

    with tempfile.TemporaryDirectory() as tmp:
        url = f"file://{tmp}/repo"
        t0 = time.perf_counter()
        with no_fsync():
            build_repository(open_store(url), n, per_file=PER_FILE, with_data=True)
        out: dict = {"segments": n, "build_s": time.perf_counter() - t0, "commands": {}}
        only = os.environ.get("BENCH_COMMANDS")  # e.g. "repo": the commands whose name holds it
        for cmd in (c for c in COMMANDS if not only or only in c):
            proc = subprocess.run([sys.executable, __file__, "--command", cmd, "--repo", url],
                                  capture_output=True, text=True, check=True,
                                  env={**os.environ, "PYTHONPATH": str(HERE.parent)})
            out["commands"][cmd] = json.loads(proc.stdout.strip().splitlines()[-1])
        return out


def run(quick: bool = False) -> list[dict]:
    sizes = [5_500, 15_500] if quick else [20_500, 100_500]
    results = [one_size(n) for n in sizes]
    rows = []
    for res in results:
        n = res["segments"]
        for cmd, c in res["commands"].items():
            rows.append(row("scale-objects", f"{cmd} peak RSS @{n}", c["peak_rss_mib"], "MiB", "< 200",
                            passed=c["peak_rss_mib"] < 200))
            rows.append(row("scale-objects", f"{cmd} requests @{n}", c["total"], "req"))
            rows.append(row("scale-objects", f"{cmd} seconds @{n} (local)", c["seconds"], "s"))
    (n1, r1), (n2, r2) = [(r["segments"], r["commands"]) for r in results]
    for cmd in r2:
        per_seg = (r2[cmd]["peak_rss_mib"] - r1[cmd]["peak_rss_mib"]) / (n2 - n1)
        rows.append(row("scale-objects", f"{cmd} peak RSS per 1,000 segments", per_seg * 1000, "MiB"))
        at = r2[cmd]["peak_rss_mib"] + per_seg * (WINDOW - n2)
        rows.append(row("scale-objects", f"{cmd} peak RSS @{WINDOW} (extrapolated linearly)", at, "MiB",
                        "< 200", passed=at < 200))
    return rows


if __name__ == "__main__":
    if "--command" in sys.argv:
        i = sys.argv.index
        print(json.dumps(_run(sys.argv[i("--repo") + 1], sys.argv[i("--command") + 1])))
    else:
        main_for(run)
