"""Helpers of the binlog shipping tests: CLI runs of the shipper, a write load, and the check
that the shipped segments are the server's binlog byte for byte."""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from backupkit.mysql import binlog_events as be
from backupkit.mysql.workload import WriteLoad
from backupkit.repo.catalog import Catalog
from backupkit.repo.codec import read_object
from backupkit.repo.coverage import build_runs
from backupkit.storage import open_store
from backupkit.strategies.binlog import ShipOptions, Shipper
from tests.support import run_cli, wait_for


def cli_env(sandbox, storage_url: str, **extra: str) -> dict[str, str]:
    env = {"BACKUPKIT_SOURCE": sandbox.url, "BACKUPKIT_STORAGE": storage_url}
    endpoint = os.environ.get("BACKUPKIT_S3_ENDPOINT")
    if endpoint:
        env["BACKUPKIT_S3_ENDPOINT"] = endpoint
    env.update(extra)
    return env


def ship_once(sandbox, storage_url: str, *args: str, env: dict[str, str] | None = None):
    r = run_cli("binlog", "ship", "--once", "--json", *args,
                env={**cli_env(sandbox, storage_url), **(env or {})}, timeout=120)
    return r


def ship_in_process(store, spec, source_id: str, server_id: int, **options) -> None:
    """One shipper run in this process: the binlog up to the server's position now."""
    Shipper(store, spec, ShipOptions(source_id=source_id, until_current=True, server_id=server_id,
                                     sync_interval=0.2, **options)).run()


def start_shipper(sandbox, storage_url: str, log_path: Path, *args: str,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """A continuous `backupkit binlog ship` process."""
    exe = shutil.which("backupkit") or str(Path(sys.executable).parent / "backupkit")
    full_env = {**os.environ, **cli_env(sandbox, storage_url), **(env or {})}
    fh = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([exe, "binlog", "ship", "--sync-interval", "0.2", "--heartbeat", "0.5",
                             *args], stdout=fh, stderr=fh, env=full_env, start_new_session=True)
    proc._log = fh  # type: ignore[attr-defined]
    return proc


def stop_proc(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait()
    proc._log.close()  # type: ignore[attr-defined]
    return rc


def shipping_writer(sandbox, rotate_every: float | None = None, pause: float = 0.002) -> WriteLoad:
    """Commits small transactions continuously (every 17th a multi-statement one; FLUSH BINARY
    LOGS every rotate_every seconds); survives a server restart by reconnecting."""
    last_rotate = [time.monotonic()]

    def step(cur, i: int) -> None:
        if i % 17 == 0:
            cur.execute("BEGIN")
            for _ in range(5):
                cur.execute("INSERT INTO w.t (k, v) VALUES (%s, REPEAT('x', 200))", (i,))
            cur.execute("UPDATE w.t SET k = k + 1 WHERE id = %s", (i // 2 + 1,))
            cur.execute("COMMIT")
        else:
            cur.execute("INSERT INTO w.t (k, v) VALUES (%s, 'v')", (i,))
        if rotate_every and time.monotonic() - last_rotate[0] > rotate_every:
            cur.execute("FLUSH BINARY LOGS")
            last_rotate[0] = time.monotonic()

    return WriteLoad(sandbox.connect, step, pause=pause, name="shipping-writer")


def make_table(sandbox) -> None:
    sandbox.sql("CREATE DATABASE IF NOT EXISTS w")
    sandbox.sql("CREATE TABLE IF NOT EXISTS w.t (id INT PRIMARY KEY AUTO_INCREMENT, k INT, v TEXT)")


def purge_to_current(sb) -> None:
    """PURGE BINARY LOGS up to the server's current file; PURGE keeps files until InnoDB's binlog
    checkpoint moves on (FACTS.md), so it is retried until only the current file is left."""
    def done() -> bool:
        cur = sb.sql("SHOW MASTER STATUS")[0][0]
        sb.sql(f"PURGE BINARY LOGS TO '{cur}'")
        return [r[0] for r in sb.sql("SHOW BINARY LOGS")] == [cur]
    wait_for(done, 20, "the purge", interval=0.3)


def segments_of(storage_url: str) -> tuple[Catalog, str, list]:
    store = open_store(storage_url)
    cat = Catalog(store)
    sources = cat.sources()
    assert len(sources) == 1, sources
    return cat, sources[0], cat.segments(sources[0])


def assert_complete(sandbox, storage_url: str, until_server_end: bool = True) -> dict:
    """The shipped events, concatenated in order, equal the server's binlog byte for byte
    (only the in-use flag of the live file's FDE may differ): nothing missing, nothing doubled.
    Returns counts for further checks."""
    cat, sid, segs = segments_of(storage_url)
    assert segs, "no segments"
    runs = build_runs(segs, cat.gaps(sid))
    assert len(runs) == 1, [(r.start, r.end) for r in runs]
    # no overlap: each segment starts where the previous ended (within a file)
    by_file: dict[str, list[tuple[int, bytes]]] = {}
    prev = None
    for s in segs:
        if prev is not None and prev.binlog_file == s.binlog_file:
            assert s.start_pos == prev.end_pos, f"overlap or hole: {prev.key} then {s.key}"
        prev = s
        data = read_object(cat.store, s.object)
        assert data[:4] == be.MAGIC
        events = list(be.iter_events(io.BytesIO(data), verify_checksums=True))
        if s.start_pos != 4:
            assert events and events[0][0].type == be.FORMAT_DESCRIPTION_EVENT
            assert not events[0][0].flags & be.LOG_EVENT_BINLOG_IN_USE_F
            events = events[1:]
        body = b"".join(raw for _, raw in events)
        assert len(body) == s.end_pos - s.start_pos, s.key
        by_file.setdefault(s.binlog_file, []).append((s.start_pos, body))
    files = sorted(by_file)
    total = 0
    for n, f in enumerate(files):
        parts = by_file[f]
        start = parts[0][0]
        got = b"".join(p for _, p in parts)
        real = (sandbox.datadir / f).read_bytes()
        if n > 0:
            assert start == 4, f"{f} does not start at its first event"
        if n < len(files) - 1 or until_server_end:
            assert start + len(got) == len(real), f"{f}: shipped to {start + len(got)}, file has {len(real)}"
        exp = bytearray(real[start:start + len(got)])
        got_b = bytearray(got)
        if start == 4:  # only the in-use flag of the FDE may differ
            exp[17] &= ~be.LOG_EVENT_BINLOG_IN_USE_F & 0xFF
            got_b[17] &= ~be.LOG_EVENT_BINLOG_IN_USE_F & 0xFF
        assert got_b == exp, f"{f}: shipped bytes differ from the server's"
        total += len(got)
    # every file between the first and the last shipped is there
    for a, b in zip(files, files[1:], strict=False):
        assert int(b.rsplit(".", 1)[1]) == int(a.rsplit(".", 1)[1]) + 1, (a, b)
    txns = sum(s.transactions for s in segs)
    return {"segments": len(segs), "files": files, "bytes": total, "transactions": txns,
            "source_id": sid}


def mariadb_binlog_reads(data: bytes, tmp_path: Path) -> str:
    path = tmp_path / f"seg-{random.randrange(1 << 30)}.bin"
    path.write_bytes(data)
    r = subprocess.run(["mariadb-binlog", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout
