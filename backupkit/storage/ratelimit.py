"""A store wrapper that writes at most at a rate (restic's idea: a rate limit is a layer)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from backupkit.storage.base import Capabilities, ObjectInfo, ObjectStore
from backupkit.util.ratelimit import Limiter, ThrottledReader, throttle
from backupkit.util.streams import Chunks, iter_chunks


class RateLimitedStore(ObjectStore):
    """Every byte written (put, and the small conditional writes) passes through the limiter;
    with reads=True (restore --max-rate) every byte read from open() does instead: reads are
    never limited unless asked."""

    def __init__(self, inner: ObjectStore, limiter: Limiter, reads: bool = False) -> None:
        self.inner = inner
        self.limiter = limiter
        self.reads = reads
        self.url = inner.url

    def put(self, key: str, data: BinaryIO | Chunks | bytes) -> ObjectInfo:
        if self.reads:
            return self.inner.put(key, data)
        return self.inner.put(key, throttle(iter_chunks(data), self.limiter))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if not self.reads:
            self.limiter.take(len(data))
        return self.inner.put_if_absent(key, data)

    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        if not self.reads:
            self.limiter.take(len(data))
        return self.inner.replace_if_match(key, data, etag)

    def open(self, key: str) -> BinaryIO:
        raw = self.inner.open(key)
        return ThrottledReader(raw, self.limiter) if self.reads else raw  # type: ignore[return-value]

    # -- everything else is the inner store's ------------------------------------------------

    def stat(self, key: str) -> ObjectInfo | None:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        return self.inner.list_after(prefix, after)

    def folders(self, prefix: str) -> list[str]:
        return self.inner.folders(prefix)

    def first_after(self, prefix: str, after: str) -> ObjectInfo | None:
        return self.inner.first_after(prefix, after)

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)

    def check(self) -> None:
        self.inner.check()

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def read_small(self, key: str) -> tuple[bytes, str]:
        return self.inner.read_small(key)

    def describe(self) -> str:
        return self.inner.describe()

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    def unwrap(self) -> ObjectStore | None:
        return self.inner

    def alternatives(self, key: str) -> list[ObjectStore]:
        alts = self.inner.alternatives(key)
        return [self] if alts == [self.inner] else alts

    @property
    def target_name(self) -> str:
        return self.inner.target_name

    def note_failover(self, key: str, bad: str, good: str | None, reason: str,
                      corrupt: bool = False) -> None:
        self.inner.note_failover(key, bad, good, reason, corrupt)

    def encryption_info(self) -> dict[str, Any] | None:
        return self.inner.encryption_info()

    def __getattr__(self, name: str) -> Any:  # the inner store's extras (decrypt_bytes, keys, ...)
        return getattr(self.inner, name)

    def close(self) -> None:
        self.inner.close()
