"""Readers of a mirror: one target's copy under the stall timeout, and a reader that moves to the next
copy at the same offset when one fails (every target holds the same bytes)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from backupkit.errors import ObjectNotFound, StorageError
from backupkit.storage.base import FailoverReader, ObjectInfo, ObjectStore
from backupkit.storage.mirror.health import MirrorHealth, Target
from backupkit.util.streams import Chunks, read_exact

log = logging.getLogger(__name__)


class TargetStore(ObjectStore):
    """One target of a mirror seen on its own (an alternative for reads); counts what it serves."""

    def __init__(self, mirror: MirrorHealth, target: Target) -> None:
        self.mirror = mirror
        self.target = target
        self.url = target.store.url

    @property
    def target_name(self) -> str:
        return self.target.name

    def put(self, key: str, data: BinaryIO | Chunks | bytes) -> ObjectInfo:
        return self.target.store.put(key, data)

    def open(self, key: str) -> BinaryIO:
        fh = self.mirror.call(self.target, self.target.store.open, key)
        self.target.served += 1
        return DeadlineReader(self.mirror, self.target, fh, key)  # type: ignore[return-value]

    def stat(self, key: str) -> ObjectInfo | None:
        return self.mirror.call(self.target, self.target.store.stat, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.target.store.list(prefix)

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        return self.target.store.list_after(prefix, after)

    def delete(self, keys: Iterable[str]) -> None:
        self.target.store.delete(keys)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.target.store.put_if_absent(key, data)

    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        return self.target.store.replace_if_match(key, data, etag)

    def read_small(self, key: str) -> tuple[bytes, str]:
        return self.mirror.call(self.target, self.target.store.read_small, key)

    def check(self) -> None:
        self.mirror.call(self.target, self.target.store.check)

    def describe(self) -> str:
        return self.target.describe()

    def note_failover(self, key: str, bad: str, good: str | None, reason: str,
                      corrupt: bool = False) -> None:
        self.mirror.note_failover(key, bad, good, reason, corrupt)


def skip(fh: BinaryIO, n: int) -> None:
    """Move a fresh reader n bytes forward (seek when it can, else read and drop)."""
    if n <= 0:
        return
    if isinstance(fh, io.IOBase) and fh.seekable():
        fh.seek(n, io.SEEK_CUR)
        return
    while n > 0:
        b = fh.read(min(n, 1 << 20))
        if not b:
            raise StorageError("object ended early while skipping")
        n -= len(b)


class _ReadAll(io.RawIOBase):
    """readall() in 1 MiB reads (RawIOBase's default reads 8 KiB at a time)."""

    def readall(self) -> bytes:
        parts = []
        while block := self.read(1 << 20):
            parts.append(block)
        return b"".join(parts)


class DeadlineReader(_ReadAll):
    """A target's reader whose every read must answer within the mirror's stall timeout."""

    def __init__(self, mirror: MirrorHealth, target: Target, fh: BinaryIO, key: str) -> None:
        self.mirror, self.target, self.fh, self.key = mirror, target, fh, key

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.mirror.call(self.target, self.fh.read, len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self.fh.close()
            except Exception:
                pass
        super().close()


class MirrorReader(_ReadAll, FailoverReader):
    """Reads one object from the first target that has it; moves to the next copy when one fails.

    A dropped or stalled connection continues from the next target at the same offset (every target
    holds the same bytes). switch_target() does the same on request of an upper layer that found a
    corrupt chunk (the encryption layer authenticates each chunk before returning it).
    """

    def __init__(self, mirror: MirrorHealth, key: str, order: list[Target], index: int, fh: BinaryIO) -> None:
        self.mirror = mirror
        self.key = key
        self.order = order
        self.index = index
        self.fh = fh
        self.pos = 0

    @property
    def target(self) -> Target:
        return self.order[self.index]

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while True:
            try:
                data = self.mirror.call(self.target, self.fh.read, len(b))
                break
            except ObjectNotFound:
                raise
            except StorageError as exc:
                if not self._next_copy(self.pos, 0, f"read failed: {exc.message}"):
                    raise
        n = len(data)
        b[:n] = data
        self.pos += n
        return n

    def switch_target(self, offset: int, header_len: int) -> bytes | None:
        """Continue from the next copy at stored offset; returns that copy's first header_len bytes."""
        return self._next_copy(offset, header_len, "corrupt copy (a chunk failed authentication)", True)

    def _next_copy(self, offset: int, header_len: int, reason: str, corrupt: bool = False) -> bytes | None:
        """Move to the next target holding the object, at offset; None when there is none left."""
        bad = self.target
        while self.index + 1 < len(self.order):
            self.index += 1
            t = self.order[self.index]
            try:
                fh = self.mirror.call(t, t.store.open, self.key)
                header = self.mirror.call(t, read_exact, fh, header_len) if header_len else b""
                self.mirror.call(t, skip, fh, offset - header_len)
            except StorageError as exc:
                log.debug("target %s cannot continue %s: %s", t.name, self.key, exc)
                continue
            try:
                self.fh.close()
            except Exception:
                pass
            self.fh = fh
            self.pos = offset
            t.served += 1
            self.mirror.note_failover(self.key, bad.name, t.name, reason, corrupt)
            return header if header_len else b"-"
        return None
