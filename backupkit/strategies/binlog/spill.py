"""A byte buffer that spills to disk: the shipper's bounded memory for huge transactions."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

from backupkit.errors import BackupkitError, IntegrityError

MIB = 1 << 20


class SpillBuffer:
    """Appendable bytes, in memory up to a limit, then in a temporary file (bounded memory even
    for a transaction of many gigabytes, which is never split)."""

    def __init__(self, limit: int = 64 * MIB) -> None:
        self.limit = limit
        self.mem = bytearray()
        self.file: Any = None
        self.size = 0

    def __len__(self) -> int:
        return len(self.mem) if self.file is None else self.size

    @property
    def in_memory(self) -> bool:
        return self.file is None

    def append(self, data: bytes | memoryview) -> None:
        if self.file is None and len(self.mem) + len(data) <= self.limit:
            self.mem += data
            return
        try:
            if self.file is None:
                self.file = tempfile.TemporaryFile(prefix="backupkit-binlog-")  # noqa: SIM115
                self.file.write(self.mem)
                self.size = len(self.mem)
                self.mem = bytearray()
            self.file.seek(0, os.SEEK_END)
            self.file.write(data)
            self.size += len(data)
        except OSError as exc:  # a full or unwritable temporary folder: one line, not a traceback
            raise BackupkitError(f"cannot spill a large binlog transaction to a temporary file in "
                                 f"{tempfile.gettempdir()}: {exc.strerror or exc}",
                                 "free space there, or point TMPDIR at a larger folder") from None

    def truncate(self, n: int) -> None:
        """Keep only the first n bytes."""
        if self.file is not None:
            self.file.truncate(n)
            self.size = n
        else:
            del self.mem[n:]

    def split(self, n: int) -> SpillBuffer:
        """Keep the first n bytes here; return a new buffer holding the rest."""
        rest = SpillBuffer(self.limit)
        if self.file is None:
            rest.mem = self.mem[n:]
            del self.mem[n:]
            return rest
        self.file.seek(n)
        while True:
            block = self.file.read(4 * MIB)
            if not block:
                break
            rest.append(block)
        self.truncate(n)
        return rest

    def chunks(self, n: int, size: int = 4 * MIB) -> Iterator[bytes]:
        """The first n bytes, in chunks."""
        if self.file is None:
            mv = memoryview(self.mem)
            for off in range(0, n, size):
                yield bytes(mv[off:min(n, off + size)])
            return
        self.file.seek(0)
        left = n
        while left:
            block = self.file.read(min(size, left))
            if not block:
                raise IntegrityError("spilled binlog buffer is shorter than expected")
            left -= len(block)
            yield block

    def drop_front(self, n: int) -> None:
        """Forget the first n bytes, keeping the rest."""
        if self.file is None:
            del self.mem[:n]
            return
        rest = self.split(n)
        self.file.close()
        self.mem, self.file, self.size = rest.mem, rest.file, rest.size

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.mem = bytearray()
        self.size = 0
