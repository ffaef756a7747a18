"""Cold backup faults: whatever fails, the server ends up running and the error is one line.
Restore safety: crafted archives and non-empty datadirs."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import boto3
import pytest

from backupkit.errors import BackupkitError, UsageError
from backupkit.mysql.sandbox import Sandbox
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, BinlogPoint, Catalog, SourceIdentity, new_backup_id
from backupkit.repo.codec import put_object
from backupkit.storage import open_store
from backupkit.strategies.cold import ColdOptions, take_cold_backup
from backupkit.strategies.cold import staging as staging_mod
from backupkit.strategies.cold.tar import FileRecord, Root
from backupkit.strategies.cold.upload import stream_roots
from tests.support import MotoServer, run_cli

MiB = 1 << 20


@pytest.fixture(scope="module")
def server():
    """One private server for every fault test: each test must leave it running."""
    sb = Sandbox(name="coldfault").start()
    sb.sql("CREATE DATABASE app")
    sb.sql("CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(40))")
    sb.sql("INSERT INTO app.t SELECT seq, MD5(seq) FROM seq_1_to_5000", database="app")
    try:
        yield sb
    finally:
        sb.destroy()


@pytest.fixture
def ballast(server):
    """Incompressible data in the datadir so that the copy takes a while (about a second)."""
    path = server.datadir / "ballast.bin"
    with open(path, "wb") as fh:
        for _ in range(160):
            fh.write(os.urandom(MiB))
    yield path
    path.unlink(missing_ok=True)


def _running(sb: Sandbox, within: float = 0.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            if sb.sql("SELECT COUNT(*) FROM app.t") == [(5000,)]:
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _cold_args(sb: Sandbox, storage: str, *extra: str) -> list[str]:
    return ["cold", "--source", sb.url, "--storage", storage, "--start-command", sb.start_command(),
            "--pid-file", str(sb.pid_file), "--stop-timeout", "60", "--start-timeout", "60", *extra]


def _opts(sb: Sandbox, **kw) -> ColdOptions:
    return ColdOptions(start_command=sb.start_command(), pid_file=str(sb.pid_file), stop_timeout=60,
                       start_timeout=60, **kw)


def _storage_failure_line(err: BaseException) -> str:
    """The one line of a storage failure after which the server runs again."""
    assert getattr(err, "exit_code", None) == 4  # a storage error
    line = err.one_line()  # type: ignore[attr-defined]
    assert "\n" not in line and "no backup was written" in line
    assert "the server was restarted and accepts connections" in line
    return line


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def _no_backups(url: str) -> bool:
    return Catalog(open_store(url)).backup_ids() == []


def test_stop_command_failure_leaves_the_server_running(server, local_url):
    r = run_cli(*_cold_args(server, local_url, "--stop-command", "echo cannot stop it >&2; exit 3"))
    assert r.returncode == 6
    errors = _error_lines(r.stderr)
    assert len(errors) == 1 and "starting the server" not in r.stderr
    assert "stop command failed" in errors[0] and "exited 3" in errors[0]
    assert "cannot stop it" in errors[0] and "the server kept running" in errors[0]
    assert "Traceback" not in r.stderr
    assert _running(server) and _no_backups(local_url)


def test_stop_timeout_leaves_the_server_running(server, local_url):
    r = run_cli(*_cold_args(server, local_url, "--stop-command", "true", "--stop-timeout", "1"))
    assert r.returncode == 6
    errors = _error_lines(r.stderr)
    assert len(errors) == 1
    assert "did not stop within 1 s" in errors[0] and "the server kept running" in errors[0]
    assert _running(server) and _no_backups(local_url)


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 60) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}: {seen}")


def _popen_cli(*args: str) -> subprocess.Popen:
    import shutil
    import sys

    exe = shutil.which("backupkit") or str(Path(sys.executable).parent / "backupkit")
    return subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})


def _staged_copies(sb: Sandbox) -> list[Path]:
    """The staging copies left in the automatic location beside the datadir."""
    return sorted(staging_mod.auto_staging_location(sb.datadir).glob("*.staging"))


def test_sigint_during_the_copy_restarts_the_server(server, ballast, local_url):
    # --staging none: the archive is compressed and stored while the server is down
    proc = _popen_cli(*_cold_args(server, local_url, "--staging", "none"))
    _wait_for_line(proc, "copying the datadir")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    errors = _error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err
    assert "interrupted by SIGINT during the cold backup" in errors[0]
    assert "the server was restarted and accepts connections" in errors[0]
    assert _running(server) and _no_backups(local_url)
    assert not list((Path(local_url[7:]) / ".tmp").glob("*.part"))  # no half-written object left


def test_sigkill_during_the_copy_the_guardian_restarts_the_server(server, ballast, local_url):
    proc = _popen_cli(*_cold_args(server, local_url, "--staging", "none"))
    _wait_for_line(proc, "copying the datadir")
    proc.kill()
    proc.communicate(timeout=30)
    assert _running(server, within=60)
    assert _no_backups(local_url)


def test_storage_dying_mid_copy_restarts_the_server(server, ballast, monkeypatch):
    moto = MotoServer().start()
    try:
        moto.create_bucket("dying")
        monkeypatch.setenv("BACKUPKIT_S3_ENDPOINT", moto.endpoint)
        store = open_store("s3://dying/repo?max_attempts=2")
        killed = []

        def kill_storage_midway(phase) -> None:
            if phase.done > 40 * MiB and not killed:
                killed.append(phase.done)
                moto.stop()

        with pytest.raises(BackupkitError) as info:  # direct: the storage is written while the server is down
            take_cold_backup(store, server.spec, _opts(server, staging="none"),
                             progress=kill_storage_midway)
    finally:
        moto.stop()
    assert killed, "the storage was never killed"
    line = _storage_failure_line(info.value)
    assert "cannot reach S3 endpoint" in line or "lost during" in line
    assert _running(server)


@pytest.mark.parametrize("staging", ["none", "auto"])
def test_failed_start_is_loud_and_the_copy_is_kept(server, local_url, staging):
    r = run_cli("cold", "--source", server.url, "--storage", local_url,
                "--start-command", "echo no way to start >&2; exit 7", "--pid-file", str(server.pid_file),
                "--start-timeout", "20", "--staging", staging)
    kept = _staged_copies(server)
    try:
        assert r.returncode == 6
        errors = _error_lines(r.stderr)
        assert len(errors) == 1
        assert "THE SERVER IS DOWN" in errors[0] and "exited 7" in errors[0]
        assert "no way to start" in errors[0] and "START THE SERVER BY HAND" in errors[0]
        if staging == "none":
            assert "was written" in errors[0]  # the copy was complete: the backup exists
            assert len(Catalog(open_store(local_url)).backup_ids()) == 1
            assert kept == []
        else:  # the staged copy is kept and named; it is not a leftover for the next run
            assert len(kept) == 1 and f"the datadir copy is kept in {kept[0]}" in errors[0]
            assert (kept[0] / "data" / "app" / "t.ibd").is_file()
            assert staging_mod.remove_leftover_staging(kept[0].parent) == [] and kept[0].is_dir()
            assert _no_backups(local_url)
    finally:
        for k in kept:
            subprocess.run(["rm", "-rf", str(k)], check=True)
        server.proc = None
        server.start()
    assert _running(server)


def test_auto_staging_falls_back_to_direct_when_the_disk_has_no_room(server, local_url, monkeypatch,
                                                                      tmp_path, caplog):
    # 32 MiB free on a 20 GiB filesystem: less than the datadir, and far below the 2 GiB reserve
    monkeypatch.setattr(staging_mod, "disk_space", lambda path: (32 * MiB, 20 << 30))
    store = open_store(local_url)
    pid = server.pid()
    with pytest.raises(UsageError, match="has 32 MiB free"):  # an explicit folder is strict
        take_cold_backup(store, server.spec, _opts(server, staging=str(tmp_path / "stage")))
    assert server.pid() == pid and list((tmp_path / "stage").iterdir()) == []  # nothing stopped
    caplog.set_level("WARNING", logger="backupkit.strategies.cold")
    manifest = take_cold_backup(store, server.spec, _opts(server))
    staging = manifest.details["staging"]
    assert staging["mode"] == "direct" and "not enough room beside the datadir" in staging["reason"]
    assert "2.0 GiB must stay free" in staging["reason"]
    assert "not enough room beside the datadir" in caplog.text
    assert manifest.details["downtime"]["read_seconds"] > 0  # stored while down: the direct copy
    assert _staged_copies(server) == [] and _running(server)


def test_auto_staging_that_runs_out_of_room_is_removed_and_the_copy_goes_direct(server, ballast,
                                                                               local_url):
    seen: list[int] = []

    def disk_full(phase) -> None:
        if phase.name == "staging" and phase.done > 60 * MiB:
            seen.extend(p.stat().st_size for p in _staged_copies(server)[0].rglob("ballast.bin"))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    manifest = take_cold_backup(open_store(local_url), server.spec, _opts(server), progress=disk_full)
    assert seen and seen[0] > 0  # it was staging when the disk filled
    staging = manifest.details["staging"]
    assert staging["mode"] == "direct" and "ran out of room" in staging["reason"]
    assert _staged_copies(server) == [] and _running(server)
    files = {f["path"]: f for f in manifest.details["files"]}
    assert files["data/ballast.bin"]["sha256"] == hashlib.sha256(ballast.read_bytes()).hexdigest()


def test_storage_failing_during_the_upload_after_the_restart(server, s3_url, moto):
    small = server.datadir / "ballast-small.bin"  # several upload parts, a short upload
    small.write_bytes(os.urandom(24 * MiB))
    bucket = s3_url.split("/")[2]
    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    aborted: list[str] = []

    def abort_uploads(phase) -> None:  # as a lifecycle rule or another operator would
        if phase.name == "upload" and phase.done > 12 * MiB and not aborted:
            for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                aborted.append(up["Key"])

    store = open_store(f"{s3_url}?max_attempts=1")  # moto answers 500 to a part of an aborted upload
    try:
        with pytest.raises(BackupkitError) as info:
            take_cold_backup(store, server.spec, _opts(server), progress=abort_uploads)
    finally:
        small.unlink()
    assert aborted, "the upload was never aborted"
    assert "upload part of" in _storage_failure_line(info.value)
    assert _running(server) and _no_backups(s3_url)
    assert _staged_copies(server) == []  # the staged copy is removed


def test_unclean_stop_is_not_copied_and_the_server_restarts(server, local_url):
    r = run_cli(*_cold_args(server, local_url, "--stop-command", f"kill -9 $(cat {server.pid_file})"))
    assert r.returncode == 6
    errors = _error_lines(r.stderr)
    assert len(errors) == 1
    assert "did not stop cleanly" in errors[0] and "nothing was copied" in errors[0]
    assert "the server was restarted and accepts connections" in errors[0]
    assert _running(server) and _no_backups(local_url)


# -- restore safety --------------------------------------------------------------------
def _commit(store, members: list[tuple[tarfile.TarInfo, bytes | None]], records: list[dict]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    bid = new_backup_id("cold")
    obj = put_object(store, layout.cold_archive(bid), buf.getvalue())
    _manifest(store, bid, [obj], records)
    return bid


def _manifest(store, bid: str, objects, records: list[dict]) -> None:
    now = time.time()
    Catalog(store).commit_backup(BackupManifest(
        id=bid, kind="cold", source=SourceIdentity("crafted"), point=BinlogPoint(), started_at=now,
        finished_at=now, objects=objects,
        details={"roots": [{"name": "data", "path": "/x", "files": None}], "files": records}))


def _tree_state(base: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for p in sorted(base.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(base))] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[str(p.relative_to(base))] = (p.stat().st_mode, "")
    return out


@pytest.mark.parametrize("evil", ["data/../../escaped", "/tmp/backupkit-escaped-abs"])
@pytest.mark.parametrize("listed", [True, False], ids=["in-manifest", "archive-only"])
def test_crafted_archive_is_refused_and_nothing_is_written_outside(tmp_path, local_url, evil, listed):
    store = open_store(local_url)
    root = tarfile.TarInfo("data")
    root.type = tarfile.DIRTYPE
    root.mode = 0o755
    good = tarfile.TarInfo("data/good")
    good.size = 4
    bad = tarfile.TarInfo(evil)
    bad.size = 4
    records = [FileRecord(path="data", type="dir", mode=0o755).to_dict(),
               FileRecord(path="data/good", type="file", mode=0o644, size=4,
                          sha256=hashlib.sha256(b"good").hexdigest()).to_dict()]
    if listed:
        records.append(FileRecord(path=evil, type="file", mode=0o644, size=4,
                                  sha256=hashlib.sha256(b"evil").hexdigest()).to_dict())
    bid = _commit(store, [(root, None), (good, b"good"), (bad, b"evil")], records)
    error = _restore_is_refused(tmp_path, local_url, bid)
    assert "unsafe path" in error or "not in the manifest" in error
    assert not Path("/tmp/backupkit-escaped-abs").exists()


def _restore_is_refused(tmp_path: Path, local_url: str, bid: str) -> str:
    """Restore bid into tmp_path/work/data: exit 5, one error line (returned), and nothing written
    anywhere under tmp_path, not even a partial datadir."""
    work = tmp_path / "work"
    work.mkdir()
    state = _tree_state(tmp_path)
    r = run_cli("restore", bid, "--storage", local_url, "--datadir", str(work / "data"))
    assert r.returncode == 5, r.stderr
    errors = _error_lines(r.stderr)
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert _tree_state(tmp_path) == state
    return errors[0]


def _link_member(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def test_chained_symlinks_leading_outside_are_refused_by_restore(tmp_path, local_url):
    """The forged archive of issue 14 (defect 4): each link's text stays inside, the chain does not."""
    store = open_store(local_url)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    records = []
    for name in ("data", "data/d1", "data/d1/d2"):
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        members.append((info, None))
        records.append(FileRecord(path=name, type="dir", mode=0o755).to_dict())
    for name, target in (("data/d1/d2/l2", "../.."), ("data/aria_log_control", "d1/d2/l2/../OUTSIDE")):
        members.append((_link_member(name, target), None))
        records.append(FileRecord(path=name, type="symlink", target=target).to_dict())
    bid = _commit(store, members, records)
    error = _restore_is_refused(tmp_path, local_url, bid)
    assert "aria_log_control" in error and "outside" in error
    assert not (tmp_path / "work" / "OUTSIDE").exists() and not (tmp_path / "OUTSIDE").exists()


