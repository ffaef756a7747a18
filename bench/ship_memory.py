#!/usr/bin/env python3
"""Peak RSS and requests of the shipper's storing half with one binlog file open for a day
(issue 16: peak RSS of every command under 200 MiB): a real Shipper's SegmentWriter._store
(strategies/binlog/upload.py: data object, index entry, the open file's chunks and chunk
summary, the head) is driven with synthetic one-second segments (tests/support/scale.py
synthetic_segment) all in one binlog file, which is then finished (its whole roll-up written,
the head naming it). No server: the segments' bytes are a few bytes each, the lease is held.
Each size runs in a process of its own (VmHWM); two sizes give the growth per segment.

Usage: bench/ship_memory.py [--quick] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import main_for, row  # noqa: E402


def _hwm() -> float:
    return next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:"))


class _Lease:
    """A lease always held (no other shipper in this bench)."""

    held = False

    def ensure(self) -> None:
        pass


def _held(rollups) -> int:
    """The entries the open file's roll-up holds (before the fix: every chunk's entries)."""
    if hasattr(rollups, "held"):
        return rollups.held()
    return len(rollups.pending) + sum(len(e) for _, _, e in rollups.levels)


def _ship(url: str, n: int) -> dict:
    from backupkit.mysql.connection import ConnSpec
    from backupkit.repo.catalog import Catalog
    from backupkit.storage import open_store
    from backupkit.strategies.binlog.options import ShipOptions, ShipResult
    from backupkit.strategies.binlog.shipper import Shipper
    from backupkit.strategies.binlog.upload import PendingSegment
    from tests.support.scale import SOURCE, CountingStore, no_fsync, synthetic_segment

    store = CountingStore(open_store(url))
    Catalog(store).ensure_repo()
    shipper = Shipper(store, ConnSpec(), ShipOptions(source_id=SOURCE))
    shipper.source_id = SOURCE
    shipper.result = ShipResult(SOURCE, 1)
    shipper.lease = _Lease()  # type: ignore[assignment]
    base = _hwm()
    t0 = time.perf_counter()
    held = 0
    with no_fsync():
        for i in range(n):
            seg = synthetic_segment(i, n)  # one file of n segments, the last one closing it
            d = {f.name: getattr(seg, f.name) for f in fields(seg) if f.name != "object"}
            shipper._store(PendingSegment(b"", b"segment %d" % i, 9, d))
            if shipper._open_rollups is not None:
                held = max(held, _held(shipper._open_rollups))
            if i == n - 2:
                open_hwm, open_counts = _hwm(), dict(store.counts)
        for t in shipper._rollups:  # the finished file's roll-up
            t.join()
        shipper._write_head(shipper._last_info)  # as the next commit would: it names the file
    head = Catalog(store).head(SOURCE)
    return {"segments": n, "seconds": time.perf_counter() - t0, "baseline_mib": base,
            "open_peak_rss_mib": open_hwm, "peak_rss_mib": _hwm(), "held_entries_max": held,
            "requests_open": open_counts, "requests": dict(store.counts),
            "requests_per_segment": store.total() / n,
            "rolled_up": bool(head and synthetic_segment(0, n).binlog_file in head.rollups)}


def one_size(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, __file__, "--segments", str(n), "--repo", f"file://{tmp}/repo"],
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        print(proc.stdout.strip().splitlines()[-1], file=sys.stderr)  # the raw figures
        return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    sizes = [2_000, 8_000] if quick else [20_000, 86_400]
    results = [one_size(n) for n in sizes]
    rows = []
    for r in results:
        n = r["segments"]
        rows.append(row("ship-memory", f"shipper peak RSS, file open @{n}", r["open_peak_rss_mib"], "MiB",
                        "< 200", passed=r["open_peak_rss_mib"] < 200))
        rows.append(row("ship-memory", f"shipper peak RSS, file finished @{n}", r["peak_rss_mib"], "MiB",
                        "< 200", passed=r["peak_rss_mib"] < 200))
        rows.append(row("ship-memory", f"entries held at most @{n}", r["held_entries_max"], "entries"))
        rows.append(row("ship-memory", f"requests per segment @{n}", r["requests_per_segment"], "req"))
        rows.append(row("ship-memory", f"seconds @{n} (local)", r["seconds"], "s"))
        for what, count in sorted(r["requests"].items()):
            rows.append(row("ship-memory", f"{what} requests @{n}", count, "req"))
    (n1, r1), (n2, r2) = [(r["segments"], r) for r in results]
    for what in ("open_peak_rss_mib", "peak_rss_mib"):
        rows.append(row("ship-memory", f"{what} per 1,000 segments",
                        (r2[what] - r1[what]) / (n2 - n1) * 1000, "MiB"))
    return rows


if __name__ == "__main__":
    if "--segments" in sys.argv:
        i = sys.argv.index
        print(json.dumps(_ship(sys.argv[i("--repo") + 1], int(sys.argv[i("--segments") + 1]))))
    else:
        main_for(run)
