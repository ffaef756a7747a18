"""Stream helpers below every layer: chunks in, chunks out, and a file object over chunks."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import BinaryIO

Chunks = Iterable[bytes]


def iter_chunks(source: BinaryIO | Chunks | bytes, size: int = 1 << 20) -> Iterator[bytes]:
    """Yield the bytes of a file object, an iterable of chunks, or a bytes value."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source):
            yield bytes(source)
        return
    read = getattr(source, "read", None)
    if read is not None:
        while True:
            block = read(size)
            if not block:
                return
            yield block
    else:
        for block in source:  # type: ignore[union-attr]
            if block:
                yield bytes(block)


def read_exact(fh: BinaryIO, n: int) -> bytes:
    """n bytes from fh, fewer only at its end (a raw reader may return less per call)."""
    parts: list[bytes] = []
    have = 0
    while have < n:
        b = fh.read(n - have)
        if not b:
            break
        parts.append(b)
        have += len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ChunkReader(io.RawIOBase):
    """A readable file object over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes], on_close=None) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")  # a view: taking n bytes off the front copies nothing
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not len(self._buf):
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        if not self.closed and self._on_close is not None:
            self._on_close()
        super().close()
