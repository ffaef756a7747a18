#!/usr/bin/env python3
"""Requests, time and peak RSS of list, binlog status, restore --dry-run, report and the status
page collector at several repository sizes (issue 16). The repository is synthetic, written by
backupkit's own writer (tests/support/scale.py: the shipper's chunks, roll-ups, head and source
summary) on the local store; requests are counted as S3 would see them (LIST pages of 1000 keys).
Each command runs in a process of its own, so that its peak RSS (VmHWM) is its own. Without
--quick, a 30-day window (2,590,500 segments, 10,000 to a file) is built too, its finished files
as roll-ups alone (no index entry each: the commands measured never read those; built in
minutes). With --s3, 20,500 segments are also copied to a real S3 server (moto_server) and timed
there.

The growth law: list, binlog status, report and the status page read the head, the source
summary (every finished file in one GET) and the open file: a constant + at most 15 GETs per
chunk level of the open file. restore --latest and --to-time plan over the same stretches and
read, besides, the segments of the one file where the replay stops. "restore --to-time replay
index" is what the replay of that plan reads of the index (every segment from the base to T,
one binlog file at a time: RestorePlan.iter_segments): its requests grow with files by nature,
its memory must not. Requests are measured at two sizes and
extrapolated to a 30-day window of one-second segments (2,592,000) for two file sizes: 10,000
segments a file (a rotation every 2.8 hours) and 86,400 (one a day).

With a file a day (--day alone, and in a full run), the open file holds 5,023 entries, then
86,015 (most of a day): the summarizing commands read its chunk summary, not its chunks.

Usage: bench/scale.py [--quick] [--s3] [--day] [--json]
       bench/scale.py --size N --per-file F [--on-s3] [--no-finished-index] [--skip CMD]
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


def one_size(n: int, per_file: int, s3: bool, index_finished: bool = True,
             skip: tuple[str, ...] = ()) -> dict:
    """Build a repository of n segments, then measure each command in a process of its own (its
    requests, time and peak RSS)."""
    from backupkit.storage import open_store
    from tests.support.scale import build_repository, no_fsync

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        url = f"file://{tmp}/repo"
        with no_fsync():
            build_repository(open_store(url), n, per_file=per_file, index_finished=index_finished)
        out: dict = {"segments": n, "per_file": per_file, "build_s": time.perf_counter() - t0,
                     "index_finished": index_finished, "commands": {}}
        for cmd in COMMANDS:
            if cmd not in skip:
                out["commands"][cmd] = _command(url, n, cmd)
        out["peak_rss_mib"] = max(c["peak_rss_mib"] for c in out["commands"].values())
        if s3:
            out["s3"] = _on_s3(open_store(url), n)
        return out


#: Bench-only: the replay's reads of the index over a --to-time plan (not a planning command)
REPLAY_INDEX = "restore --to-time replay index"


#: The commands measured (tests/support/scale.py measure)
COMMANDS = ("list", "binlog status", "shipped position", "restore --latest --dry-run",
            "restore --to-time --dry-run", "report", "status page (monitor collect)", REPLAY_INDEX)


def _command(url: str, n: int, cmd: str) -> dict:
    """One command in a fresh process: its requests, seconds and peak RSS."""
    args = [sys.executable, __file__, "--command", cmd, "--repo", url, "--size", str(n)]
    proc = subprocess.run(args, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_command(url: str, n: int, cmd: str) -> dict:
    from backupkit.storage import open_store
    from tests.support.scale import CountingStore, measure

    store = CountingStore(open_store(url))
    got = _replay_index(store, n) if cmd == REPLAY_INDEX else measure(store, n, only=cmd)[cmd]
    return {**got, "peak_rss_mib": _peak_rss_mib()}


def _replay_index(store, n: int) -> dict:
    """Plan --to-time (half the window) and go through every segment of the plan as the replay
    does (RestorePlan.iter_segments), without fetching their data."""
    from backupkit.repo.catalog import Catalog
    from backupkit.restore.pitr import make_plan
    from backupkit.restore.stoppoint import RestoreTarget
    from tests.support.scale import T0

    t0 = time.perf_counter()
    plan = make_plan(Catalog(store), RestoreTarget("time", time=T0 + n // 2))
    count = sum(1 for _ in plan.iter_segments())
    assert count == plan.segment_count, (count, plan.segment_count)
    return {**store.counts, "total": store.total(), "seconds": time.perf_counter() - t0,
            "segments": count}


def _peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: reset at exec, where ru_maxrss keeps the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
        t0 = time.perf_counter()
        objects = _copy(local, remote)
        copy_s = time.perf_counter() - t0
        return {"objects": objects, "copy_s": copy_s,
                "commands": measure(CountingStore(remote), n)}
    finally:
        moto.stop()


def _copy(local, remote) -> int:
    """Copy every object, then the summaries (the source summary, the chunk summaries) with each
    entry's ETag and size made the copied roll-up's or chunk's, as a writer on that store would
    have made them: copied as they are, they name the local store's ETags, match nothing there,
    and every command would read the roll-ups and chunks instead. Returns the objects copied."""
    import zstandard

    from backupkit.repo import layout
    from backupkit.repo.catalog import decode_manifest, encode_manifest

    infos = {i.key: i for i in local.list("")}
    summaries = [k for k in infos if k.endswith("/" + layout.SUMMARY_NAME)]
    rest = [k for k in infos if k not in summaries]
    with ThreadPoolExecutor(16) as pool:
        copied = dict(zip(rest, pool.map(lambda k: remote.put(k, local.get_bytes(k)), rest), strict=True))
    for key in summaries:
        body = decode_manifest(key, zstandard.ZstdDecompressor().decompress(local.get_bytes(key)))
        src = body["source_id"]
        if body["type"] == "binlog_summary":  # entries by file: the file's roll-up
            entries = {layout.segment_rollup(src, f): e for f, e in body["files"].items()}
        else:  # a chunk summary: entries by chunk key
            entries = body["chunks"]
        for k, e in entries.items():
            if k in copied and (e["etag"], e["size"]) == (infos[k].etag, infos[k].size):
                e["etag"], e["size"] = copied[k].etag, copied[k].size
        remote.put(key, zstandard.ZstdCompressor(level=3).compress(encode_manifest(body)))
    return len(infos)


def _size(n: int, per_file: int, s3: bool, index_finished: bool = True, skip: tuple[str, ...] = ()
          ) -> dict:
    args = [sys.executable, __file__, "--size", str(n), "--per-file", str(per_file)]
    args += ["--on-s3"] if s3 else []
    args += [] if index_finished else ["--no-finished-index"]
    for cmd in skip:
        args += ["--skip", cmd]
    proc = subprocess.run(args, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: A 30-day window of one-second segments, 10,000 to a file, the newest file open with 500
BIG = WINDOW - WINDOW % PER_FILE + 500
#: Commands measured at the two smaller sizes only (none: every command runs at BIG too)
BIG_SKIP: tuple[str, ...] = ()


#: A file a day (86,400 one-second segments to a file, rotated at midnight): one finished day as
#: its roll-up, the open file holding DAY_OPEN entries: a few, then most of a day (86,015 entries
#: make its chain of chunks the longest a day has: 1 of 65,536 + 4 of 4,096 + 15 of 256 + 15 of 16,
#: then 15 entries in no chunk; 5,023 leaves 15 too)
DAY = 86_400
DAY_OPEN = (5_023, 86_015)


def day_rows() -> list[dict]:
    """Requests, time and peak RSS of each command with a file a day, at two fills of the open
    file: the summarizing commands must not grow with it (chunk summaries)."""
    results = [_size(DAY + k, DAY, s3=False, index_finished=False) for k in DAY_OPEN]
    rows = []
    for k, res in zip(DAY_OPEN, results, strict=True):
        for cmd, c in res["commands"].items():
            at = f"@{res['segments']} (a file a day, {k} in the open file)"
            rows.append(row("scale", f"{cmd} requests {at}", c["total"], "req", f"<= {GOAL_REQUESTS}",
                            passed=c["total"] <= GOAL_REQUESTS))
            rows.append(row("scale", f"{cmd} seconds {at} (local)", c["seconds"], "s"))
            rows.append(row("scale", f"{cmd} peak RSS {at}", c["peak_rss_mib"], "MiB", "< 200",
                            passed=c["peak_rss_mib"] < 200))
    small, big = (r["commands"] for r in results)
    for cmd in big:
        grew = big[cmd]["total"] - small[cmd]["total"]
        rows.append(row("scale", f"{cmd} requests grown from {DAY_OPEN[0]} to {DAY_OPEN[1]} entries in "
                        "the open file", grew, "req"))
    return rows


def run(quick: bool = False) -> list[dict]:
    if "--day" in sys.argv:
        return day_rows()
    s3 = "--s3" in sys.argv
    # not whole files: the newest file is still open (500 entries), as on a live source
    sizes = [10_500, 30_500] if quick else [20_500, 100_500]
    results = [_size(n, PER_FILE, s3=False) for n in sizes]
    if not quick:  # the 30-day window itself (finished files as roll-ups alone: built in minutes)
        results.append(_size(BIG, PER_FILE, s3=False, index_finished=False, skip=BIG_SKIP))
    if s3:
        results.append(_size(20_500, PER_FILE, s3=True))
    rows = []
    for res in results:
        n = res["segments"]
        for cmd, c in res["commands"].items():
            if cmd == REPLAY_INDEX:  # not a planning command: its requests grow with files
                rows.append(row("scale", f"{cmd} requests @{n} ({c['segments']} segments)", c["total"],
                                "req"))
            else:
                rows.append(row("scale", f"{cmd} requests @{n}", c["total"], "req", f"<= {GOAL_REQUESTS}",
                                passed=c["total"] <= GOAL_REQUESTS))
            rows.append(row("scale", f"{cmd} seconds @{n} (local)", c["seconds"], "s"))
            rows.append(row("scale", f"{cmd} peak RSS @{n}", c["peak_rss_mib"], "MiB", "< 200",
                            passed=c["peak_rss_mib"] < 200))
        for cmd, c in res.get("s3", {}).get("commands", {}).items():
            rows.append(row("scale", f"{cmd} seconds @{n} (S3 server)", c["seconds"], "s",
                            f"< {GOAL_SECONDS_S3}", passed=c["seconds"] < GOAL_SECONDS_S3))
    if not quick:
        rows += day_rows()
    # the growth law from the two sizes, in requests per finished binlog file
    (n1, r1), (n2, r2) = [(r["segments"], r["commands"]) for r in results[:2]]
    files1, files2 = n1 // PER_FILE, n2 // PER_FILE
    for cmd in r2:
        per_file_req = (r2[cmd]["total"] - r1[cmd]["total"]) / (files2 - files1)
        rows.append(row("scale", f"{cmd} requests per finished binlog file", per_file_req, "req"))
        for seg_per_file in (PER_FILE, 86_400):
            files = WINDOW // seg_per_file
            at = r2[cmd]["total"] + per_file_req * (files - files2)
            goal = cmd != REPLAY_INDEX  # the replay reads every file it replays, by nature
            rows.append(row("scale", f"{cmd} requests @{WINDOW} ({seg_per_file} a file: {files} files, "
                            f"extrapolated)", at, "req", f"<= {GOAL_REQUESTS}" if goal else "",
                            passed=at <= GOAL_REQUESTS if goal else None))
        rss_per_seg = (r2[cmd]["peak_rss_mib"] - r1[cmd]["peak_rss_mib"]) / (n2 - n1)
        rss_at = r2[cmd]["peak_rss_mib"] + rss_per_seg * (WINDOW - n2)
        rows.append(row("scale", f"{cmd} peak RSS @{WINDOW} (extrapolated linearly)", rss_at, "MiB",
                        "< 200", passed=rss_at < 200))
    return rows


def _arg(name: str, default: str | None = None) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


if __name__ == "__main__":
    if "--command" in sys.argv:
        print(json.dumps(_run_command(str(_arg("--repo")), int(_arg("--size") or 0),
                                      str(_arg("--command")))))
    elif "--size" in sys.argv:
        skip = tuple(sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "--skip")
        print(json.dumps(one_size(int(_arg("--size") or 0), int(_arg("--per-file") or PER_FILE),
                                  "--on-s3" in sys.argv, "--no-finished-index" not in sys.argv, skip)))
    else:
        main_for(run)
