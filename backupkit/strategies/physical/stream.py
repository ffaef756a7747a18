"""mariadb-backup's mbstream into stored parts: through ``zstd`` children, or the Python codec.

Each stored part is one zstd frame of at most ``part_size_mb`` bytes of the stream, so every part
decodes alone and its ``raw_size`` is exact (the restore reads backups of either path the same way):

- with the ``zstd`` binary installed, ``mariadb-backup | zstd`` as a pipeline, the way its users run
  it, one zstd child per part: a pump thread moves the child's stdout into the current zstd's stdin
  inside the kernel (``splice``), counting the bytes, applying ``max_rate``, and starting the next
  zstd at each part's limit. Compression runs in its own process, off the Python thread, which
  only hashes zstd's output (sha256 of the stored bytes) and hands it to the store;
- without it, the Python codec compresses each part on the thread that reads the pipe.

The store does the rest, encryption included.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backupkit.errors import BackupkitError
from backupkit.mysql.process import kill_group
from backupkit.repo import layout
from backupkit.repo.codec import StoredObject, put_object
from backupkit.storage.base import ObjectStore
from backupkit.strategies.physical.tool import exit_text
from backupkit.util.ratelimit import Limiter

MIB = 1024 * 1024
READ_BLOCK = MIB
F_SETPIPE_SZ = 1031  # Linux fcntl
Progress = Callable[..., None]


class StreamFailed(BackupkitError):
    """The zstd child failed, or the stream could not be moved to it."""


def zstd_binary() -> str | None:
    """The zstd program, or None (then the Python codec compresses)."""
    return shutil.which("zstd")


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, READ_BLOCK)


def _read_block(fd: int) -> bytes:
    """Up to READ_BLOCK bytes: what the pipe holds, waiting only when it is empty."""
    parts = []
    size = 0
    while size < READ_BLOCK:
        chunk = os.read(fd, READ_BLOCK - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
        if size >= READ_BLOCK // 4:
            break
    return b"".join(parts)


# -- the Python codec ----------------------------------------------------------------------------
class Pipe:
    """Reads the child's stdout straight from a 1 MiB pipe, on the thread that compresses."""

    def __init__(self, stream, limiter: Limiter | None = None) -> None:
        self.fd = stream.fileno()
        self.bytes = 0
        self.limiter = limiter
        _grow_pipe(self.fd)

    def get(self) -> bytes | None:
        block = _read_block(self.fd)
        self.bytes += len(block)
        if block and self.limiter is not None:  # a full pipe makes mariadb-backup wait
            self.limiter.take(len(block))
        return block or None


def store_parts_codec(store: ObjectStore, backup_id: str, stdout, *, part_size_mb: int, level: int,
                      threads: int, limiter: Limiter | None, started_keys: list[str],
                      report: Progress) -> list[StoredObject]:
    """Cut the stream into parts of about part_size_mb raw bytes, each its own zstd frame."""
    pipe = Pipe(stdout, limiter)
    limit = max(1, part_size_mb) * MIB
    objects: list[StoredObject] = []
    pending = pipe.get()
    while pending is not None:
        key = layout.physical_part(backup_id, len(objects))
        started_keys.append(key)

        def part() -> Any:
            nonlocal pending
            raw = 0
            while pending is not None:
                block = pending
                yield block
                raw += len(block)
                report("bytes", done=pipe.bytes)
                pending = pipe.get()
                if raw >= limit:
                    return

        objects.append(put_object(store, key, part(), level, threads))
    return objects


