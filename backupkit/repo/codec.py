"""Streaming zstd + sha256: every object is hashed as stored and verified on every read."""

from __future__ import annotations

import hashlib
import io
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import BinaryIO, TypeVar

import zstandard

from backupkit.errors import IntegrityError, StorageError
from backupkit.repo.failover import has_copies, iter_object_failover
from backupkit.storage.base import ObjectStore
from backupkit.util.streams import iter_chunks

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_LEVEL = 3
READ_SIZE = 1 << 20


@dataclass(slots=True)  # one per object of every manifest and segment: no per-object __dict__
class StoredObject:
    """One object of a backup as the manifest records it."""

    key: str
    size: int  # stored bytes
    sha256: str  # of the stored bytes
    raw_size: int  # bytes before compression
    compression: str = "zstd"  # zstd | none

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StoredObject:
        comp = d.get("compression", "zstd")
        return cls(**{k: d[k] for k in ("key", "size", "sha256", "raw_size") if k in d},
                   compression=sys.intern(comp) if type(comp) is str else comp)


class _Counted:
    """Iterates chunks while counting (and, unless hashing=False, hashing) them."""

    def __init__(self, chunks: Iterable[bytes], hashing: bool = True) -> None:
        self._chunks = chunks
        self.size = 0
        self.sha = hashlib.sha256()
        self.hashing = hashing

    def __iter__(self) -> Iterator[bytes]:
        for block in self._chunks:
            self.size += len(block)
            if self.hashing:
                self.sha.update(block)
            yield block


def compress_stream(chunks: Iterable[bytes], level: int = DEFAULT_LEVEL,
                    threads: int = 0) -> Iterator[bytes]:
    """zstd-compress a stream of chunks, yielding compressed chunks of about 1 MiB."""
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=threads)
    comp = cctx.compressobj(size=-1)
    out = bytearray()
    for block in chunks:
        out += comp.compress(block)
        if len(out) >= READ_SIZE:
            yield bytes(out)
            out.clear()
    out += comp.flush()
    if out:
        yield bytes(out)


def put_object(store: ObjectStore, key: str, data: BinaryIO | Iterable[bytes] | bytes,
               level: int | None = DEFAULT_LEVEL, threads: int = 0) -> StoredObject:
    """Stream data to key (zstd unless level is None) and return its size and checksum."""
    raw = _Counted(iter_chunks(data), hashing=False)  # only the stored bytes' hash is recorded
    stream: Iterable[bytes] = raw if level is None else compress_stream(raw, level, threads)
    stored = _Counted(stream)
    store.put(key, stored)
    return StoredObject(key=key, size=stored.size, sha256=stored.sha.hexdigest(),
                        raw_size=raw.size, compression="none" if level is None else "zstd")


class VerifyingReader(io.RawIOBase):
    """Reads stored bytes and raises IntegrityError at EOF if the checksum or size differs."""

    def __init__(self, raw: BinaryIO, key: str, sha256: str, size: int | None = None) -> None:
        self._raw = raw
        self.key = key
        self.expected = sha256
        self.expected_size = size
        self.sha = hashlib.sha256()
        self.size = 0
        self.verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self._raw.readinto(b) if hasattr(self._raw, "readinto") else 0
        if n:
            self.sha.update(memoryview(b)[:n])
            self.size += n
            return n
        self._finish()
        return 0

    def _finish(self) -> None:
        if self.verified:
            return
        if self.expected_size is not None and self.size != self.expected_size:
            raise IntegrityError(f"object {self.key!r} has {self.size} bytes, manifest says "
                                 f"{self.expected_size}", "the stored copy is damaged")
        if self.sha.hexdigest() != self.expected:
            raise IntegrityError(f"checksum mismatch in object {self.key!r}",
                                 "the stored copy is damaged; restore from another target or backup")
        self.verified = True

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def iter_object(store: ObjectStore, obj: StoredObject, read_size: int = READ_SIZE) -> Iterator[bytes]:
    """Yield the decoded bytes of a stored object; the checksum is verified before the end.

    With several copies (a mirror), a missing, unreachable or corrupt copy is replaced by another one
    where that is safe: see repo/failover.py.
    """
    if has_copies(store, obj.key):
        return iter_object_failover(store, obj, read_size, _iter_one,
                                    lambda alt: _read_verified(alt, obj, read_size))
    return _iter_one(store, obj, read_size)


def _read_verified(store: ObjectStore, obj: StoredObject, read_size: int) -> bytes:
    """The stored bytes of one copy, read whole; IntegrityError unless size and checksum match."""
    with VerifyingReader(store.open(obj.key), obj.key, obj.sha256, obj.size) as r:
        parts = []
        while block := r.read(read_size):  # at EOF the checksum is checked
            parts.append(block)
        return b"".join(parts)


def _iter_one(store: ObjectStore, obj: StoredObject, read_size: int = READ_SIZE) -> Iterator[bytes]:
    """iter_object from one copy."""
    reader = VerifyingReader(store.open(obj.key), obj.key, obj.sha256, obj.size)
    try:
        if obj.compression == "none":
            while True:
                block = reader.read(read_size)
                if not block:
                    return
                yield block
        # stream_reader: at most read_size decoded bytes per read (memory stays bounded even where
        # 1 MiB of input expands to gigabytes, as zero-filled datafiles do) and about 7x faster
        # than decompressobj there. It does not notice a truncated frame, so the decoded size is
        # checked against the manifest's raw_size.
        produced = 0
        dec = zstandard.ZstdDecompressor().stream_reader(reader, read_size=read_size,
                                                         read_across_frames=True)
        while True:
            try:
                out = dec.read(read_size)
            except zstandard.ZstdError as exc:
                # Read the rest so the checksum error, if any, is the one reported.
                while reader.read(read_size):
                    pass
                raise IntegrityError(f"object {obj.key!r} does not decompress: {exc}",
                                     "the stored copy is damaged") from exc
            if not out:
                break
            produced += len(out)
            yield out
        while reader.read(read_size):  # to the end, where the stored bytes' checksum is checked
            pass
        if produced != obj.raw_size:
            raise IntegrityError(f"object {obj.key!r} is truncated: {produced} bytes decoded, the "
                                 f"manifest says {obj.raw_size}", "the stored copy is damaged")
    finally:
        reader.close()


def consume_object(store: ObjectStore, obj: StoredObject, consume: Callable[[Iterator[bytes]], T],
                   attempts: int = 0) -> T:
    """consume(decoded chunks) of an object, started over on the next copy when a copy fails.

    consume must undo its own effects when it raises (a transaction it rolls back), because a read
    that fails at the end may already have handed it bytes. Returns what consume returns.
    """
    tries = attempts or max(1, len(store.alternatives(obj.key)))
    last: BaseException | None = None
    for _ in range(tries):
        try:
            return consume(iter_object(store, obj))
        except (IntegrityError, StorageError) as exc:
            last = exc
            if not has_copies(store, obj.key):
                raise
            log.warning("object %s: %s; starting it over from another copy", obj.key, exc)
    assert last is not None
    raise last


def read_object(store: ObjectStore, obj: StoredObject) -> bytes:
    """The whole decoded content of a small object, verified."""
    return b"".join(iter_object(store, obj))


def verify_object(store: ObjectStore, obj: StoredObject) -> None:
    """Re-read an object's stored bytes and check size and checksum."""
    reader = VerifyingReader(store.open(obj.key), obj.key, obj.sha256, obj.size)
    with reader:
        while reader.read(READ_SIZE):
            pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
