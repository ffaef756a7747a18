"""Verified reads that use another copy of an object when one copy is missing, unreachable or corrupt.

A store with several copies (a mirror, see storage/mirror/) lists them with `alternatives(key)`.
This module knows nothing of the object format: repo/codec.py hands it the functions that read one copy.
Corruption of an unencrypted object shows only at the end of its stream (the SHA-256 in the manifest),
so a consumer must never act on bytes before the end. The rules:

- manifests and objects up to BUFFER_LIMIT stored bytes are read whole, verified, and only then decoded:
  a bad copy is replaced by the next one transparently;
- a larger object streams; if a copy fails before any byte was delivered, the next copy is used; if it
  fails after, IntegrityError is raised (naming the object) and the bad copy is remembered, so reading
  again uses another target. `codec.consume_object(store, obj, consume)` does that retry for a consumer that
  can start over (a loader that commits only after the read verified);
- an encrypted repository authenticates every 1 MiB chunk before releasing it, so the mirror moves to
  the next copy in the middle of the stream and the consumer never sees a bad byte.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

from backupkit.errors import BackupkitError, IntegrityError, ObjectNotFound, StorageError
from backupkit.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")
BUFFER_LIMIT = 16 << 20


def has_copies(store: ObjectStore, key: str) -> bool:
    """True when key has more than one copy to read from."""
    return store.capabilities().several_copies and len(store.alternatives(key)) > 1


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ObjectNotFound):
        return "missing"
    if isinstance(exc, IntegrityError):
        return f"corrupt ({exc.message})"
    if isinstance(exc, BackupkitError):
        return f"unreachable ({exc.message})"
    return str(exc)


def _note(store: ObjectStore, key: str, bad: ObjectStore, good: ObjectStore | None,
          exc: BaseException) -> None:
    store.note_failover(key, bad.target_name, good.target_name if good is not None else None,
                        _reason(exc), isinstance(exc, IntegrityError))


def _raise_best(key: str, errors: list[BaseException]) -> None:
    """All copies failed: integrity beats storage beats not-found, so the worst news is told."""
    for kind in (IntegrityError, StorageError):
        for e in errors:
            if isinstance(e, kind) and not isinstance(e, ObjectNotFound):
                raise e
    raise errors[0] if errors else ObjectNotFound(key)


def _candidates(store: ObjectStore, key: str) -> list[ObjectStore]:
    alts = store.alternatives(key)
    if store.capabilities().authenticated_reads:
        # Through the whole store first: it switches copies chunk by chunk on its own.
        return [store, *alts[1:]]
    return alts


class _MemoryStore(ObjectStore):
    """One object held in memory, so the codec can decode an already verified copy."""

    def __init__(self, key: str, data: bytes) -> None:
        self.url = "memory:"
        self._key, self._data = key, data

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self._data)

    def put(self, key, data):  # pragma: no cover - read-only
        raise NotImplementedError

    def stat(self, key: str) -> ObjectInfo | None:
        return ObjectInfo(key, len(self._data))

    def list(self, prefix=""):  # pragma: no cover - read-only
        return iter(())

    def delete(self, keys):  # pragma: no cover - read-only
        raise NotImplementedError

    def put_if_absent(self, key, data):  # pragma: no cover - read-only
        raise NotImplementedError

    def replace_if_match(self, key, data, etag):  # pragma: no cover - read-only
        raise NotImplementedError


def read_checked(store: ObjectStore, key: str, check: Callable[[bytes], T]) -> T:
    """check(content) of a small object from the first copy that passes it (manifests, keyring)."""
    if not has_copies(store, key):
        return check(store.get_bytes(key))
    errors: list[BaseException] = []
    failed: list[ObjectStore] = []
    for alt in _candidates(store, key):
        try:
            result = check(alt.get_bytes(key))
        except (IntegrityError, StorageError) as exc:
            errors.append(exc)
            failed.append(alt)
            continue
        for bad, exc in zip(failed, errors, strict=True):
            _note(store, key, bad, alt, exc)
        return result
    _raise_best(key, errors)
    raise AssertionError("unreachable")


def iter_object_failover(store: ObjectStore, obj, read_size: int,
                         iter_one: Callable[[ObjectStore, object, int], Iterator[bytes]],
                         read_verified: Callable[[ObjectStore], bytes]) -> Iterator[bytes]:
    """codec.iter_object over a store with several copies (see the module docstring for the rules).

    iter_one(store, obj, read_size) decodes one copy; read_verified(store) returns one copy's stored
    bytes, read whole and verified (so a small object is never decoded from a bad copy)."""
    errors: list[BaseException] = []
    failed: list[ObjectStore] = []
    buffered = obj.size <= BUFFER_LIMIT and not store.capabilities().authenticated_reads

    def settle(good: ObjectStore) -> None:
        for bad, exc in zip(failed, errors, strict=True):
            _note(store, obj.key, bad, good, exc)

    for alt in _candidates(store, obj.key):
        if buffered:
            try:
                data = read_verified(alt)
            except (IntegrityError, StorageError) as exc:
                errors.append(exc)
                failed.append(alt)
                continue
            settle(alt)
            yield from iter_one(_MemoryStore(obj.key, data), obj, read_size)
            return
        delivered = 0
        try:
            for block in iter_one(alt, obj, read_size):
                delivered += len(block)
                yield block
        except (IntegrityError, StorageError) as exc:
            if delivered:
                _note(store, obj.key, alt, None, exc)
                if isinstance(exc, IntegrityError):
                    raise IntegrityError(
                        f"{exc.message}; {delivered} bytes of it were already delivered, so it cannot be "
                        "completed from another target", "read it again: the next read uses another copy"
                    ) from exc
                raise
            errors.append(exc)
            failed.append(alt)
            continue
        settle(alt)
        return
    _raise_best(obj.key, errors)


def retry_on_other_copy(store: ObjectStore, key: str, fn: Callable[[], T]) -> T:
    """fn() again (once per other copy of key) when it fails on a bad copy of key.

    For a step that reads key with iter_object and undoes its own effects when it raises (a chunk
    loaded in a transaction that is rolled back): the failed copy is remembered by the mirror, so the
    next attempt reads another one. Without several copies this is just fn().
    """
    tries = len(store.alternatives(key)) if has_copies(store, key) else 1
    for attempt in range(tries):
        try:
            return fn()
        except (IntegrityError, StorageError) as exc:
            if attempt + 1 >= tries or key not in exc.message:
                raise
            log.warning("object %s: %s; starting it over from another copy", key, exc.message)
    raise AssertionError("unreachable")

