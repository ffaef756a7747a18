"""Cold backup: stop the service, copy its files, start it again -- with the least downtime.

The restart is guaranteed on every path out: a try/finally around the downtime, SIGINT,
SIGTERM and SIGHUP handlers installed for its duration (a second signal cannot interrupt the
restart), and a guardian process that restarts the server if this process is killed outright.

Downtime is measured from the moment the stop is requested to the moment the server accepts
a connection again, and stored in the manifest with each phase. Everything that can fail before
the stop is checked before the stop: the store is writable, the start command is set, the
staging folder has room, the pid file is readable.

By default (staging "auto") the files are copied while the server is down into a hidden folder
beside the datadir (same filesystem: an in-kernel copy, a reflink on XFS or btrfs), the server is
started, and the copy is archived and uploaded while it serves. When that folder is unsafe (no
room above a reserve, not writable, another filesystem), the archive is streamed to the store
while the server is down instead, and the manifest says why.

The manifest's point is exact (see shutdown.py).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from backupkit.errors import BackupkitError, ServerControlError, UsageError
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.control import ServiceControl, ShutdownCheck
from backupkit.mysql.guardian import RestartGuardian
from backupkit.mysql.server import current_point, identity, server_facts
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, Catalog, new_backup_id
from backupkit.repo.codec import StoredObject, put_object
from backupkit.storage.base import ObjectStore
from backupkit.strategies.cold.copy import copy_roots, plan_roots
from backupkit.strategies.cold.manifest import cold_manifest, downtime_summary
from backupkit.strategies.cold.options import ColdOptions, Phase, ProgressFn
from backupkit.strategies.cold.shutdown import (
    BinlogEnd,
    binlog_end,
    check_point_after_restart,
    preflush,
    scan_gtid_pos,
)
from backupkit.strategies.cold.signals import Interrupted, SignalGuard, SignalInterrupt
from backupkit.strategies.cold.staging import (
    auto_staging_folder,
    auto_staging_location,
    check_staging_folder,
    keep_staging_folder,
    make_staging_folder,
    remove_leftover_staging,
)
from backupkit.strategies.cold.tar import (
    Root,
    Skipped,
    WriteStats,
    scan_size,
)
from backupkit.strategies.cold.upload import ArchiveUpload, stream_roots
from backupkit.util.paths import expand_user
from backupkit.util.ratelimit import TokenBucket

log = logging.getLogger(__name__)


class ColdBackupFailed(BackupkitError):
    """A cold backup failed; the message says what happened to the server."""

    def __init__(self, message: str, hint: str | None, exit_code: int) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code




def _check_store(store: ObjectStore, catalog: Catalog) -> None:
    store.check()
    catalog.ensure_repo()  # writes the repository config on first use: proves we can write


def take_cold_backup(store: ObjectStore, spec: ConnSpec, opts: ColdOptions, *,
                     catalog: Catalog | None = None, progress: ProgressFn | None = None,
                     notify: Callable[[str], None] | None = None) -> BackupManifest:
    """Stop the server, copy its files to the store (or to staging), start it, commit a manifest.

    The server is started again on every path out. On failure the raised error says what
    failed and what happened to the server; no manifest is written, so no backup exists."""
    job = ColdJob(store, spec, opts, catalog or Catalog(store), progress, notify)
    try:
        job.preflight()
        with SignalGuard() as guard:
            job.guard = guard
            job.downtime()  # stop, check, copy; the server is started again whatever happens
            try:
                job.after_restart()
            except SignalInterrupt as exc:
                job.abandon()
                raise Interrupted(f"interrupted by {exc.name} while the archive was being stored; "
                                  "the server is running; no backup was written") from None
        return job.commit()
    finally:
        job.remove_staged()  # gone after the upload or a failure; kept only when the start failed


class ColdJob:
    """One cold backup, phase by phase (see take_cold_backup)."""

    def __init__(self, store: ObjectStore, spec: ConnSpec, opts: ColdOptions, catalog: Catalog,
                 progress: ProgressFn | None, notify: Callable[[str], None] | None) -> None:
        self.store, self.spec, self.opts, self.catalog = store, spec, opts, catalog
        self.report = progress or (lambda p: None)
        self.say = notify or (lambda msg: None)
        self.guard = SignalGuard()
        self.t: dict[str, float | None] = {"stop_requested": None, "stopped": None,
                                           "start_requested": None, "accepting": None}
        self.mono: dict[str, float] = {}
        self.failure: BaseException | None = None
        self.start_failure: BackupkitError | None = None
        self.check: ShutdownCheck | None = None
        self.end: BinlogEnd | None = None
        self.archive: StoredObject | None = None
        self.stats: WriteStats | None = None
        self.upload: ArchiveUpload | None = None
        self.staging_mode = "direct"  # auto | dir | direct
        self.staging_dir: Path | None = None  # <backup id>.staging, ours
        self.staging_kept = False
        self.staged_roots: list[Root] | None = None
        self.staging_skipped: list[Skipped] = []
        self.staging_info: dict = {}
        self.copied = 0

    # -- before the stop: everything that can fail is checked here --------------------
    def preflight(self) -> None:
        opts = self.opts
        if not opts.start_command:
            raise UsageError("a cold backup needs a start command to bring the server back",
                             "give --start-command or set [source] start_command in the policy")
        self.ctl = ServiceControl(self.spec, stop_command=opts.stop_command,
                                  start_command=opts.start_command, pid_file=opts.pid_file,
                                  stop_timeout=opts.stop_timeout, start_timeout=opts.start_timeout)
        self.probe = probe = self.ctl.probe()
        conn = connect(self.spec)
        try:
            facts = server_facts(conn)
            self.pre_point = current_point(conn, facts) if probe.log_bin else None
        finally:
            conn.close()
        self.source = identity(facts, opts.source_id)
        self.datadir = expand_user(opts.datadir).absolute() if opts.datadir else probe.datadir
        if not self.datadir.is_dir() or not os.access(self.datadir, os.R_OK | os.X_OK):
            raise UsageError(f"datadir {self.datadir} is not a readable folder on this host",
                             "a cold backup runs on the database host, as a user that can read it")
        self.roots = plan_roots(probe, self.datadir, list(opts.paths))
        _, self.est_bytes = scan_size(self.roots)
        _check_store(self.store, self.catalog)
        self.backup_id = new_backup_id("cold")
        self.archive_key = layout.cold_archive(self.backup_id, 0)
        staging = (opts.staging or "auto").strip()
        if staging.lower() in ("auto", "none"):
            staging, base = staging.lower(), None
        else:
            base = check_staging_folder(expand_user(staging).absolute(), self.roots, self.est_bytes)
        self.config_data: bytes | None = None
        if opts.config_file:
            try:
                self.config_data = expand_user(opts.config_file).read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read config file {opts.config_file}: {exc.strerror}") from None
        self.threads = opts.compression_threads if opts.compression_threads >= 0 else (os.cpu_count() or 1)
        # last: nothing after this can fail, so the staging folder made here cannot be left behind
        self._choose_staging(staging, base)

    def _choose_staging(self, staging: str, base: Path | None) -> None:
        """auto: beside the datadir when safe, else direct (and why); none: direct; a folder: there."""
        removed = remove_leftover_staging(auto_staging_location(self.datadir))
        if base is not None:
            try:
                self.staging_dir = make_staging_folder(base, self.backup_id)
            except OSError as exc:
                raise UsageError(f"cannot create a folder in staging folder {base}: {exc.strerror}") from None
            self.staging_mode = "dir"
        elif staging == "auto":
            folder, why = auto_staging_folder(self.datadir, self.roots, self.est_bytes)
            if folder is not None:
                try:
                    folder.mkdir(mode=0o700, exist_ok=True)
                    os.chmod(folder, 0o700)
                    self.staging_dir = make_staging_folder(folder, self.backup_id)
                    self.staging_mode = "auto"
                except OSError as exc:
                    why = f"cannot create a staging folder in {folder}: {exc.strerror}"
            if self.staging_dir is None:
                self._go_direct(f"automatic staging is not safe here: {why}")
        else:
            self._go_direct("staging none was asked")
        self.staging_info["mode"] = self.staging_mode
        if self.staging_dir is not None:
            self.staging_info["path"] = str(self.staging_dir)
        if removed:
            self.staging_info["removed_leftovers"] = removed

    def _go_direct(self, reason: str) -> None:
        """Stream the archive while the server is down, and record why."""
        self.staging_mode, self.staging_dir = "direct", None
        self.staging_info.pop("path", None)
        self.staging_info.update(mode="direct", reason=reason)
        if not reason.startswith("staging none"):
            log.warning("cold backup without staging (the downtime includes compressing and "
                        "storing the archive): %s", reason)

    def _count(self, n: int) -> None:
        self.copied += n
        self.report(Phase("staging" if self.staging_dir else "copy", self.copied, self.est_bytes))

    # -- the downtime ------------------------------------------------------------------
    def downtime(self) -> None:
        """Stop, confirm, copy (or read everything into the archive), and always start again."""
        t, mono, ctl, probe = self.t, self.mono, self.ctl, self.probe
        self.preflush_info, undo_preflush = preflush(self.spec, self.opts.preflush_timeout)
        old_fast = ctl.prepare_clean_shutdown()
        guardian = RestartGuardian(ctl) if self.opts.guardian else None
        self.started_at = time.time()
        stop_sent = False
        try:
            if guardian is not None:
                guardian.start()
                guardian.arm(probe.pid)
            self.guard.raise_pending()
            self.say("stopping the server")
            stop_sent = True
            t["stop_requested"], mono["stop_requested"] = time.time(), time.monotonic()
            ctl.request_stop()
            if not ctl.wait_exit(probe.pid, self.opts.stop_timeout):
                raise ServerControlError(f"the server (pid {probe.pid}) did not stop within "
                                         f"{self.opts.stop_timeout:.0f} s")
            t["stopped"], mono["stopped"] = time.time(), time.monotonic()
            self.check = check = ctl.check_shutdown(probe.pid)
            self.end = binlog_end(probe)
            if self.end is not None:
                check.binlog_closed = bool(self.end.closed)
            if not check.clean:
                raise ServerControlError("the server did not stop cleanly ("
                                         + "; ".join(check.problems()) + "), so nothing was copied")
            self.say("copying the datadir" + (" to staging" if self.staging_dir else ""))
            if self.staging_dir is not None:
                self._stage()
            if self.staging_dir is None:
                self.upload = ArchiveUpload(self.store, self.archive_key, self.roots,
                                            level=self.opts.compression_level, threads=self.threads,
                                            on_bytes=self._count)
                self.upload.start()  # (assigned first: a signal inside start() still cancels it)
                self.upload.wait_read()  # every file is read: the rest needs no downtime
                mono["read"] = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - every path out restarts the server
            self.failure = exc
            if self.upload is not None:
                self.upload.cancel()
        finally:
            with self.guard.deferred():
                if stop_sent:
                    self._restart()
                else:
                    ctl.undo_prepare(old_fast)
                    undo_preflush()
                if guardian is not None and self.start_failure is None:
                    guardian.done()
                elif guardian is not None:
                    guardian.close()  # it will try once more on its own

    def _stage(self) -> None:
        """Copy the roots into the staging folder. An automatic staging copy that runs out of
        room is removed at once (the database needs its disk) and the direct copy follows."""
        assert self.staging_dir is not None
        c0 = time.monotonic()
        try:
            self.staged_roots, self.staging_skipped = copy_roots(self.roots, self.staging_dir,
                                                                 self._count)
        except OSError as exc:
            if self.staging_mode != "auto" or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            copied, seconds = self.copied, round(time.monotonic() - c0, 3)
            self.remove_staged()
            self.staged_roots, self.staging_skipped, self.copied = None, [], 0
            self._go_direct(f"the staging copy beside the datadir ran out of room after "
                            f"{copied >> 20} MiB ({exc.strerror}); it was removed")
            self.staging_info["lost_seconds"] = seconds
            self.say("copying the datadir")
            return
        self.staging_info.update(copy_seconds=round(time.monotonic() - c0, 3), bytes=self.copied)

    def _restart(self) -> None:
        try:
            started = self.ctl.ensure_running(stop_sent=True, pid=self.probe.pid,
                                              on_start=lambda: self.say("starting the server"))
            if started is not None:
                self.t["start_requested"], self.t["accepting"] = started.requested_at, started.accepting_at
                self.mono["start_requested"] = started.requested_mono
                self.mono["accepting"] = started.accepting_mono
        except BackupkitError as exc:
            self.start_failure = exc
        except BaseException as exc:  # noqa: BLE001
            self.start_failure = ServerControlError(f"THE SERVER IS DOWN: restart failed: {exc}",
                                                    "START THE SERVER BY HAND")

    # -- after the restart ----------------------------------------------------------------
    def abandon(self) -> None:
        """Stop any upload still running and remove the staging copy (ours)."""
        if self.upload is not None:
            self.upload.cancel()
            self.upload.join()
        self.remove_staged()

    def remove_staged(self) -> None:
        """Remove our staging folder, unless it is kept because the server did not start."""
        if self.staging_dir is not None and not self.staging_kept:
            shutil.rmtree(self.staging_dir, ignore_errors=True)

    def after_restart(self) -> None:
        """Finish storing the archive (the tail of a direct copy, or the staged copy)."""
        if self.upload is not None and self.failure is None:
            try:
                self.archive, self.stats = self.upload.wait_done()
            except BaseException as exc:  # noqa: BLE001
                self.failure = exc
        if self.upload is not None:
            self.upload.cancel()  # a no-op when it is done
            self.upload.join()
        self.downtime_record = downtime_summary(self.t, self.mono)
        if "read" in self.mono and "stopped" in self.mono:
            self.downtime_record["read_seconds"] = round(self.mono["read"] - self.mono["stopped"], 4)
        if self.start_failure is not None:
            self._raise_start_failure()
        if self.failure is not None:
            self.abandon()
            went_down = self.t["stopped"] is not None or self.t["accepting"] is not None
            raise _explain(self.failure, self.downtime_record, went_down) from self.failure
        self.guard.raise_pending()
        if self.staging_dir is not None and self.staged_roots is not None:
            try:
                self._upload_staged()
            except Exception as exc:  # the server runs; say so in the one line
                raise _explain(exc, self.downtime_record, True) from exc
            finally:
                self.remove_staged()

    def _raise_start_failure(self) -> None:
        exc = self.start_failure
        assert exc is not None
        if self.staging_dir is not None and self.staged_roots is not None:
            self.staging_kept = True
            keep_staging_folder(self.staging_dir, "the server did not start after the copy")
            exc.message += f"; the datadir copy is kept in {self.staging_dir}"
        elif self.archive is not None and self.failure is None:
            point_check = {"checked": False, "reason": "the server did not start"}
            self.catalog.commit_backup(self._manifest([self.archive], point_check))
            exc.message += f"; backup {self.backup_id} was written"
        raise exc

    def _upload_staged(self) -> None:
        self.say("uploading the staged copy")
        u0 = time.monotonic()
        done = 0

        def count(n: int) -> None:
            nonlocal done
            done += n
            self.report(Phase("upload", done, self.staging_info.get("bytes", 0)))

        assert self.staged_roots is not None
        limiter = TokenBucket(self.opts.max_rate) if self.opts.max_rate else None
        io_info: dict = {}
        self.archive, self.stats = stream_roots(self.store, self.archive_key, self.staged_roots,
                                                level=self.opts.compression_level,
                                                threads=self.threads, on_bytes=count,
                                                limiter=limiter, idle_io=self.opts.idle_io,
                                                io_info=io_info)
        self.staging_info["upload_seconds"] = round(time.monotonic() - u0, 3)
        self.staging_info.update(max_rate=self.opts.max_rate, **io_info)
        self.stats.skipped[:0] = self.staging_skipped

    def commit(self) -> BackupManifest:
        """Check the point against the running server, then write the manifest: the commit."""
        if self.archive is None or self.stats is None:
            raise BackupkitError("internal error: the copy produced no archive")
        objects = [self.archive]
        if self.config_data is not None:
            objects.append(put_object(self.store, layout.cold_config(self.backup_id), self.config_data,
                                      level=self.opts.compression_level))
        end = self.end
        point_check = check_point_after_restart(self.spec, end, self.probe.flavor) if end \
            else {"checked": False, "reason": "binlog disabled"}
        if end is not None and not end.gtid and self.probe.flavor == "mariadb":
            if point_check.get("checked"):
                end.gtid = point_check["binlog_gtid_pos"]
                end.gtid_source = "BINLOG_GTID_POS after the restart"
            else:
                end.gtid = scan_gtid_pos(Path(end.path), end.pos)
                end.gtid_source = "binlog events"
            point_check["equal"] = True if point_check.get("checked") else None
        manifest = self._manifest(objects, point_check)
        self.catalog.commit_backup(manifest)
        if point_check.get("checked") and not point_check.get("equal"):
            log.warning("recorded GTID %s differs from BINLOG_GTID_POS %s", end.gtid if end else "",
                        point_check.get("binlog_gtid_pos"))
        return manifest

    def _manifest(self, objects: list[StoredObject], point_check: dict) -> BackupManifest:
        assert self.stats is not None
        return cold_manifest(self.backup_id, self.source, self.end, self.pre_point, self.probe, self.roots,
                         self.datadir, self.stats, objects, self.downtime_record, self.check, self.opts,
                         self.preflush_info, self.staging_info, self.started_at, point_check)


def _explain(exc: BaseException, downtime: dict, went_down: bool) -> BackupkitError:
    """One line: what failed, then what the server's state is now."""
    if isinstance(exc, KeyboardInterrupt):
        exc = Interrupted("interrupted by SIGINT")
    elif isinstance(exc, SignalInterrupt):
        exc = Interrupted(f"interrupted by {exc.name}")
    if isinstance(exc, BackupkitError):
        msg, hint, code = exc.message, exc.hint, exc.exit_code
    elif isinstance(exc, OSError):
        msg, hint, code = f"copy failed: {exc.strerror or exc}" + (
            f": {exc.filename}" if exc.filename else ""), None, 1
    else:
        msg, hint, code = f"cold backup failed: {type(exc).__name__}: {exc}", None, 1
    if isinstance(exc, Interrupted):
        msg = f"{msg} during the cold backup"
    if went_down and downtime.get("total_seconds") is not None:
        state = f"the server was restarted and accepts connections (down {downtime['total_seconds']:.1f} s)"
    elif went_down:
        state = "the server is running"
    else:
        state = "the server kept running"
    return ColdBackupFailed(f"{msg.rstrip('. ')}; {state}; no backup was written", hint, code)