# -- zstd children ---------------------------------------------------------------------------------
class _Pump(threading.Thread):
    """Moves mariadb-backup's stdout into one zstd child per part (splice: the bytes never pass
    through Python), counting them and applying the rate limit. Each new child is handed to the
    storing thread through ``parts``; None marks the end of the stream."""

    def __init__(self, src: int, command: list[str], limit: int, limiter: Limiter | None,
                 log: Path) -> None:
        super().__init__(name="mbstream-pump", daemon=True)
        self.src, self.command, self.limit, self.limiter, self.log = src, command, limit, limiter, log
        self.bytes = 0
        self.raw: list[int] = []  # raw bytes of each part, final once its zstd's stdin is closed
        self.parts: queue.Queue[subprocess.Popen | None] = queue.Queue()
        self.procs: list[subprocess.Popen] = []
        self.error: BaseException | None = None
        self.stopping = False
        # held while a child is started and while stop() takes the list of children: a child
        # started after stop() read the list would be left running, or unreaped as a zombie
        self.lock = threading.Lock()
        _grow_pipe(src)

    def _spawn(self) -> tuple[subprocess.Popen, int]:
        with self.lock:
            if self.stopping:
                raise StreamFailed("the stream was stopped", "no backup was written")
            with open(self.log, "ab") as err:
                proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=err, start_new_session=True)
            self.procs.append(proc)
        assert proc.stdin is not None
        dst = os.dup(proc.stdin.fileno())
        proc.stdin.close()
        _grow_pipe(dst)
        return proc, dst

    def _move(self, dst: int, n: int) -> int:
        try:
            return os.splice(self.src, dst, n)
        except (AttributeError, OSError) as exc:  # no splice here: copy
            if isinstance(exc, BrokenPipeError):
                raise
            return self._write(dst, os.read(self.src, n))

    @staticmethod
    def _write(dst: int, block: bytes) -> int:
        view = memoryview(block)
        while view:
            view = view[os.write(dst, view):]
        return len(block)

    def _count(self, n: int) -> None:
        self.bytes += n
        self.raw[-1] += n
        if self.limiter is not None:
            self.limiter.take(n)

    def run(self) -> None:
        try:
            while not self.stopping:
                first = os.read(self.src, READ_BLOCK)  # b"": the end of the stream
                if not first:
                    break
                proc, dst = self._spawn()
                self.raw.append(0)
                self.parts.put(proc)
                try:
                    self._count(self._write(dst, first))
                    while self.raw[-1] < self.limit and not self.stopping:
                        n = self._move(dst, min(READ_BLOCK, self.limit - self.raw[-1]))
                        if not n:
                            break
                        self._count(n)
                finally:
                    os.close(dst)  # zstd ends its frame
        except BaseException as exc:  # reported by the storing thread
            self.error = exc
        finally:
            self.parts.put(None)

    def stop(self) -> None:
        with self.lock:  # no child starts after this
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            kill_group(proc)
        for proc in procs:  # reap them: a killed child left unwaited stays a zombie
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _zstd_blocks(fd: int) -> Iterator[bytes]:
    while block := _read_block(fd):
        yield block


def store_parts_native(store: ObjectStore, backup_id: str, stdout, *, zstd: str, part_size_mb: int,
                       level: int, threads: int, limiter: Limiter | None, started_keys: list[str],
                       report: Progress, workdir: Path) -> list[StoredObject]:
    """``mariadb-backup | zstd``, one zstd child (one frame) per part of part_size_mb stream bytes,
    its output hashed and stored as it comes."""
    log = workdir / "zstd.log"
    command = [zstd, f"-{level}", f"-T{max(1, threads)}", "-q", "-c"]
    pump = _Pump(stdout.fileno(), command, max(1, part_size_mb) * MIB, limiter, log)
    objects: list[StoredObject] = []
    pump.start()
    try:
        while (proc := pump.parts.get()) is not None:
            key = layout.physical_part(backup_id, len(objects))
            started_keys.append(key)
            assert proc.stdout is not None
            out = proc.stdout.fileno()
            _grow_pipe(out)
            stored = _Hashed(_zstd_blocks(out), lambda: report("bytes", done=pump.bytes))
            store.put(key, stored)
            proc.stdout.close()
            rc = proc.wait()
            if rc != 0:
                why = log.read_text(errors="replace").strip().splitlines()
                raise StreamFailed(f"zstd {exit_text(rc)}: {why[-1] if why else '(no output)'}",
                                   "no backup was written; the partial objects were removed")
            objects.append(StoredObject(key=key, size=stored.size, sha256=stored.sha.hexdigest(),
                                        raw_size=pump.raw[len(objects)]))
        pump.join()
    except BaseException:
        pump.stop()
        raise
    if pump.error is not None:
        raise StreamFailed(f"moving mariadb-backup's stream to zstd failed: {pump.error}",
                           "no backup was written; the partial objects were removed")
    return objects


class _Hashed:
    """Iterates blocks while counting and hashing them (what the store receives)."""

    def __init__(self, blocks: Iterator[bytes], tick: Callable[[], None]) -> None:
        self.blocks, self.tick = blocks, tick
        self.size = 0
        self.sha = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for block in self.blocks:
            self.sha.update(block)
            self.size += len(block)
            yield block
            self.tick()