def test_restore_over_a_non_empty_datadir_needs_force_and_moves_it_aside(tmp_path, local_url):
    store = open_store(local_url)
    src = tmp_path / "src"
    (src / "db").mkdir(parents=True)
    (src / "db" / "t.ibd").write_bytes(os.urandom(50_000))
    (src / "ibdata1").write_bytes(b"\0" * 70_000 + b"x")
    bid = new_backup_id("cold")
    obj, stats = stream_roots(store, layout.cold_archive(bid), [Root("data", src)], level=1, threads=0)
    _manifest(store, bid, [obj], [r.to_dict() for r in stats.records])

    datadir = tmp_path / "live"
    (datadir / "mysql").mkdir(parents=True)
    (datadir / "mysql" / "user.MAI").write_bytes(b"precious")
    (datadir / "ib_logfile0").write_bytes(b"also precious")
    state = _tree_state(tmp_path)
    r = run_cli("restore", bid, "--storage", local_url, "--datadir", str(datadir))
    assert r.returncode == 2
    errors = _error_lines(r.stderr)
    assert len(errors) == 1 and "is not empty; nothing was changed" in errors[0] and "--force" in errors[0]
    assert _tree_state(tmp_path) == state

    r = run_cli("restore", bid, "--storage", local_url, "--datadir", str(datadir), "--force",
                "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["dry_run"] and list(plan["moved_aside"]) == [str(datadir)] and plan["files"] == 2
    assert _tree_state(tmp_path) == state

    r = run_cli("restore", bid, "--storage", local_url, "--datadir", str(datadir), "--force", "--json")
    assert r.returncode == 0, r.stderr
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("live.before-")]
    assert len(aside) == 1
    assert (aside[0] / "mysql" / "user.MAI").read_bytes() == b"precious"
    assert (aside[0] / "ib_logfile0").read_bytes() == b"also precious"
    assert (datadir / "db" / "t.ibd").read_bytes() == (src / "db" / "t.ibd").read_bytes()
    assert not (datadir / "mysql").exists()
