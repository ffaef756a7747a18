"""The ObjectStore interface every storage target implements."""

from __future__ import annotations

import abc
import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from backupkit.util.streams import Chunks

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or stat knows about one stored object."""

    key: str
    size: int
    etag: str = ""
    mtime: float = 0.0


@dataclass(frozen=True)
class Capabilities:
    """What a store offers beyond the basic interface (declared, never probed)."""

    #: Every chunk is authenticated before it is returned (the encryption layer): a reader may
    #: switch copies in the middle of a stream and the consumer never sees a bad byte.
    authenticated_reads: bool = False
    #: Several stores hold a copy of each object (a mirror): see alternatives().
    several_copies: bool = False


class ObjectStore(abc.ABC):
    """A flat key space of immutable objects; a key is visible only once complete.

    Wrappers (mirror, encryption) declare what they add through capabilities(), unwrap(),
    alternatives(), target_name, note_failover() and encryption_info(); the defaults here describe
    a plain store with one copy of everything.
    """

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

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        """Every complete object whose key starts with prefix and sorts after ``after``, in key
        order. Stores that can start a listing there (S3's StartAfter) override this; the default
        filters a full listing (correct, not cheaper)."""
        for info in self.list(prefix):
            if info.key > after:
                yield info

    def first_after(self, prefix: str, after: str) -> ObjectInfo | None:
        """The first object list_after(prefix, after) would give, or None. Stores that can ask for
        one key (S3's MaxKeys) override this: a page of a thousand keys costs a moto server about
        0.3 s to make and botocore as much to parse."""
        it = self.list_after(prefix, after)
        try:
            return next(iter(it), None)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def folders(self, prefix: str) -> list[str]:
        """The names of the folders right under prefix (which ends with "/"): each name such that
        some key starts with prefix + name + "/", in key order. Stores that can ask for them in
        one request (S3's Delimiter) override this; the default asks for one key per folder,
        each after the folder before it."""
        out: list[str] = []
        after = ""
        while True:
            first = self.first_after(prefix, after)
            if first is None:
                return out
            name, sep, _ = first.key[len(prefix):].partition("/")
            if not sep:  # a key right under prefix: no folder
                after = first.key
                continue
            out.append(name)
            after = f"{prefix}{name}0"  # "0" follows "/": after every key of that folder

    def check(self) -> None:
        """Raise StorageError unless the target is reachable and usable (stores override this)."""
        self.stat("check")

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

    def capabilities(self) -> Capabilities:
        """What this store (with the stores under it) offers; a plain store offers nothing extra."""
        return Capabilities()

    def unwrap(self) -> ObjectStore | None:
        """The store this one wraps (the encryption layer over a mirror), or None for a target itself."""
        return None

    def alternatives(self, key: str) -> list[ObjectStore]:
        """Stores that each hold a copy of key, preferred first (a mirror has several; see repo/failover)."""
        return [self]

    @property
    def target_name(self) -> str:
        """The name of the storage target behind this store, for messages about copies."""
        return self.describe()

    def note_failover(self, key: str, bad: str, good: str | None, reason: str,
                      corrupt: bool = False) -> None:
        """Record that key could not be read from target bad (and came from good, if any)."""
        log.warning("object %s: %s on %s", key, reason, bad)

    def encryption_info(self) -> dict[str, Any] | None:
        """What a manifest records about the encryption of this store (ids, never a key), or None."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class FailoverReader(io.RawIOBase):
    """A reader over several copies of one object that can continue from another copy."""

    @abc.abstractmethod
    def switch_target(self, offset: int, header_len: int) -> bytes | None:
        """Continue from the next copy at stored offset; returns that copy's first header_len bytes
        (or a non-empty marker when header_len is 0), None when no copy is left."""
