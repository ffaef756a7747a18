"""Killing the S3 server in the middle of a compaction run (issue 16: compaction is crash-safe).

A real source shipped to a real S3 server (moto_server) by `backupkit binlog ship --once`, then
compaction runs that lose the server (SIGKILL of the moto_server process) at three points: while
the merged object uploads, right after the merged segment is committed (before its record and any
delete), and after its record is written (before the small entries are deleted). moto_server keeps
its objects in RAM, so its recorder is on (MOTO_ENABLE_RECORDING: every request it received is
appended to a file) and a restart on the same port replays them: the server comes back with the
state it had when it died, as a real S3 would. Each killed run must end promptly with a one-line
error (no hang), nothing shipped may be lost (one unbroken run of binlog up to the shipped
position; restores to --to-time marks and --latest give the source's CHECKSUM TABLE), and a later
run must finish the compaction (nothing superseded, no record, no piece's data left).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
import uuid

import pytest

from backupkit.errors import StorageError
from backupkit.operations import compact as cp
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.repo.coverage import build_runs
from backupkit.restore.pitr import restore_to_point
from backupkit.restore.stoppoint import parse_target, time_target
from backupkit.storage import open_store
from backupkit.util.streams import iter_chunks
from tests.support import MotoServer, cross_second, run_cli, table_checksums
from tests.support.scale import CountingStore
from tests.support.shipping import cli_env, make_table

pytestmark = pytest.mark.timeout(900)


class _Moto:
    """A moto_server whose state survives a kill: its recorder writes every request to a file,
    and a restart on the same port replays them."""

    def __init__(self, tmp_path) -> None:
        self.env = {"MOTO_ENABLE_RECORDING": "1",
                    "MOTO_RECORDER_FILEPATH": str(tmp_path / "moto-requests.jsonl")}
        self.server = MotoServer(env=self.env).start()
        self.kills = 0

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def kill(self) -> None:
        proc = self.server.proc
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.kills += 1

    def restart(self) -> None:
        port = self.server.port
        self.server = MotoServer(port=port, env=self.env).start()
        assert self.server.port == port, "the restarted server must answer on the same port"
        req = urllib.request.Request(self.endpoint + "/moto-api/recorder/replay-recording",
                                     method="POST")
        urllib.request.urlopen(req, timeout=300).read()

    def stop(self) -> None:
        if self.server.proc is not None and self.server.proc.poll() is None:
            self.server.stop()


class _KillOnMergedUpload(CountingStore):
    """The store as compaction uses it; the S3 server is killed once the merged object's stream
    has begun (its first block read), before its PUT completes."""

    def __init__(self, inner, kill) -> None:
        super().__init__(inner)
        self.kill = kill

    def put(self, key, data):
        if "/data/" in key:  # the only data compaction writes: the merged object
            def killed_midway():
                blocks = iter_chunks(data)
                yield next(blocks, b"")
                self.kill()
                yield from blocks
            return super().put(key, killed_midway())
        return super().put(key, data)


def _killed_run(catalog: Catalog, sid: str, **kw) -> StorageError:
    """A compaction run that loses the server: it must end (no hang) with a one-line error."""
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = cp.compact_source(catalog, sid, older_than=0, grace=0, **kw)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            out["error"] = exc

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(180)
    assert not th.is_alive(), "a compaction run that lost the S3 server hangs"
    err = out.get("error")
    assert isinstance(err, StorageError), out
    line = err.one_line()
    assert "\n" not in line and "S3" in line, line
    return err


def _position(src) -> tuple[str, int]:
    f, p = src.sql("SHOW MASTER STATUS")[0][:2]
    return f, int(p)


def _nothing_lost(catalog: Catalog, sid: str, src) -> list:
    """One unbroken run of binlog from the first shipped segment to the source's position."""
    segs = catalog.segments(sid)
    runs = build_runs(segs)
    assert len(runs) == 1, [(s.binlog_file, s.start_pos, s.end_pos) for s in segs]
    assert catalog.shipped_position(sid) == _position(src)
    return segs


def _restore(store, catalog, target) -> dict:
    from backupkit.mysql.sandbox import Sandbox

    tgt = Sandbox(name="compact-crash-t").start()
    try:
        restore_to_point(store, catalog, target, tgt.spec, report_loss=False)
        return table_checksums(tgt, ["w"])
    finally:
        tgt.destroy()


