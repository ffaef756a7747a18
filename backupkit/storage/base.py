"""The ObjectStore interface every storage target implements."""

from __future__ import annotations

import abc
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

Chunks = Iterable[bytes]


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or stat knows about one stored object."""

    key: str
    size: int
    etag: str = ""
    mtime: float = 0.0


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


class ObjectStore(abc.ABC):
    """A flat key space of immutable objects; a key is visible only once complete."""

    #: The URL this store was opened from, with no credentials in it.
    url: str

    @abc.abstractmethod
    def put(self, key: str, data: BinaryIO | Chunks | bytes) -> ObjectInfo:
        """Store an object of any length, streamed; it becomes visible atomically at the end."""

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A streaming reader of a stored object; raises ObjectNotFound."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and tag of an object, or None when absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every complete object whose key starts with prefix, in key order."""

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove objects; absent keys are ignored."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create a small object only if the key does not exist; False if it does."""

    @abc.abstractmethod
    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """Overwrite a small object only if its tag is still etag; False otherwise."""

    def check(self) -> None:
        """Raise StorageError unless the target is reachable and usable."""
        self.stat("backupkit.json")

    def get_bytes(self, key: str) -> bytes:
        """The whole content of a small object."""
        with self.open(key) as fh:
            return fh.read()

    def read_small(self, key: str) -> tuple[bytes, str]:
        """Content and tag of a small object (for leases and other conditional updates)."""
        info = self.stat(key)
        data = self.get_bytes(key)
        return data, info.etag if info else ""

    def exists(self, key: str) -> bool:
        """True when the key is present."""
        return self.stat(key) is not None

    def describe(self) -> str:
        """A short human-readable name of the target."""
        return self.url

    def alternatives(self, key: str) -> list[ObjectStore]:
        """Stores that each hold a copy of key, preferred first (a mirror has several; see repo/failover)."""
        return [self]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class ChunkReader(io.RawIOBase):
    """A readable file object over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes], on_close=None) -> None:
        self._chunks = chunks
        self._buf = b""
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
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