def _ship_rounds(src, env, first: int, n: int) -> list[dict]:
    """n rounds of inserts, each shipped by `binlog ship --once`, each ending with a --to-time
    mark: a second in which nothing commits, and the checksums then."""
    marks = []
    for i in range(first, first + n):
        src.sql(f"INSERT INTO w.t (k, v) SELECT seq, 'r{i}' FROM w.seq_1_to_{20 + i}")
        src.sql(f"UPDATE w.t SET v = CONCAT(v, '.{i}') WHERE k % 3 = {i % 3}")
        r = run_cli("binlog", "ship", "--once", "--json", env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        cross_second()
        marks.append({"time": float(int(time.time())), "sums": table_checksums(src, ["w"])})
        cross_second()
    return marks


def test_killing_the_s3_server_mid_compaction_loses_nothing_and_a_later_run_finishes(
        tmp_path, monkeypatch):
    from backupkit.mysql.sandbox import Sandbox

    moto = _Moto(tmp_path)
    src = None
    try:
        bucket = f"bk-{uuid.uuid4().hex[:12]}"
        moto.server.create_bucket(bucket)
        monkeypatch.setenv("BACKUPKIT_S3_ENDPOINT", moto.endpoint)
        url = f"s3://{bucket}/repo"
        src = Sandbox(name="compact-crash-src").start()
        env = cli_env(src, url, BACKUPKIT_S3_ENDPOINT=moto.endpoint)
        make_table(src)
        r = run_cli("snapshot", "--json", env=env)
        assert r.returncode == 0, r.stderr
        marks = _ship_rounds(src, env, 0, 5)
        catalog = Catalog(open_store(url))
        (sid,) = catalog.sources()
        shipped = len(catalog.segments(sid))

        # 1. killed while the merged object uploads: nothing committed, nothing deleted
        _killed_run(Catalog(_KillOnMergedUpload(open_store(url), moto.kill)), sid)
        moto.restart()
        catalog = Catalog(open_store(url))
        segs = _nothing_lost(catalog, sid, src)
        assert not any(s.merged for s in segs) and len(segs) == shipped

        # 2. killed right after the merged segment's commit: its record and every delete fail
        committed = []
        _killed_run(catalog, sid, after_commit=lambda info: (committed.append(info), moto.kill()))
        moto.restart()
        store = open_store(url)
        catalog = Catalog(store)
        segs = _nothing_lost(catalog, sid, src)
        assert store.stat(committed[0].key) is not None  # committed before the server died
        assert len([s for s in segs if not s.merged]) == shipped  # no small segment deleted
        assert _restore(store, catalog, time_target(marks[2]["time"])) == marks[2]["sums"]
        res = cp.compact_source(catalog, sid, older_than=0, grace=0)  # a later run finishes
        assert res.deleted and res.waiting == 0
        segs = _nothing_lost(catalog, sid, src)
        assert cp.superseded(segs) == [] and cp.pending(catalog, sid) == []
        assert any(s.merged for s in segs) and len(segs) < shipped

        # 3. more shipped, then killed after the record, before the small entries are deleted
        marks += _ship_rounds(src, env, 5, 4)
        _killed_run(catalog, sid, step=lambda s: moto.kill() if s == "recorded" else None)
        moto.restart()
        store = open_store(url)
        catalog = Catalog(store)
        segs = _nothing_lost(catalog, sid, src)
        assert cp.pending(catalog, sid) and cp.superseded(segs)  # recorded, nothing deleted
        res = cp.compact_source(catalog, sid, older_than=0, grace=0)
        assert res.deleted and res.waiting == 0
        segs = _nothing_lost(catalog, sid, src)
        assert cp.superseded(segs) == [] and cp.pending(catalog, sid) == []
        data = [i.key for i in store.list(layout.binlog_prefix(sid)) if "/data/" in i.key]
        assert sorted(data) == sorted(s.object.key for s in segs)  # no piece's data left
        assert moto.kills == 3

        # every event is still there: restores inside the compacted stretches are exact
        inside = marks[6]
        assert _restore(store, catalog, time_target(inside["time"])) == inside["sums"]
        assert _restore(store, catalog, parse_target(latest=True)) == table_checksums(src, ["w"])
        r = run_cli("verify", "--all", "--json", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        if src is not None:
            src.destroy()
        moto.stop()
